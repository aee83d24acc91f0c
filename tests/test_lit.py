"""LitGPT from conf/model: the GPT built in configure_model, optimizer and scheduler swaps by override, defaults
equal to the YAML, checkpoints that rebuild the model alone, and one fast in-process ``train(cfg)`` run."""

from __future__ import annotations

import dataclasses
import functools
import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra.utils import instantiate

from densitylab.errors import ConfigError
from densitylab.lit import LitGPT, cosine_with_warmup, warmup_cosine
from densitylab.model import GPT, GPTConfig

REPO_CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"


def _build(cfg_model, vocab: int = 97) -> LitGPT:
    """Instantiate cfg.model and build its GPT as Lightning would, with a stand-in datamodule of ``vocab`` ids."""
    lit = instantiate(cfg_model, _convert_="all")
    lit._trainer = SimpleNamespace(datamodule=SimpleNamespace(vocab_size=vocab, meta={"vocab_size": vocab}))
    lit.configure_model()
    return lit


def _construction_error(cfg_model) -> ConfigError:
    """The ConfigError that instantiating ``cfg_model`` raises (Hydra chains it as the cause)."""
    with pytest.raises(Exception) as info:
        instantiate(cfg_model, _convert_="all")
    err = info.value if isinstance(info.value, ConfigError) else info.value.__cause__
    assert isinstance(err, ConfigError), info.value
    return err


def _optimizers(lit: LitGPT, total_steps: int = 50):
    lit._trainer.estimated_stepping_batches = total_steps
    out = lit.configure_optimizers()
    return (
        (out, None) if isinstance(out, torch.optim.Optimizer) else (out["optimizer"], out["lr_scheduler"]["scheduler"])
    )


def test_gpt_is_built_in_configure_model_with_the_datamodules_vocab(compose_config):
    cfg = compose_config()
    lit = instantiate(cfg.model, _convert_="all")
    assert lit.model is None and lit.hparams["net"]["vocab_size"] is None  # nothing built before the data is known
    lit._trainer = SimpleNamespace(datamodule=SimpleNamespace(vocab_size=321, meta={"vocab_size": 321}))
    lit.configure_model()
    assert isinstance(lit.model, GPT) and lit.model.config.vocab_size == 321
    assert lit.hparams["net"] == dataclasses.asdict(lit.model.config)
    model = lit.model
    lit.configure_model()  # idempotent (Lightning calls it in every stage)
    assert lit.model is model
    assert lit.n_params == model.num_params(non_embedding=False) > lit.n_params_non_embedding > 0


def test_initial_weights_depend_on_init_seed_alone(compose_config):
    cfg = compose_config()
    a = _build(cfg.model)
    torch.rand(1000)  # whatever data preparation consumed in between
    b = _build(cfg.model)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    cfg.model.init_seed = 1
    c = _build(cfg.model)
    assert not torch.equal(a.model.lm_head.weight, c.model.lm_head.weight)


def test_vocab_below_the_tokenizers_is_refused(compose_config):
    cfg = compose_config("model.net.vocab_size=50")
    with pytest.raises(ConfigError, match=r"model.net.vocab_size=50: expected >= the tokenizer's 97"):
        _build(cfg.model, vocab=97)


def test_default_optimizer_and_schedule_are_adamw_warmup_cosine(compose_config):
    cfg = compose_config()
    opt, sched = _optimizers(_build(cfg.model), total_steps=900)
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["betas"] == (0.9, 0.95) or tuple(decay["betas"]) == (0.9, 0.95)
    lrs = []
    for _ in range(900):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * cosine_with_warmup(s, 100, 900, 0.1) for s in range(900)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_swap_optimizer_target_by_override(compose_config):
    cfg = compose_config("model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9")
    opt, _ = _optimizers(_build(cfg.model))
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[1]["weight_decay"] == 0.0  # AdamW's betas were dropped, not passed to SGD


def test_swap_optimizer_group_option(compose_config):
    cfg = compose_config("model/optimizer=sgd", "model.optimizer.lr=0.05")
    opt, _ = _optimizers(_build(cfg.model))
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    assert opt.param_groups[0]["initial_lr"] == 0.05  # the peak LR (warmup scales the current one)


def test_unknown_optimizer_setting_is_one_clear_error(compose_config):
    err = _construction_error(compose_config("+model.optimizer.lrr=0.1").model)  # at construction, before any data
    assert "model.optimizer.lrr: torch.optim.adamw.AdamW takes no such setting" in str(err)


def test_swap_scheduler_by_override(compose_config):
    cfg = compose_config("model/scheduler=constant")
    opt, sched = _optimizers(_build(cfg.model))
    assert type(sched) is torch.optim.lr_scheduler.ConstantLR
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    # an experiment that sets the warmup schedule's keys, then another class: those keys are dropped
    cfg = compose_config("experiment=smoke", "model/scheduler=constant")
    _, sched = _optimizers(_build(cfg.model))
    assert type(sched) is torch.optim.lr_scheduler.ConstantLR
    cfg = compose_config("model.scheduler._target_=torch.optim.lr_scheduler.StepLR", "+model.scheduler.step_size=2")
    _, sched = _optimizers(_build(cfg.model))  # any torch scheduler class, by _target_
    assert type(sched) is torch.optim.lr_scheduler.StepLR and sched.step_size == 2
    err = _construction_error(compose_config("model/scheduler=constant", "+model.scheduler.stepsize=2").model)
    assert "model.scheduler.stepsize: torch.optim.lr_scheduler.ConstantLR takes no such setting" in str(err)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.optimizer.lr=0", "model.optimizer.lr=0: expected a positive learning rate"),
        ("model.scheduler.warmup_steps=-1", "model.scheduler.warmup_steps=-1: expected an integer >= 0"),
        ("model.scheduler.min_lr_ratio=2", "model.scheduler.min_lr_ratio=2: expected a number in [0, 1]"),
        ("model.init_seed=abc", "model.init_seed='abc': expected an integer or null"),
    ],
)
def test_bad_optimizer_or_schedule_values(compose_config, override, needle):
    assert needle in str(_construction_error(compose_config(override).model))


def test_bad_net_value_names_the_net_key(compose_config):
    cfg = compose_config("model.net.n_embd=130")
    with pytest.raises(ConfigError, match=r"model.net.n_embd=130 is not divisible by model.net.n_head=4"):
        _build(cfg.model)


def test_python_defaults_equal_the_yaml():
    """The Python defaults of config-driven constructors equal conf/ (the single place defaults live)."""
    base = yaml.safe_load((REPO_CONF / "model" / "base.yaml").read_text())
    net = {k: v for k, v in base["net"].items() if not k.startswith("_") and k != "vocab_size"}
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    assert {k: defaults[k] for k in net} == net
    for name, keys in (
        ("optimizer/adamw", ("lr", "weight_decay", "betas")),
        ("scheduler/warmup_cosine", ("warmup_steps", "min_lr_ratio", "decay_steps")),
    ):
        node = yaml.safe_load((REPO_CONF / "model" / f"{name}.yaml").read_text())
        assert set(keys) <= set(node)
    import inspect

    # no Python defaults for config-driven arguments; ignore_topk's None keeps older checkpoints loading (== yaml)
    for fn in (LitGPT.__init__, warmup_cosine):
        skip = ("self", "optimizer", "ignore_topk")
        params = [p for p in inspect.signature(fn).parameters.values() if p.name not in skip]
        assert all(p.default is inspect.Parameter.empty for p in params), fn
    base = yaml.safe_load((REPO_CONF / "model" / "base.yaml").read_text())
    assert base["ignore_topk"] is None
    assert inspect.signature(LitGPT.__init__).parameters["ignore_topk"].default is None


def test_checkpoint_alone_rebuilds_the_model(compose_config, tmp_path):
    import lightning as L

    cfg = compose_config()
    lit = _build(cfg.model, vocab=61)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=0,
    )
    trainer.strategy.connect(lit)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True, map_location="cpu")  # plain data only
    assert ckpt["hyper_parameters"]["net"]["vocab_size"] == 61
    assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.adamw.AdamW"
    model = GPT(GPTConfig(**ckpt["hyper_parameters"]["net"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    again = LitGPT.load_from_checkpoint(path, map_location="cpu")
    x = torch.randint(0, 61, (2, 9))
    assert torch.equal(model.eval()(x), lit.model.eval()(x)) and torch.equal(again.model.eval()(x), model(x))
    assert isinstance(again.optimizer_factory, functools.partial)


@pytest.mark.slow  # kept out of make test-fast (3 min budget); still run by make test
def test_in_process_train_run(compose_config, tmp_path):
    """One fast ``train(cfg)`` in this process: the whole build -> fit -> validate -> write path."""
    from densitylab.run import train

    cfg = compose_config(
        "experiment=smoke",
        "logger=csv",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "data.progress=false",
        "callbacks.modularity=null",
        "callbacks.density.every_n_steps=3",
        "callbacks.memorization.every_n_steps=3",
        return_hydra_config=False,
    )
    summary = train(cfg)
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["global_step"] == 6
    assert json.loads((run / "summary.json").read_text())["global_step"] == 6
    assert summary["train/tokens_seen"] == 6 * 16 * 64 and summary["model/params"] > 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "probes" / "density.parquet").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    vocab = json.loads((run / "data.json").read_text())["vocab_size"]
    assert ckpt["hyper_parameters"]["net"]["vocab_size"] == vocab  # the tokenizer's actual size, resolved


def test_initial_weights_ignore_the_device_and_dtype_context(compose_config):
    """Lightning opens the strategy's device / dtype context around configure_model: the draw stays on the CPU
    generator in float32, and the caller's generator state is left as it was."""
    cfg = compose_config()
    ref = _build(cfg.model)
    state = torch.random.get_rng_state()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("meta"):
            other = _build(cfg.model)
    finally:
        torch.set_default_dtype(old)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert other.model.lm_head.weight.device.type == "cpu" and other.model.lm_head.weight.dtype == torch.float32
    assert torch.equal(other.model.lm_head.weight, ref.model.lm_head.weight)
