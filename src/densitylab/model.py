"""A small GPT with nanoGPT / HF GPT-2 parameter names and TransformerLens hook names.

Parameters are named exactly as in nanoGPT (``transformer.wte``, ``transformer.wpe``,
``transformer.h.{i}.ln_1``, ``transformer.h.{i}.attn.c_attn``, ``transformer.h.{i}.attn.c_proj``,
``transformer.h.{i}.ln_2``, ``transformer.h.{i}.mlp.c_fc``, ``transformer.h.{i}.mlp.c_proj``,
``transformer.ln_f``, ``lm_head``; ``lm_head.weight`` is tied to ``transformer.wte.weight``), so a
checkpoint converts to HF GPT-2 or TransformerLens (``convert_nanogpt_weights``) without renaming.

Activations are exposed through identity :class:`HookPoint` modules that carry TransformerLens names
(``blocks.{i}.hook_resid_pre``, ``blocks.{i}.attn.hook_z``, ``blocks.{i}.hook_attn_out``,
``blocks.{i}.hook_resid_mid``, ``blocks.{i}.mlp.hook_pre``, ``blocks.{i}.mlp.hook_post``,
``blocks.{i}.hook_mlp_out``, ``blocks.{i}.hook_resid_post``); with no hook registered they cost one
identity call each. :meth:`GPT.hook_points` maps those names to modules; :meth:`GPT.run_with_cache`
records a chosen subset.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("relu", "gelu", "relu2", "swiglu")


@dataclass
class GPTConfig:
    """Architecture hyperparameters.

    Attributes:
        vocab_size: number of token ids (embedding rows).
        block_size: maximum context length T in tokens.
        n_layer: number of transformer blocks L.
        n_head: attention heads per block H.
        n_embd: residual width d (must be divisible by ``n_head``; d_head = d / H).
        mlp_ratio: MLP hidden width d_mlp = ``mlp_ratio * n_embd``.
        activation: MLP nonlinearity, one of ``relu`` (default: exact zeros make density
            unambiguous), ``gelu``, ``relu2`` (squared ReLU, So et al. 2021), ``swiglu``
            (Shazeer 2020; ``c_fc`` then holds gate and up projections, 2·d_mlp outputs).
        dropout: dropout probability on attention output, MLP output and embeddings.
        bias: whether Linear and LayerNorm layers have biases (GPT-2: True).
    """

    vocab_size: int = 4096
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    activation: str = "relu"
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)
                setattr(self, name, value)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"model.net.{name}={value!r}: expected a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.net.n_embd={self.n_embd} is not divisible by model.net.n_head={self.n_head}: "
                "expected n_embd = n_head * d_head"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real):
            raise ValueError(f"model.net.dropout={self.dropout!r}: expected a value in [0, 1)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.net.activation={self.activation!r}: expected one of {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.net.dropout={self.dropout!r}: expected a value in [0, 1)")

    @property
    def d_head(self) -> int:
        """Width of one attention head, d / H."""
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        """Hidden width of the MLP (number of neurons per layer)."""
        return self.mlp_ratio * self.n_embd


class HookPoint(nn.Module):
    """Identity module marking an activation; forward hooks on it read or edit that activation.

    ``name`` is the TransformerLens name (e.g. ``blocks.0.mlp.hook_post``). A forward hook that
    returns a tensor replaces the activation (that is how ablations edit ``hook_z``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` unchanged (any shape)."""
        return x


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``.

    ``hook_z`` sees the per-head outputs (B, T, H, d_head) before ``c_proj``; a head mask
    (see :meth:`GPT.forward`) scales them, which zero-ablates heads on the SDPA path.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.hook_z = HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool = False,
    ):
        """Attend causally.

        Args:
            x: (B, T, d) normalised residual stream.
            head_mask: None, (H,) or (B, H) multipliers on each head's output.
            past: cached ``(k, v)`` of earlier positions, each (B, H, P, d_head) (HF GPT-2's
                ``layer_past``); the T new positions attend to them and causally to each other.
            use_cache: also return this layer's ``(k, v)`` over all P + T positions.
        Returns:
            (B, T, d) attention output (after ``c_proj``), and with ``use_cache`` the ``(k, v)`` pair.
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.d_head).transpose(1, 2)
        if past is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:  # new positions P..P+T-1 see every cached position and the new ones up to themselves
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            P = k.shape[2] - T
            allowed = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
            )
        z = y.transpose(1, 2)  # (B, T, H, d_head)
        if head_mask is not None:
            z = z * head_mask.to(z.dtype).view(-1, 1, self.n_head, 1)
        z = self.hook_z(z)
        out = self.resid_dropout(self.c_proj(z.reshape(B, T, C)))
        return (out, (k, v)) if use_cache else out


class MLP(nn.Module):
    """Position-wise MLP ``c_proj(act(c_fc(x)))`` with hooks on the pre- and post-activation.

    ``hook_pre`` and ``hook_post`` both have shape (B, T, d_mlp). For ``swiglu``, ``hook_pre`` is
    the gate pre-activation and ``hook_post`` is ``silu(gate) * up``.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.activation = cfg.activation
        n_out = 2 * cfg.d_mlp if cfg.activation == "swiglu" else cfg.d_mlp
        self.c_fc = nn.Linear(cfg.n_embd, n_out, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_mlp, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, d) -> (B, T, d)."""
        h = self.c_fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            post = F.silu(self.hook_pre(gate)) * up
        else:
            pre = self.hook_pre(h)
            if self.activation == "relu":
                post = F.relu(pre)
            elif self.activation == "relu2":
                post = F.relu(pre).square()
            else:
                post = F.gelu(pre, approximate="tanh")
        return self.dropout(self.c_proj(self.hook_post(post)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2) with TransformerLens residual hooks."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool = False,
    ):
        """Map the residual stream (B, T, d) -> (B, T, d); with ``use_cache`` also return the attention's
        ``(k, v)`` (see :meth:`CausalSelfAttention.forward`)."""
        x = self.hook_resid_pre(x)
        a = self.attn(self.ln_1(x), head_mask, past, use_cache)
        a, present = a if use_cache else (a, None)
        x = self.hook_resid_mid(x + self.hook_attn_out(a))
        x = self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))
        return (x, present) if use_cache else x


class GPT(nn.Module):
    """nanoGPT-structured decoder-only transformer (Radford et al. 2019, GPT-2).

    Args:
        cfg: a :class:`GPTConfig` (or keyword arguments for one).

    Raises:
        ValueError: on an invalid configuration (see :class:`GPTConfig`).
    """

    def __init__(self, cfg: GPTConfig | None = None, **kwargs) -> None:
        super().__init__()
        if cfg is not None and kwargs:
            raise TypeError(f"pass either a GPTConfig or keyword arguments, not both (got {sorted(kwargs)})")
        self.config = cfg if cfg is not None else GPTConfig(**kwargs)
        cfg = self.config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (GPT-2, nanoGPT)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self._hooks = self._name_hook_points()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _name_hook_points(self) -> dict[str, HookPoint]:
        points: dict[str, HookPoint] = {}
        for i, block in enumerate(self.transformer.h):
            for attr in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
                points[f"blocks.{i}.{attr}"] = getattr(block, attr)
            points[f"blocks.{i}.attn.hook_z"] = block.attn.hook_z
            points[f"blocks.{i}.mlp.hook_pre"] = block.mlp.hook_pre
            points[f"blocks.{i}.mlp.hook_post"] = block.mlp.hook_post
        for name, point in points.items():
            point.name = name
        return points

    def hook_points(self) -> dict[str, HookPoint]:
        """TransformerLens hook name -> :class:`HookPoint` module, in forward order per block."""
        return dict(self._hooks)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count N. With ``non_embedding`` the position embeddings are excluded
        (nanoGPT convention; the token embedding stays because it is tied to ``lm_head``)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N + 12·L·H·d_head·T (Chowdhery et al., PaLM, appendix B).

        Args:
            seq_len: context length T in tokens (default ``block_size``).
        Returns:
            FLOPs (forward + backward) per trained token, as used for MFU.
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_head * cfg.d_head * T

    def forward(
        self,
        idx: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        use_cache: bool = False,
    ):
        """Compute next-token logits.

        Args:
            idx: (B, T) int64 token ids, P + T <= ``block_size`` (P = cached positions).
            head_mask: optional (L, H) or (B, L, H) multipliers on each head's output
                (1 keeps a head, 0 zero-ablates it; HF GPT-2's ``head_mask`` convention).
            stop_at_layer: run only blocks ``0 .. stop_at_layer-1`` and return the residual stream
                (B, T, d) after them, skipping ``ln_f`` and ``lm_head`` (TransformerLens semantics;
                probes that only read hooks use it).
            past_key_values: per layer the cached ``(k, v)`` of P earlier positions, each
                (B, H, P, d_head), as returned with ``use_cache`` (HF GPT-2's ``past_key_values``); ``idx``
                continues them at positions P.. (inference only: scoring continuations of one prompt).
            use_cache: also return the per-layer ``(k, v)`` over all P + T positions.
        Returns:
            (B, T, vocab_size) logits (float32 unless run under autocast), or the (B, T, d) residual
            stream with ``stop_at_layer``; with ``use_cache`` a pair ``(output, past_key_values)``.
        Raises:
            ValueError: if P + T exceeds ``block_size``.
        """
        B, T = idx.shape
        P = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if P + T > self.config.block_size:
            raise ValueError(f"sequence length {P + T} exceeds model.net.block_size={self.config.block_size}")
        pos = torch.arange(P, P + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        presents = []
        for i, block in enumerate(self.transformer.h):
            if stop_at_layer is not None and i >= stop_at_layer:
                return (x, presents) if use_cache else x
            mask = None
            if head_mask is not None:
                mask = head_mask[i] if head_mask.dim() == 2 else head_mask[:, i]
            if past_key_values is None and not use_cache:
                x = block(x, mask)  # the training path, unchanged
            else:
                x, present = block(x, mask, None if past_key_values is None else past_key_values[i], True)
                presents.append(present)
        if stop_at_layer is not None:
            return (x, presents) if use_cache else x
        logits = self.lm_head(self.transformer.ln_f(x))
        return (logits, presents) if use_cache else logits

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, Callable]]) -> Iterator[GPT]:
        """Register ``(hook_name, fn(module, input, output))`` forward hooks for the duration of
        the ``with`` block and always remove them afterwards (even on error).

        Raises:
            KeyError: for a hook name that does not exist (names listed in the message).
        """
        handles = []
        try:
            for name, fn in fwd_hooks:
                if name not in self._hooks:
                    raise KeyError(f"unknown hook point {name!r}; expected one of {sorted(self._hooks)}")
                handles.append(self._hooks[name].register_forward_hook(fn))
            yield self
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def run_with_cache(
        self, idx: torch.Tensor, names: Iterable[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run a forward pass and return ``(logits, cache)`` where ``cache[name]`` is the
        activation at each requested hook point (all when ``names`` is None), detached.

        Shapes: logits (B, T, V); ``blocks.{i}.attn.hook_z`` (B, T, H, d_head); MLP hooks
        (B, T, d_mlp); residual hooks (B, T, d).
        """
        cache: dict[str, torch.Tensor] = {}

        def save(module: HookPoint, _inp, out: torch.Tensor) -> None:
            cache[module.name] = out.detach()

        wanted = list(self._hooks) if names is None else list(names)
        with self.hooks((n, save) for n in wanted):
            logits = self(idx)
        return logits, cache
