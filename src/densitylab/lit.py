"""LightningModule: next-token loss, the optimizer and LR schedule from ``conf/model``, scalar logging.

Everything is built from ``conf/model/*.yaml`` by Hydra (lightning-hydra-template style): ``net`` is a
partial :class:`~densitylab.model.GPT` that :meth:`LitGPT.configure_model` completes with the datamodule's
actual ``vocab_size``; ``optimizer`` and ``scheduler`` are partials called in
:meth:`LitGPT.configure_optimizers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from densitylab.data.packing import IGNORE_INDEX
from densitylab.errors import ConfigError
from densitylab.model import GPT, GPTConfig

log = logging.getLogger(__name__)

# settings that belong to one optimizer family / one schedule: after `model.optimizer._target_=...` (or
# `model.scheduler._target_=...`) swaps the class, the ones the new class does not take are dropped with a warning;
# any other setting the class does not take is a ConfigError
FAMILY_KEYS = frozenset({"betas", "eps", "amsgrad", "momentum", "dampening", "nesterov", "alpha", "centered"})
SCHEDULE_KEYS = frozenset({"warmup_steps", "min_lr_ratio", "decay_steps", "factor", "total_iters"})


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup from 1/warmup to 1 over
    ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps`` (and flat after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    min_lr_ratio: float,
    decay_steps: int | None,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay (nanoGPT's schedule), as a ``LambdaLR`` stepped every optimizer step.

    Args:
        optimizer: the optimizer whose groups' ``lr`` is the peak learning rate.
        warmup_steps: linear warmup length in optimizer steps (>= 0).
        min_lr_ratio: final LR as a fraction of the peak at the end of the decay (in [0, 1]).
        decay_steps: optimizer step at which the cosine decay ends (nanoGPT's ``lr_decay_iters``); None =
            ``total_steps``.
        total_steps: the trainer's total optimizer steps (``Trainer.estimated_stepping_batches``); LitGPT passes
            it to any scheduler whose signature has a ``total_steps`` parameter.
    Raises:
        ConfigError: for a negative ``warmup_steps`` or ``decay_steps`` or a ``min_lr_ratio`` outside [0, 1].
    """
    check_schedule(warmup_steps, min_lr_ratio, decay_steps)
    total = int(decay_steps or total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, warmup_steps, total, min_lr_ratio)
    )


def check_schedule(warmup_steps: Any, min_lr_ratio: Any, decay_steps: Any) -> None:
    """Validate :func:`warmup_cosine`'s settings (named by their ``model.scheduler.*`` keys).

    Raises:
        ConfigError: one line naming the bad value and what was expected.
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"model.scheduler.warmup_steps={warmup_steps!r}: expected an integer >= 0")
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, (int, float)) or not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"model.scheduler.min_lr_ratio={min_lr_ratio!r}: expected a number in [0, 1]")
    if decay_steps is not None and (
        isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1
    ):
        raise ConfigError(f"model.scheduler.decay_steps={decay_steps!r}: expected a positive integer or null")


def check_optimizer_settings(settings: Mapping, node: str = "model.optimizer") -> None:
    """Range-check an optimizer's settings (a partial's keywords or a config node): ``lr`` > 0, every value of a
    ``betas`` setting (any key containing ``betas``) in [0, 1), ``eps``, ``weight_decay``, ``momentum`` and
    ``dampening`` >= 0. Settings that are absent or not numbers of these names are left to the optimizer class.

    Raises:
        ConfigError: one line naming ``{node}.{key}``, the value and the expected range.
    """

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    for key, value in settings.items():
        key = str(key)
        if key.startswith("_"):
            continue
        if "betas" in key:
            if OmegaConf.is_list(value):  # built without _convert_="all" (a notebook, a test)
                value = OmegaConf.to_container(value)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if not values or not all(number(v) and 0 <= v < 1 for v in values):
                raise ConfigError(f"{node}.{key}={_plain(value)!r}: expected values in [0, 1), e.g. [0.9, 0.95]")
        elif key == "lr" and value is not None and (not number(value) or not value > 0):
            raise ConfigError(f"{node}.lr={value!r}: expected a positive learning rate")
        elif key in ("eps", "weight_decay", "momentum", "dampening") and (not number(value) or not value >= 0):
            raise ConfigError(f"{node}.{key}={value!r}: expected a number >= 0")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def partial_spec(fn: Callable | Mapping | None) -> dict | None:
    """A plain-data description of a partial (``{"_target_": "torch.optim.adamw.AdamW", "lr": ...}``) for the
    checkpoint's hyperparameters, so a checkpoint loads with ``torch.load(weights_only=True)``; a mapping is
    returned as a plain dict."""
    if fn is None:
        return None
    if isinstance(fn, Mapping):
        return {str(k): v for k, v in fn.items()}
    func = fn.func if isinstance(fn, functools.partial) else fn
    keywords = dict(fn.keywords) if isinstance(fn, functools.partial) else {}
    return {"_target_": f"{func.__module__}.{func.__qualname__}", **keywords}


def _as_partial(spec: Callable | Mapping | None, name: str) -> Callable | None:
    """A callable from a partial, or from a ``{"_target_": ...}`` mapping (a checkpoint's hyperparameters)."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, Mapping) and "_target_" in spec:
        from hydra.utils import get_object

        kwargs = {k: v for k, v in spec.items() if k not in ("_target_", "_partial_")}
        try:
            return functools.partial(get_object(spec["_target_"]), **kwargs)
        except Exception as e:
            raise ConfigError(f"model.{name}._target_={spec['_target_']!r}: {e}") from None
    raise ConfigError(f"model.{name}={spec!r}: expected a partial (a config node with _target_ and _partial_: true)")


def check_ignore_topk(value: Any) -> float | None:
    """Validate ``model.ignore_topk`` (:class:`LitGPT`'s ignore-k percentage).

    Returns:
        the percentage as a float in (0, 100), or None when off (None or 0).
    Raises:
        ConfigError: one line for a bool, a non-number, a negative value or one >= 100 (or NaN).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 100:
        raise ConfigError(f"model.ignore_topk={value!r}: expected a percentage in (0, 100), 0 or null")
    return float(value) if value > 0 else None


def ignore_count(numel: int, pct: float) -> int:
    """How many entries of a tensor of ``numel`` entries ignore-k reverts: ``ceil(pct / 100 * numel)``, in
    [1, numel] when ``numel`` > 0. ``pct`` is read as the decimal it prints as (10 of 30 entries -> 3, not 4 from
    ``0.1 * 30 = 3.0000000000000004``)."""
    if numel <= 0:
        return 0
    return min(numel, max(1, math.ceil(Fraction(str(pct)) * numel / 100)))


def snapshot_params(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(tensor, copy)`` for each distinct trainable parameter the optimizer steps: the parameter's local data
    (a DTensor's local shard; under FSDP, this rank's shard) and a clone of it. Empty shards are left out."""
    out, seen = [], set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            t = p.detach()
            t = t.to_local() if hasattr(t, "to_local") else t
            if t.numel() > 0:
                out.append((t, t.clone()))
    return out


@torch.no_grad()
def revert_topk_updates(snapshot: Sequence[tuple[torch.Tensor, torch.Tensor]], pct: float) -> int:
    """Sun et al.'s ignore-k: in each tensor of :func:`snapshot_params`, give the :func:`ignore_count` entries
    with the largest ``|after - before|`` their value before the step back (in place; ties at the cut are broken
    by ``torch.topk``). Nothing else is touched: the other entries keep their update, optimizer state its values.

    Returns:
        the number of entries reverted.
    """
    total = 0
    for t, before in snapshot:
        k = ignore_count(t.numel(), pct)
        idx = torch.topk((t - before).abs().flatten(), k, sorted=False).indices
        if t.is_contiguous():
            t.view(-1)[idx] = before.reshape(-1)[idx]
        else:
            mask = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
            mask[idx] = True
            mask = mask.view(t.shape)
            t[mask] = before[mask]
        total += k
    return total


class LitGPT(L.LightningModule):
    """Train :class:`~densitylab.model.GPT` on next-token prediction.

    Args:
        net: a partial :class:`~densitylab.model.GPT` (``conf/model``: ``_target_: densitylab.model.GPT``,
            ``_partial_: true``, GPTConfig fields) or a mapping of :class:`~densitylab.model.GPTConfig` fields (a
            checkpoint's ``hyper_parameters["net"]``). ``vocab_size`` None means "the datamodule's": the GPT is
            built in :meth:`configure_model`, once the data is prepared.
        optimizer: a partial optimizer class (``_partial_: true``, e.g. ``torch.optim.AdamW``), called with two
            parameter groups: >= 2-D parameters (matrices, embeddings) with the partial's ``weight_decay``, and the
            rest (biases, LayerNorm gains) with ``weight_decay`` 0. ``fused=True`` is added on CUDA when the class
            takes it. Settings in :data:`FAMILY_KEYS` that the class does not take are dropped with a warning
            (:func:`fit_settings`).
        scheduler: a partial LR scheduler, called with the optimizer (and ``total_steps``, the trainer's total
            optimizer steps, when its signature has that parameter), stepped every optimizer step; None = constant.
            Settings in :data:`SCHEDULE_KEYS` that the class does not take are dropped with a warning.
        compile: wrap the training forward in ``torch.compile`` (the uncompiled ``self.model`` stays available for
            probes).
        init_seed: seed of the CPU generator the initial weights are drawn from (in float32, on the CPU, inside
            ``torch.random.fork_rng``), so they depend on this seed alone: not on what data preparation consumed,
            nor on the device or precision; None draws from the global generator as it is.
        ignore_topk: Sun et al.'s "ignore-k" (Sun et al. 2025, "How new data permeates LLM knowledge and how to
            dilute it", arXiv:2504.09522), a percentage k in (0, 100); None or 0 = off (the default). After each
            optimizer step, in each parameter tensor separately, the ``ceil(k / 100 * numel)`` entries (at least
            one) whose realised update ``|after - before|`` is largest get their value before the step back
            (:func:`revert_topk_updates`); the other entries keep their update, and the optimizer state (Adam's
            moments, momentum buffers, step counts) is left as the step computed it. Only steps the optimizer
            takes count (not accumulating micro-batches). Cost: one copy of the trainable parameters per step, a
            ``topk`` per tensor; none at all when off. Under a sharding strategy (FSDP) the top-k is taken per
            local shard, not over the whole tensor.

    The resolved GPTConfig is saved as ``hparams["net"]`` (plain data), so a checkpoint alone rebuilds the model:
    ``LitGPT.load_from_checkpoint(path)``, or ``GPT(GPTConfig(**ckpt["hyper_parameters"]["net"]))`` plus the
    ``state_dict`` keys without their ``model.`` prefix. Attributes ``n_params``, ``n_params_non_embedding`` and
    ``flops_per_token`` hold the model's sizes, counted when it is built (before any strategy shards parameters).

    Logged scalars: ``train/loss`` and ``val/loss`` (mean cross-entropy, nats/token), ``train/tokens_seen`` (input
    tokens trained on, all processes), ``lr``. Every value is keyed by the optimizer steps completed when it is
    logged (``docs/design.md``, "The step convention"): ``train/loss`` at step N is the loss of the batch the N-th
    optimizer step trained on, ``train/tokens_seen`` at N the tokens of steps 1..N, ``val/loss`` at N the model
    after N steps, the same key as every probe's measurement of that model.

    Raises:
        ConfigError: for a non-positive learning rate, betas outside [0, 1), a negative eps / weight_decay /
            momentum (:func:`check_optimizer_settings`), a bad schedule setting, a ``net.vocab_size`` below the
            tokenizer's, an optimizer setting its class does not take, or an ``ignore_topk`` outside (0, 100) other
            than 0 or None (:func:`check_ignore_topk`).
    """

    def __init__(
        self,
        net: Callable[..., GPT] | Mapping,
        optimizer: Callable[..., torch.optim.Optimizer] | Mapping,
        scheduler: Callable[..., Any] | Mapping | None,
        compile: bool,
        init_seed: int | None,
        ignore_topk: float | None = None,
    ) -> None:
        super().__init__()
        self.net = _as_partial(dict(net), "net") if isinstance(net, Mapping) and "_target_" in net else net
        self.optimizer_factory = fit_settings(_as_partial(optimizer, "optimizer"), "optimizer", FAMILY_KEYS)
        self.scheduler_factory = fit_settings(_as_partial(scheduler, "scheduler"), "scheduler", SCHEDULE_KEYS)
        if init_seed is not None and (isinstance(init_seed, bool) or not isinstance(init_seed, int)):
            raise ConfigError(f"model.init_seed={init_seed!r}: expected an integer or null")
        self.compile, self.init_seed = bool(compile), init_seed
        self.ignore_topk = check_ignore_topk(ignore_topk)
        opt_kw = self.optimizer_factory.keywords if isinstance(self.optimizer_factory, functools.partial) else {}
        check_optimizer_settings(opt_kw, "model.optimizer")
        sched = self.scheduler_factory
        if isinstance(sched, functools.partial) and sched.func is warmup_cosine:
            kw = sched.keywords
            check_schedule(kw.get("warmup_steps"), kw.get("min_lr_ratio"), kw.get("decay_steps"))
        self.save_hyperparameters(
            {
                "net": self._net_fields(),
                "optimizer": partial_spec(self.optimizer_factory),
                "scheduler": partial_spec(self.scheduler_factory),
                "compile": self.compile,
                "init_seed": init_seed,
                "ignore_topk": self.ignore_topk,
            },
            logger=False,  # hparams.yaml / checkpoints only: the loggers get the whole resolved config (run.py)
        )
        self.model: GPT | None = None
        self.n_params = self.n_params_non_embedding = self.flops_per_token = None
        self._fwd = None
        self.tokens_seen = 0  # input tokens trained on, summed over processes (python int: no sync)
        self.last_val_step = -1  # optimizer steps completed at the last validation during fit (-1: none)

    # the compiled wrapper must not be registered as a submodule (its state_dict keys would differ)
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_fwd":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _net_fields(self) -> dict:
        """The GPTConfig fields of ``net`` (vocab_size None until :meth:`configure_model`)."""
        if isinstance(self.net, Mapping):
            return dict(self.net)
        if isinstance(self.net, functools.partial):
            return dict(self.net.keywords)
        return {}

    def configure_model(self) -> None:
        """Build the GPT (Lightning calls this after the datamodule's ``setup``, inside the strategy's sharding
        context; idempotent). ``vocab_size`` None becomes the datamodule's ``vocab_size``.

        Raises:
            ConfigError: if ``net.vocab_size`` is below the tokenizer's, or no vocabulary size is known.
        """
        if self.model is not None:
            return
        fields = self._net_fields()
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        data_vocab = int(dm.vocab_size) if dm is not None and getattr(dm, "meta", None) else None
        vocab = fields.get("vocab_size")
        if vocab in (None, 0):
            if data_vocab is None:
                raise ConfigError("model.net.vocab_size=null: expected an integer, or a datamodule that knows it")
            vocab = data_vocab
        elif data_vocab is not None and vocab < data_vocab:
            raise ConfigError(f"model.net.vocab_size={vocab}: expected >= the tokenizer's {data_vocab} (or null)")
        try:
            # on the CPU generator in float32, whatever device / dtype context the strategy opened (Lightning's
            # tensor_init_context), so a seed gives the same initial weights on every machine; the strategy moves
            # and casts the model afterwards. fork_rng: the caller's generator state is left as it was.
            with torch.random.fork_rng(devices=[]), torch.device("cpu"), _default_dtype(torch.float32):
                if self.init_seed is not None:
                    torch.manual_seed(int(self.init_seed))
                if isinstance(self.net, Mapping):
                    model = GPT(GPTConfig(**{**fields, "vocab_size": vocab}))
                else:
                    model = self.net(vocab_size=vocab)
        except (TypeError, ValueError) as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith("model.") else f"model.net: {e}") from None
        self.model = model
        self.hparams["net"] = dataclasses.asdict(model.config)
        self._hparams_initial["net"] = dataclasses.asdict(model.config)  # what Lightning logs (hparams.yaml, W&B)
        # counted here, before a strategy can shard the parameters (FSDP would count local shards)
        self.n_params = model.num_params(non_embedding=False)
        self.n_params_non_embedding = model.num_params()
        self.flops_per_token = model.flops_per_token()
        self._fwd = torch.compile(model) if self.compile else model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits, through the compiled model when enabled."""
        return self._fwd(idx)

    @staticmethod
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy in nats over non-ignored targets (0 with zero gradient
        when every target is ignored, e.g. a batch of padding windows; never NaN).

        Args:
            logits: (B, T, V); labels: (B, T) with ``-100`` marking ignored positions.
        """
        total = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch["input_ids"]), batch["labels"])
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False, reduce_fx="max")
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("epoch", float(self.current_epoch), on_step=True, on_epoch=False)  # Lightning's column, kept
        self._log_step(self.global_step + self._steps_done_by_this_batch(), on_step=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch["labels"]
        loss = self.loss_fn(self.model(batch["input_ids"]), labels)
        n = int((labels != IGNORE_INDEX).sum())
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        self._log_step(self.global_step, on_step=False)

    def on_validation_epoch_end(self) -> None:
        """Record the step of a validation during fit (``last_val_step``; not the sanity check)."""
        if not self.trainer.sanity_checking:
            self.last_val_step = int(self.global_step)

    def _steps_done_by_this_batch(self) -> int:
        """1 when the optimizer steps after this training batch, 0 while gradients accumulate."""
        loop = self.trainer.fit_loop.epoch_loop
        return 0 if loop._should_accumulate() else 1

    def _log_step(self, step: int, on_step: bool) -> None:
        """Key what this hook logs by ``step`` (optimizer steps completed: the step convention of ``docs/design.md``).

        Lightning keys a ``self.log`` value by its count of batches that stepped *before* this one, one less than
        the optimizer steps the logged values belong to; a logged ``step`` metric is the documented way to set the
        key (``LoggerConnector.log_metrics`` pops it). ``ModelCheckpoint`` reads the same value, which equals
        ``trainer.global_step`` whenever it runs.
        """
        self.log("step", float(step), on_step=on_step, on_epoch=not on_step, reduce_fx="max", sync_dist=False)

    def configure_optimizers(self):
        """Call the ``optimizer`` partial on two parameter groups (weight decay on >= 2-D parameters only) and the
        ``scheduler`` partial on the optimizer; the scheduler steps every optimizer step.

        Raises:
            ConfigError: for an optimizer setting the optimizer class does not take.
        """
        decay, no_decay = [], []
        for _, p in {id(p): (n, p) for n, p in self.model.named_parameters() if p.requires_grad}.values():
            (decay if p.dim() >= 2 else no_decay).append(p)
        factory = self.optimizer_factory
        extra = {}
        if self.device.type == "cuda" and "fused" in _parameters(factory) and "fused" not in _keywords(factory):
            extra["fused"] = True
        opt = factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **extra)
        if self.scheduler_factory is None:
            return opt
        kwargs = {}
        if "total_steps" in _parameters(self.scheduler_factory) and "total_steps" not in _keywords(
            self.scheduler_factory
        ):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        sched = self.scheduler_factory(opt, **kwargs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's step (``optimizer.step(closure=optimizer_closure)``: the closure runs the training step and
        backward, once), then, with ``ignore_topk`` on, the largest updates undone (:func:`revert_topk_updates`).
        The parameters are copied before the step only when ``ignore_topk`` is on. Lightning calls this only when
        the optimizer steps (not while gradients accumulate); a step skipped by AMP's scaler changes nothing."""
        if self.ignore_topk is None:
            optimizer.step(closure=optimizer_closure)
            return
        snapshot = snapshot_params(optimizer)
        optimizer.step(closure=optimizer_closure)
        revert_topk_updates(snapshot, self.ignore_topk)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))


def _parameters(fn: Callable) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _keywords(fn: Callable) -> dict:
    return dict(fn.keywords) if isinstance(fn, functools.partial) else {}


def fit_settings(factory: Callable | None, node: str, droppable: frozenset[str]) -> Callable | None:
    """Check a partial's settings against its class's signature, for ``model.{node}``.

    After a ``_target_`` swap by override (``model.optimizer._target_=torch.optim.SGD``) the node still holds the
    old class's settings: those in ``droppable`` (:data:`FAMILY_KEYS`, :data:`SCHEDULE_KEYS`) that the new class
    does not take are dropped with a warning; any other setting it does not take is an error.

    Returns:
        ``factory``, or a new partial without the dropped settings.
    Raises:
        ConfigError: one line naming the unknown setting and the class's settings.
    """
    if not isinstance(factory, functools.partial):
        return factory
    params = _parameters(factory.func)
    if not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory
    unknown = [k for k in factory.keywords if k not in params]
    if not unknown:
        return factory
    name = f"{factory.func.__module__}.{factory.func.__qualname__}"
    bad = [k for k in unknown if k not in droppable]
    if bad:
        known = sorted(k for k in params if k not in ("self", "params", "optimizer"))
        raise ConfigError(f"model.{node}.{bad[0]}: {name} takes no such setting (expected one of {known})")
    log.warning("model.%s: %s takes no %s; dropped", node, name, ", ".join(unknown))
    return functools.partial(factory.func, **{k: v for k, v in factory.keywords.items() if k not in unknown})
