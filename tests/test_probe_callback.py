"""ProbeCallback: schedule, resume dedupe, timing, rank gating, explicit wiring, and a tiny Lightning fit."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from densitylab.callbacks import DensityCallback, LedgerCallback, ThroughputLogger
from densitylab.callbacks.base import ProbeCallback, connect_callbacks
from densitylab.errors import ConfigError
from densitylab.model import GPT


class WeightNorm(ProbeCallback):
    """The smallest probe: the model's weight norm and whether it was measured in eval mode."""

    name = "toy"

    def measure(self, trainer, pl_module, model, step):
        norm = float(sum(p.detach().float().norm() ** 2 for p in model.parameters()) ** 0.5)
        return pd.DataFrame({"step": [step], "norm": [norm], "training": [model.training]}), {"toy/norm": norm}


class Capture(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


def fake_trainer(**kw):
    """Just what the base reads: a single process, global rank 0, no W&B."""
    return SimpleNamespace(
        **{"global_step": 0, "current_epoch": 0, "is_global_zero": True, "world_size": 1, "loggers": [], **kw}
    )


def drive(cb, steps, trainer=None, module=None):
    """Run the hooks as the fit loop would: fit start, train start, one batch end per entry of ``steps``
    (the global step after that batch), train end."""
    trainer = trainer or fake_trainer()
    module = module or SimpleNamespace(model=torch.nn.Linear(3, 2))
    cb.on_fit_start(trainer, module)
    cb.on_train_start(trainer, module)
    for s in steps:
        trainer.global_step = s
        cb.on_train_batch_end(trainer, module, None, None, 0)
    cb.on_train_end(trainer, module)
    return trainer


def steps_of(cb) -> list[int]:
    return pd.concat(cb.rows, ignore_index=True)["step"].tolist() if cb.rows else []


def test_schedule_log_spaced_periodic_once_per_step_and_final():
    cb = WeightNorm(every_n_steps=8)
    accumulated = [s for s in range(21) for _ in range(2)][1:]  # two batches per step: 0, 1, 1, 2, 2, ...
    drive(cb, accumulated)
    assert steps_of(cb) == [0, 1, 2, 4, 8, 16, 20]  # 20: the final probe
    assert cb.calls == 7 and cb.last_step == 20

    cb = WeightNorm(every_n_steps=8, log_spaced=False, probe_at_start=False)
    drive(cb, range(1, 17))  # ends on a probe step: no extra final probe
    assert steps_of(cb) == [8, 16]

    cb = WeightNorm(every_n_steps=0, log_spaced=False)
    drive(cb, range(1, 5))
    assert steps_of(cb) == [0, 4]


def test_epoch_cadence_respects_min_steps_between():
    cb = WeightNorm(every_n_steps=0, log_spaced=False, every_n_epochs=2, min_steps_between=3)
    trainer, module = fake_trainer(), SimpleNamespace(model=torch.nn.Linear(3, 2))
    cb.on_fit_start(trainer, module)
    cb.on_train_start(trainer, module)  # step 0
    for epoch, step in enumerate([1, 2, 3, 4, 5, 6, 7, 8]):  # one step per epoch
        trainer.current_epoch, trainer.global_step = epoch, step
        cb.on_train_epoch_end(trainer, module)
    # epochs 1, 3, 5, 7 end at steps 2, 4, 6, 8: step 2 is < 3 steps after 0, step 4 is not; 6 < 4 + 3; 8 >= 4 + 3
    assert steps_of(cb) == [0, 4, 8]


def test_resume_keeps_earlier_records_up_to_the_restored_step(tmp_path):
    (tmp_path / "probes").mkdir()
    old = pd.DataFrame({"step": [0, 1, 2, 4, 8], "norm": [-1.0] * 5, "training": [False] * 5})
    old.to_parquet(tmp_path / "probes" / "toy.parquet", index=False)
    cb = WeightNorm(output_dir=str(tmp_path), every_n_steps=8)
    trainer, module = fake_trainer(global_step=4), SimpleNamespace(model=torch.nn.Linear(3, 2))
    drive(cb, [4, 5, 6, 7, 8, 9], trainer, module)  # resumed at step 4: step 4 is not probed again
    table = pd.read_parquet(tmp_path / "probes" / "toy.parquet")
    assert table["step"].tolist() == [0, 1, 2, 4, 8, 9]
    assert (table["norm"].iloc[:4] == -1.0).all() and (table["norm"].iloc[4:] > 0).all()  # 8 re-measured
    assert not list((tmp_path / "probes").glob(".*tmp*"))

    other_rank = WeightNorm(output_dir=str(tmp_path), every_n_steps=8)
    trainer = fake_trainer(global_step=4, is_global_zero=False)
    drive(other_rank, [8], trainer)
    assert other_rank.rows == [] and other_rank.calls == 0  # off rank 0: no records, no table, no logging
    assert pd.read_parquet(tmp_path / "probes" / "toy.parquet")["step"].tolist() == [0, 1, 2, 4, 8, 9]


def test_a_resume_keeps_every_timed_callbacks_earlier_timing_rows(tmp_path):
    from densitylab.callbacks.probe_checkpoint import ProbeCheckpoint  # noqa: PLC0415

    class Other(WeightNorm):
        name = "other"

    (tmp_path / "probes").mkdir()
    names = ("toy", "other", "probe_checkpoint")
    earlier = pd.DataFrame(  # the first attempt: set-up, then calls at steps 0, 4 and 8 of each callback
        [(s, n, "setup" if s < 0 else "call", 1.0) for s in (-1, 0, 4, 8) for n in names],
        columns=["step", "probe", "kind", "seconds"],
    )
    path = tmp_path / "probes" / "timing.parquet"
    earlier.to_parquet(path, index=False)
    a, b = WeightNorm(output_dir=str(tmp_path), every_n_steps=8), Other(output_dir=str(tmp_path), every_n_steps=8)
    ckpt = ProbeCheckpoint(dirpath=str(tmp_path / "ckpt"), keep="probe_steps")
    trainer = fake_trainer(global_step=4, callbacks=[a, b, ckpt])
    module = SimpleNamespace(model=torch.nn.Linear(3, 2))
    for cb in (a, b, ckpt):  # hook order; the first one's set-up row is written before the others read theirs
        cb.on_fit_start(trainer, module)
    for cb in (a, b, ckpt):
        cb.on_train_start(trainer, module)  # resumed at step 4: the rows of step 8 are dropped
    trainer.global_step = 5
    for cb in (a, b):
        cb.on_train_end(trainer, module)  # the final probe at step 5
    rows = pd.read_parquet(path)
    old = rows[rows["seconds"] == 1.0]
    assert sorted(map(tuple, old[["step", "probe"]].values)) == sorted((s, n) for s in (-1, 0, 4) for n in names)
    new = rows[rows["seconds"] != 1.0]
    assert sorted(map(tuple, new[["step", "probe", "kind"]].values)) == [
        (-1, "other", "setup"), (-1, "toy", "setup"), (5, "other", "final"), (5, "toy", "final")
    ]  # fmt: skip


def test_timing_key_is_logged_with_the_scalars_and_summarised():
    cb, log = WeightNorm(every_n_steps=4), Capture()
    drive(cb, [1, 2, 3], fake_trainer(loggers=[log]))
    assert [s for s, _ in log.calls] == [0, 1, 2, 3]
    for _, metrics in log.calls:  # a module without tokens_seen: no train/tokens_seen
        assert set(metrics) == {"toy/norm", "perf/toy_probe_seconds"} and metrics["perf/toy_probe_seconds"] >= 0
    # logged inside the call: the mean with this call's seconds up to its logging, <= the mean of whole calls
    assert 0 < log.calls[-1][1]["perf/toy_probe_seconds"] <= cb.seconds / cb.calls
    assert cb.summary_metrics() == {"perf/toy_probe_seconds": cb.seconds / 4}
    assert [(s, k) for s, k, _ in cb.timing] == [(-1, "setup"), (0, "call"), (1, "call"), (2, "call"), (3, "final")]
    assert cb.seconds == pytest.approx(sum(sec for s, _, sec in cb.timing if s >= 0))
    cb.enabled = False
    assert cb.summary_metrics() == {}


def test_base_needs_a_name_and_known_dependencies():
    class Nameless(ProbeCallback):
        pass

    with pytest.raises(TypeError, match="name"):
        Nameless()
    with pytest.raises(TypeError, match="needs"):
        WeightNorm(needs={"ledger": "ledger"})


def test_connect_callbacks_resolves_names_and_reports_bad_ones_in_one_line():
    ledger, density = LedgerCallback(), DensityCallback(seed=0, panel={}, endpoints={}, ledger="ledger")
    with pytest.raises(ConfigError, match=r"callbacks\.density\.ledger='ledger': not connected"):
        density.dependency("ledger")
    connect_callbacks({"ledger": ledger, "throughput": ThroughputLogger(), "density": density})
    assert density.dependency("ledger") is ledger and density.config_key == "density"

    cases = [
        (
            {
                "throughput": ThroughputLogger(),
                "density": DensityCallback(seed=0, panel={}, endpoints={}, ledger="ledgr"),
            },
            "callbacks.density.ledger='ledgr': no callback of that name (expected one of ['throughput', 'density'])",
        ),
        (
            {"ledger": None, "density": DensityCallback(seed=0, panel={}, endpoints={})},
            "callbacks.density.ledger='ledger': callbacks.ledger is disabled (null)",
        ),
        (
            {
                "throughput": ThroughputLogger(),
                "density": DensityCallback(seed=0, panel={}, endpoints={}, ledger="throughput"),
            },
            "callbacks.density.ledger='throughput': expected a LedgerCallback, got ThroughputLogger",
        ),
        (
            {"density": DensityCallback(seed=0, panel={}, endpoints={}), "ledger": LedgerCallback()},
            "callbacks.density.ledger='ledger': callbacks.ledger must come before callbacks.density",
        ),
        (
            {"ledger": LedgerCallback(), "d": DensityCallback(seed=0, panel={}, endpoints={}, ledger=None)},
            "callbacks.d.ledger=null: expected the name",
        ),
    ]
    for callbacks, message in cases:
        with pytest.raises(ConfigError) as e:
            connect_callbacks(callbacks)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)

    direct = DensityCallback(
        seed=0, panel={}, endpoints={}, ledger=ledger
    )  # a callback passed directly needs no connecting
    connect_callbacks({"density": direct})
    assert direct.dependency("ledger") is ledger


def test_build_callbacks_wires_config_entries_by_name():
    from densitylab.run import build_callbacks

    cfg = OmegaConf.create(
        {
            "callbacks": {
                "ledger": {"_target_": "densitylab.callbacks.LedgerCallback"},
                "off": None,
                "density": {
                    "_target_": "densitylab.callbacks.DensityCallback",
                    "ledger": "ledger",
                    "seed": 0,
                    "panel": {},
                    "endpoints": {},
                },
            }
        }
    )
    ledger, density = build_callbacks(cfg)
    assert isinstance(ledger, LedgerCallback) and density.dependency("ledger") is ledger
    cfg.callbacks.ledger = None
    with pytest.raises(ConfigError, match=r"^callbacks\.density\.ledger='ledger': callbacks\.ledger is disabled"):
        build_callbacks(cfg)


class TinyLM(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = GPT(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        logits = self.model(x[:, :-1])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 16), x[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_measure_only_subclass_runs_through_a_lightning_fit(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 16, (64, 9)))
    cb, log = WeightNorm(output_dir=str(tmp_path), every_n_steps=4), Capture()
    trainer = L.Trainer(
        max_steps=6,
        accumulate_grad_batches=2,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
        logger=log,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = TinyLM()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    table = pd.read_parquet(tmp_path / "probes" / "toy.parquet")
    assert table["step"].tolist() == [0, 1, 2, 4, 6]  # log-spaced, every 4, final; once per accumulated step
    assert not table["training"].any() and module.model.training  # measured in eval mode, train mode restored
    assert table["norm"].iloc[0] != table["norm"].iloc[-1]  # the weights moved between probes
    logged = [m for _, m in log.calls if "toy/norm" in m]
    assert len(logged) == 5 and all("perf/toy_probe_seconds" in m for m in logged)
    assert cb.summary_metrics()["perf/toy_probe_seconds"] == pytest.approx(cb.seconds / 5)


def test_callback_python_defaults_equal_the_yaml():
    """Defaults live in conf/: every densitylab callback constructor either has no default for a setting its
    entry in ``conf/callbacks/default.yaml`` sets, or the YAML's value (None where the YAML interpolates it)."""
    from conftest import CONF_DIR, check_python_defaults, import_target
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml")
    problems = []
    for name, entry in node.items():
        if isinstance(entry, DictConfig) and str(entry.get("_target_", "")).startswith("densitylab."):
            problems += check_python_defaults(import_target(entry._target_), entry, f"callbacks.{name}")
    assert not problems, problems


@pytest.mark.parametrize(
    "override, words",
    [
        ("callbacks.density.endpoints.min_entities=1", ["min_entities=1", "integer >= 2"]),
        ("callbacks.density.endpoints.bin_edges=[4,1]", ["bin_edges=[4, 1]", "increasing"]),
        ("callbacks.density.endpoints.roles=[name_lst]", ["'name_lst'", "not a position role"]),
        ("callbacks.density.endpoints.metric=dense", ["'dense'", "not a density metric"]),
        ("callbacks.density.endpoints.exposure=views", ["exposure='views'", "distinct_docs"]),
        ("callbacks.density.panel.size=0", ["panel.size=0", "integer >= 1"]),
        ("+callbacks.density.panel.sise=3", ["sise"]),
    ],
)
def test_a_bad_panel_or_endpoint_setting_is_one_line_at_construction(compose_config, override, words):
    from densitylab.run import build_callbacks

    cfg = compose_config("experiment=smoke", "logger=csv", override)
    with pytest.raises(ConfigError) as e:
        build_callbacks(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize(
    "override, words",
    [
        ("callbacks.density.endpoints.level=abc", ["level='abc'", "(0, 1)"]),
        ("callbacks.density.endpoints.roles=name_last", ["roles='name_last'", "a list"]),
        ("+callbacks.density.endpoints.bins=3", ["unknown panel or endpoints setting 'bins'"]),
        ("callbacks.density.endpoints.bin_edges=[1,4,16]", ["bin_edges=[1, 4, 16]", "start 0, 1"]),
    ],
)
def test_a_mistyped_endpoint_setting_names_its_key(compose_config, override, words):
    from densitylab.run import build_callbacks

    cfg = compose_config("experiment=smoke", "logger=csv", override)
    with pytest.raises(ConfigError) as e:
        build_callbacks(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


class LogitsDtype(ProbeCallback):
    """A probe that runs the model and records the logits' dtype and whether autocast was on."""

    name = "dtype"

    def measure(self, trainer, pl_module, model, step):
        x = torch.zeros(2, 8, dtype=torch.long)
        row = {"step": step, "dtype": str(model(x).dtype), "autocast": torch.is_autocast_enabled("cpu")}
        return pd.DataFrame([row]), {}


class DtypeLM(TinyLM):
    """:class:`TinyLM` that keeps the dtype of its training logits."""

    def training_step(self, batch, batch_idx):
        (x,) = batch
        logits = self.model(x[:, :-1])
        self.train_dtypes = getattr(self, "train_dtypes", set()) | {str(logits.dtype)}
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, 16), x[:, 1:].reshape(-1))


def test_probes_measure_in_fp32_under_bf16_mixed_even_inside_an_autocast_region(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 16, (16, 9)))
    cb = LogitsDtype(output_dir=str(tmp_path), every_n_steps=2, log_spaced=False)
    trainer = L.Trainer(max_steps=2, precision="bf16-mixed", accelerator="cpu", devices=1, logger=False,
                        callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    module = DtypeLM()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert module.train_dtypes == {"torch.bfloat16"}  # training ran under bf16 autocast
    table = pd.read_parquet(tmp_path / "probes" / "dtype.parquet")
    assert table["step"].tolist() == [0, 2] and set(table["dtype"]) == {"torch.float32"} and not table["autocast"].any()
    # a probe called from inside an autocast region (another strategy's hook) measures in fp32 too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert str(module.model(torch.zeros(2, 8, dtype=torch.long)).dtype) == "torch.bfloat16"
        cb.probe(trainer, module)
    assert pd.read_parquet(tmp_path / "probes" / "dtype.parquet")["dtype"].tolist()[-1] == "torch.float32"
