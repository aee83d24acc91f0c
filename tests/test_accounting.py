"""Time accounting: the thinning probe schedule, the predicted probe share, the ThroughputLogger's sums in a tiny
Lightning fit (train + probe + validation + other = loop; probe time out of ``perf/tokens_per_sec``) and
``train/tokens_seen`` on every probe record and scalar. Relations only, never wall-clock values."""

from __future__ import annotations

import time

import lightning as L
import pandas as pd
import pytest
import torch

from densitylab.callbacks import ThroughputLogger
from densitylab.callbacks.base import ProbeCallback
from densitylab.probes.schedule import (
    call_kind,
    is_scheduled,
    periodic_interval,
    predict_run_share,
    predict_share,
    scheduled_steps,
)

SLEEP_S = 0.03


def test_periodic_interval_doubles_with_each_doubling_past_thin_after():
    assert [periodic_interval(s, 150, 2000) for s in (1, 2000, 2001, 4000, 4001, 8001)] == [
        150,
        150,
        300,
        300,
        600,
        1200,
    ]
    assert periodic_interval(10**6, 150, None) == periodic_interval(10**6, 150, 0) == 150
    with pytest.raises(ValueError, match="thin_after=-1"):
        periodic_interval(5, 150, -1)


def test_thinned_schedule_keeps_early_and_final_calls_and_halves_a_long_runs_periodic_ones():
    plain, thin = scheduled_steps(10_000, 150, 4), scheduled_steps(10_000, 150, 4, thin_after=2000)
    assert plain[:6] == thin[:6] == [0, 1, 4, 16, 64, 150] and plain[-1] == thin[-1] == 10_000
    assert [s for s in thin if 1950 <= s <= 4800] == [1950, 2100, 2400, 2700, 3000, 3300, 3600, 3900, 4200, 4800]
    assert len(plain) == 5 + 66 + 1 and len(thin) == 5 + 29 + 1  # start + log-spaced, periodic, final
    assert scheduled_steps(900, 150, 4, thin_after=2000) == scheduled_steps(900, 150, 4)  # the default run: unchanged
    assert all(is_scheduled(s, 150, 4, 2000) for s in thin[:-1])
    # the knowledge probe: log-spaced from min_step only
    assert scheduled_steps(10_000, 0, 4, 2000, min_step=16) == [0, 16, 64, 256, 1024, 4096, 10_000]


def test_predicted_share_is_per_call_costs_times_the_schedule():
    costs = {"start": 1.0, "early": 0.5, "periodic": 2.0, "final": 4.0}
    steps = scheduled_steps(1000, 100, 4, thin_after=400)  # 0; 1, 4, 16, 64; 100..400 by 100, 600, 800; 1000
    assert [call_kind(s, 1000, 100, 400) for s in steps] == ["start"] + ["early"] * 4 + ["periodic"] * 6 + ["final"]
    got = predict_run_share(
        {"p": {"seconds": costs, "every_n_steps": 100, "log_spaced": 4, "thin_after": 400}},
        1000,
        step_seconds=0.1,
        val_seconds=0.5,
        val_every=250,
        other_seconds=1.0,
    )
    probe = 1.0 + 4 * 0.5 + 6 * 2.0 + 4.0
    assert got["seconds/p"] == pytest.approx(probe) and got["probe_seconds"] == pytest.approx(probe)
    assert got["loop_seconds"] == pytest.approx(100 + 4 * 0.5 + 1.0 + probe)
    assert got["share"] == pytest.approx(probe / got["loop_seconds"]) == pytest.approx(got["share/p"])
    assert predict_share(probe, 100, 2.0, 1.0) == pytest.approx(got["share"])
    # a kind without a cost takes the mean of those given
    only = predict_run_share({"p": {"seconds": {"periodic": 2.0}, "every_n_steps": 100, "log_spaced": False}}, 300, 0.1)
    assert only["seconds/p"] == pytest.approx(2.0 * 4)  # steps 0, 100, 200 and 300 (final), all at 2.0
    with pytest.raises(ValueError, match="seconds"):
        predict_share(-1.0, 10.0)


class SleepyProbe(ProbeCallback):
    """A probe whose measurement sleeps ``SLEEP_S`` seconds."""

    name = "sleepy"

    def measure(self, trainer, pl_module, model, step):
        time.sleep(SLEEP_S)
        return pd.DataFrame({"step": [step], "x": [1.0]}), {"sleepy/x": 1.0}


class CountingLM(L.LightningModule):
    """A bigram model that counts ``tokens_seen`` as LitGPT does (input tokens trained on)."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
        self.tokens_seen = 0
        self.flops_per_token = 1

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.tokens_seen += x[:, :-1].numel()
        loss = torch.nn.functional.cross_entropy(self.model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        time.sleep(SLEEP_S / 3)  # validation takes measurable time
        self.log("val/loss", torch.nn.functional.cross_entropy(self.model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Stopwatch(L.Callback):
    """Seconds from each ``on_train_batch_start`` to its ``on_train_batch_end``: the training steps themselves, a
    measurement of training time independent of the ThroughputLogger's (first in hook order: its batch end comes
    before the ThroughputLogger's mark and the probes)."""

    def __init__(self):
        self.spans: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.spans.append(time.perf_counter() - self._t0)


def _fit(tmp_path, probes: bool):
    from tests.test_probe_callback import Capture  # noqa: PLC0415  (the logger that keeps every call)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(0, 16, (96, 9))), batch_size=4)
    perf, log = ThroughputLogger(), Capture()
    callbacks = [Stopwatch(), perf]
    callbacks += [SleepyProbe(output_dir=str(tmp_path), every_n_steps=4, log_spaced=False)] if probes else []
    trainer = L.Trainer(
        max_steps=12,
        log_every_n_steps=2,
        val_check_interval=6,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        accelerator="cpu",
        devices=1,
        logger=log,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = CountingLM()
    trainer.fit(module, data, data)
    return perf, log, module, callbacks


@pytest.fixture(scope="module")
def sleepy_fit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acc")
    return tmp, *_fit(tmp, probes=True)


def test_train_probe_val_and_other_add_up_to_the_loop(sleepy_fit):
    _, perf, _, _, (watch, _, probe) = sleepy_fit
    acc = perf.accounting()
    assert acc["train"] > 0 and acc["val"] >= 2 * 2 * SLEEP_S / 3  # 2 in-loop validations x 2 batches; no sanity check
    # other (the remainder) is never negative: train, probe and validation seconds are each counted once in the loop
    assert acc["other"] >= -1e-9 and acc["end"] >= -1e-9 and acc["end"] <= acc["other"] + 1e-9
    # train holds every training step (timed on its own, by the Stopwatch) and probe time is not taken out twice
    assert len(watch.spans) == 12 and acc["train"] >= 0.99 * sum(watch.spans)
    # what is left (start-up, the end of fit) is small: below the sleeping probe's seconds, a fraction of the loop
    assert acc["other"] <= acc["probe"] and acc["other"] < acc["loop"] / 4
    assert probe.calls == 4 and acc["probe"] >= 4 * SLEEP_S  # steps 0, 4, 8, 12 (the last one final)
    assert acc["probe/sleepy"] == pytest.approx(acc["probe"]) == pytest.approx(probe.seconds)
    summary = perf.summary_metrics()
    assert summary["perf/probe_share"] == pytest.approx(acc["probe"] / acc["loop"])
    assert summary["perf/probe_share/sleepy"] == pytest.approx(summary["perf/probe_share"])
    assert summary["perf/tokens_per_sec"] > summary["perf/wall_tokens_per_sec"] > 0
    assert summary["perf/tokens_per_sec"] == pytest.approx(12 * 4 * 8 / acc["train"])


def test_windows_with_a_probe_call_log_training_throughput_above_wall_throughput(sleepy_fit):
    _, _, log, _, _ = sleepy_fit
    windows = {s: m for s, m in log.calls if "perf/tokens_per_sec" in m}
    assert sorted(windows) == [1, 3, 5, 7, 9, 11]  # Lightning's key: steps done - 1 (LitGPT logs its own step)
    for step, m in windows.items():  # the probes of steps 4 and 8 fall into the windows ending at steps 6 and 10
        if step in (5, 9):
            assert m["perf/tokens_per_sec"] > m["perf/wall_tokens_per_sec"]
        assert m["perf/tokens_per_sec"] >= m["perf/wall_tokens_per_sec"]


def test_timing_table_and_tokens_seen_on_records_and_scalars(sleepy_fit):
    tmp, _, log, module, (_, _, probe) = sleepy_fit
    timing = pd.read_parquet(tmp / "probes" / "timing.parquet")
    calls = timing[timing["kind"] != "setup"]
    assert calls["step"].tolist() == [0, 4, 8, 12] and calls["kind"].tolist() == ["call"] * 3 + ["final"]
    assert (calls["probe"] == "sleepy").all() and (calls["seconds"] >= SLEEP_S).all()
    assert calls["seconds"].sum() == pytest.approx(probe.seconds)
    records = pd.read_parquet(tmp / "probes" / "sleepy.parquet")
    assert records["train/tokens_seen"].tolist() == [0, 4 * 32, 8 * 32, 12 * 32] and module.tokens_seen == 12 * 32
    scalars = {s: m for s, m in log.calls if "sleepy/x" in m}
    assert {s: m["train/tokens_seen"] for s, m in scalars.items()} == {0: 0.0, 4: 128.0, 8: 256.0, 12: 384.0}


class WindowLM(CountingLM):
    """:class:`CountingLM` that keeps ``(global_step, tokens_seen)`` of each ``perf/tokens_per_sec`` window logged."""

    def __init__(self):
        super().__init__()
        self.windows: list[tuple[int, int]] = []

    def log_dict(self, dictionary, *args, **kwargs):
        if "perf/tokens_per_sec" in dictionary:
            self.windows.append((self.trainer.global_step, self.tokens_seen))
        return super().log_dict(dictionary, *args, **kwargs)


def test_gradient_accumulation_logs_one_throughput_window_per_logging_step():
    from tests.test_probe_callback import Capture  # noqa: PLC0415

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(0, 16, (64, 9))), batch_size=4)
    log, module = Capture(), WindowLM()
    trainer = L.Trainer(
        max_steps=6,
        accumulate_grad_batches=2,
        log_every_n_steps=2,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=log,
        callbacks=[ThroughputLogger()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    # one window per logging optimizer step (2, 4, 6), each of 2 steps x 2 micro-batches x 32 tokens; none at the
    # micro-batch before the first step nor at the second micro-batch of a logging step
    assert module.windows == [(2, 128), (4, 256), (6, 384)]
    assert [s for s, m in log.calls if "perf/tokens_per_sec" in m] == [1, 3, 5]


def test_tables_written_beside_the_records_carry_tokens_seen(tmp_path, monkeypatch):
    """The write sites of the knowledge, density and modularity callbacks' own tables (their measurements faked:
    the tables' contents are tested in their own files): each row carries ``train/tokens_seen`` of its call."""
    import densitylab.callbacks.modularity as M  # noqa: PLC0415
    from densitylab.callbacks import DensityCallback, KnowledgeCallback, ModularityCallback  # noqa: PLC0415
    from tests.test_probe_callback import fake_trainer  # noqa: PLC0415

    step_df = lambda step: pd.DataFrame({"step": [step], "x": [1.0]})  # noqa: E731
    knowledge = KnowledgeCallback(output_dir=str(tmp_path), seed=0)
    density = DensityCallback(output_dir=str(tmp_path), seed=0, panel={}, endpoints={}, regression=False)
    modularity = ModularityCallback(output_dir=str(tmp_path), seed=0)
    monkeypatch.setattr(M, "v2_record", lambda step, v2: step_df(step).assign(**dict.fromkeys(M.V2_LOGGED, 0.5)))

    def measure_knowledge(trainer, pl_module, model, step):
        knowledge._pending = (step_df(step), step_df(step))  # the curve and hallucination rows
        return step_df(step), {}

    def measure_density(trainer, pl_module, model, step):
        density._units, density._positions = step_df(step), step_df(step)
        return step_df(step), {}

    def measure_modularity(trainer, pl_module, model, step):
        modularity._add_v2(None, step)
        return step_df(step), {}

    for cb, measure in ((knowledge, measure_knowledge), (density, measure_density), (modularity, measure_modularity)):
        monkeypatch.setattr(cb, "before_measure", lambda *a: None)
        monkeypatch.setattr(cb, "measure", measure)
    trainer, module = fake_trainer(), torch.nn.Module()
    module.model, module.tokens_seen = torch.nn.Linear(3, 2), 0
    for step in (0, 4):
        trainer.global_step, module.tokens_seen = step, step * 32
        for cb in (knowledge, density, modularity):
            cb.probe(trainer, module)
    density.on_fit_end(trainer, module)  # the last call's positions
    probes = tmp_path / "probes"
    for table in ("knowledge_curve", "hallucination", "units", "modularity_v2"):
        t = pd.read_parquet(probes / f"{table}.parquet")
        assert t["step"].tolist() == [0, 4] and t["train/tokens_seen"].tolist() == [0, 128], table
    assert pd.read_parquet(probes / "density_positions.parquet")["train/tokens_seen"].tolist() == [128]
