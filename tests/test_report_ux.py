"""Reports that do not mislead (issue 19, item 6), from tiny fake run folders (no training): ``report compare``
plots final numbers against a config key only when it is the one that varies (else it names the varying keys, or
takes ``--by``); legends name runs by their run name (`` [folder]`` only on a collision); every axis is labelled;
the modularity plot has step ticks; the density-vs-familiarity legend matches what is drawn; a text file that
becomes one document gets a one-line warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_report_density import density_frame, units_frame

from densitylab.report import common
from densitylab.report import compare as rc
from densitylab.report import density as rd
from densitylab.report import memorization as rmem
from densitylab.report import modularity as rmod

STEPS = (0, 1, 4, 16, 40)


def fake_run(
    run: Path,
    seed: int = 0,
    n_layer: int = 2,
    lr: float = 1e-3,
    experiment: str = "smoke",
    model: str = "tiny",
    activation: str = "relu",
) -> Path:
    """A run folder as train.py leaves it, without training: ``.hydra/config.yaml`` (interpolations as written),
    ``.hydra/hydra.yaml`` (the group choices), ``metrics.csv``, ``summary.json`` and the probe tables the reports
    read (density, units, modularity v1 + v2, memorization)."""
    (run / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "experiment_name": experiment,
        "run_name": None,
        "model": {"net": {"n_layer": n_layer, "n_embd": 64, "activation": activation}, "optimizer": {"lr": lr}},
        "callbacks": {"density": {"seed": "${seed}"}},
        "paths": {"output_dir": str(run)},
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    hydra = {"hydra": {"mode": "RUN", "job": {"num": "???"}, "runtime": {"choices": {"model": model}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    loss = 3.0 - 0.1 * n_layer - lr
    metrics = pd.DataFrame(
        {
            "step": list(STEPS),
            "train/loss": [4.0, 3.8, 3.5, 3.2, loss + 0.1],
            "val/loss": [np.nan, np.nan, np.nan, 3.3, loss],
            "modularity/score_v2": [0.4, 0.42, 0.45, 0.5, 0.55],
            "density/L0/name_last/slope": [0.0, 0.001, 0.002, 0.003, 0.004],
        }
    )
    metrics.to_csv(run / "metrics.csv", index=False)
    summary = {"status": "completed", "experiment": experiment, "global_step": 40, "val/loss": loss}
    summary.update({"modularity/score_v2": 0.55, "density/L0/name_last/slope": 0.004})
    (run / "summary.json").write_text(json.dumps(summary))
    probes = run / "probes"
    probes.mkdir()
    density_frame(steps=STEPS).to_parquet(probes / "density.parquet", index=False)
    units_frame(steps=STEPS).to_parquet(probes / "units.parquet", index=False)
    rng = np.random.default_rng(seed)
    rows = [
        dict(step=s, component=f"L0.H{i}", kind="head", layer=0, index=i, task=t, delta_loss=float(rng.random()))
        for s in (-1, *STEPS)
        for i in range(2)
        for t in ("a", "b", "c")
    ]
    pd.DataFrame(rows).to_parquet(probes / "modularity.parquet", index=False)
    v2 = pd.DataFrame({"step": [-1, 0, 40], "score_v2": [0.4, 0.4, 0.55], "null_mean": 0.45, "null_lo": 0.4,
                       "null_hi": 0.5, "excess": 0.1, "p_perm": 0.01})  # fmt: skip
    v2.to_parquet(probes / "modularity_v2.parquet", index=False)
    mem = [
        dict(step=s, canary_id=c, repetitions=r, mem_bits=float(s * r), max_bits=504.0, extractable=s > 16)
        for s in STEPS
        for c, r in enumerate((1, 1, 4, 4))
    ]
    pd.DataFrame(mem).to_parquet(probes / "memorization.parquet", index=False)
    return run


@pytest.fixture
def figures(monkeypatch):
    """The figures the reports save, kept open: saved path (str) -> Figure."""
    figs: dict[str, object] = {}

    def keep(fig, path):
        figs[str(path)] = fig
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=20)  # written (the compare page embeds it) and drawn (tick labels known)
        return Path(path)

    for module in (rc, rd, rmod, rmem):
        monkeypatch.setattr(module, "save_figure", keep)
    yield figs
    for f in figs.values():
        common.pyplot().close(f)


def _labelled(fig) -> list[tuple[str, str, str]]:
    """(title, xlabel, ylabel) of each visible axes of ``fig`` that is not a colour bar."""
    return [
        (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
        for ax in fig.axes
        if ax.get_visible() and ax.get_label() != "<colorbar>"
    ]


def assert_every_axis_labelled(fig) -> None:
    for title, x, y in _labelled(fig):
        assert x.strip() and y.strip(), f"axes {title!r}: xlabel {x!r}, ylabel {y!r}"


# ------------------------------------------------------------------------------------------- run names
def test_run_name_is_experiment_model_seed_from_the_folder_and_collisions_get_the_folder(tmp_path):
    a = fake_run(tmp_path / "2024-01-01_10-00-00-000000", seed=0)
    b = fake_run(tmp_path / "2024-01-01_11-00-00-000000", seed=1)
    c = fake_run(tmp_path / "2024-01-02_09-00-00-000000", seed=1, lr=0.01)
    assert common.run_name(a) == "smoke-tiny-s0"
    assert common.run_labels([a, b, c]) == [
        "smoke-tiny-s0",
        "smoke-tiny-s1 [2024-01-01_11-00-00-000000]",
        "smoke-tiny-s1 [2024-01-02_09-00-00-000000]",
    ]
    summary = json.loads((b / "summary.json").read_text())
    (b / "summary.json").write_text(json.dumps({**summary, "run_name": "my-run"}))  # the name the run used
    assert common.run_labels([a, b, c]) == ["smoke-tiny-s0", "my-run", "smoke-tiny-s1"]
    hydra = yaml.safe_load((c / ".hydra" / "hydra.yaml").read_text())
    hydra["hydra"].update(mode="MULTIRUN", job={"num": 3})
    (c / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    assert common.run_name(c) == "smoke-tiny-s1-3"  # as the W&B run of a multirun job is named
    bare = tmp_path / "bare"
    bare.mkdir()
    assert common.run_name(bare) == "bare"  # no config: the folder's name


# ------------------------------------------------------------------------------------------- compare
def test_compare_plots_against_the_one_varying_key_seed_being_a_replicate(tmp_path, figures, capsys):
    for i, (seed, n_layer) in enumerate([(0, 2), (1, 2), (0, 4), (1, 4)]):
        fake_run(tmp_path / "multi" / str(i), seed=seed, n_layer=n_layer)
    comparison = rc.compare_runs([tmp_path / "multi"])
    assert comparison.varying == ["model.net.n_layer"] and comparison.replicates == ["seed"]
    page = rc.compare_report([tmp_path / "multi"], tmp_path / "out")
    assert "the one config key that varies" in capsys.readouterr().out
    by = figures[str(tmp_path / "out" / "compare_by.png")]
    assert {x for _, x, _ in _labelled(by)} == {"model.net.n_layer"}
    assert {y for _, _, y in _labelled(by)} == {"val/loss (nats/token)", "modularity score_v2 (0-1)",
                                                "density slope (active_frac_live per doubling)"}  # fmt: skip
    final = pd.read_csv(tmp_path / "out" / "final.csv", index_col=0)
    assert list(final.index) == ["smoke-tiny-s0 [0]", "smoke-tiny-s1 [1]", "smoke-tiny-s0 [2]", "smoke-tiny-s1 [3]"]
    assert final["folder"].astype(str).tolist() == ["0", "1", "2", "3"]
    text = page.read_text()
    assert "<code>smoke-tiny-s0 [0]</code> (<code>0</code>)" in text and "Final numbers against" in text


def test_every_seed_key_is_a_replicate_and_a_data_seed_sweep_plots_against_nothing(tmp_path, figures, capsys):
    assert all(map(rc.is_replicate_key, ["seed", "data.source.seed", "data.rank_seed", "callbacks.density.seed"]))
    assert not any(map(rc.is_replicate_key, ["model.net.n_layer", "seeds_per_arm", "data.source.seeded"]))
    for i in range(3):  # three corpora drawn by data.source.seed, one configuration
        run = fake_run(tmp_path / "data_seeds" / str(i))
        cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        cfg["data"] = {"source": {"seed": i}}
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    comparison = rc.compare_runs([tmp_path / "data_seeds"])
    assert comparison.varying == [] and comparison.replicates == ["data.source.seed"]
    rc.compare_report([tmp_path / "data_seeds"], tmp_path / "out")
    assert not (tmp_path / "out" / "compare_by.png").exists()


def test_compare_with_several_varying_keys_names_them_and_plots_none_unless_by(tmp_path, figures, capsys):
    fake_run(tmp_path / "m" / "a", seed=0, n_layer=2, lr=1e-3)
    fake_run(tmp_path / "m" / "b", seed=1, n_layer=4, lr=1e-2, activation="gelu")
    rc.compare_report([tmp_path / "m"], tmp_path / "out")
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line == (
        "3 config keys vary across the runs (model.net.activation, model.net.n_layer, model.optimizer.lr): no plot "
        "against one of them; name one with --by KEY"
    )
    assert not (tmp_path / "out" / "compare_by.png").exists()
    # legends: the run names, no collision, no folder
    loss = figures[str(tmp_path / "out" / "compare_loss.png")]
    assert [t.get_text() for t in loss.axes[0].get_legend().get_texts()] == ["smoke-tiny-s0", "smoke-tiny-s1"]
    rc.compare_report([tmp_path / "m"], tmp_path / "out", by="model.net.activation")  # categorical x
    by = figures[str(tmp_path / "out" / "compare_by.png")]
    assert [t.get_text() for t in by.axes[0].get_xticklabels()] == ["relu", "gelu"]


def test_compare_by_an_unknown_key_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    from densitylab.report.__main__ import main

    fake_run(tmp_path / "m" / "a", n_layer=2)
    fake_run(tmp_path / "m" / "b", n_layer=4)
    assert main(["compare", str(tmp_path / "m"), "--by", "model.net.n_layers"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --by 'model.net.n_layers': expected a config key that varies across these runs, one of "
                   "['model.net.n_layer']"]  # fmt: skip
    assert not (tmp_path / "m" / "compare").exists()
    with pytest.raises(ValueError, match="none \\(the runs share one config\\)"):
        rc.choose_by(rc.compare_runs([tmp_path / "m" / "a"]), "seed")
    one = rc.compare_runs([tmp_path / "m" / "a", tmp_path / "m" / "b"])
    with pytest.raises(ValueError, match="'seed'"):
        rc.choose_by(one, "seed")


def test_compare_figures_label_every_axis(tmp_path, figures):
    fake_run(tmp_path / "m" / "a", n_layer=2)
    fake_run(tmp_path / "m" / "b", n_layer=4)
    rc.compare_report([tmp_path / "m"], tmp_path / "out", echo=None)
    names = {Path(p).name for p in figures}
    assert {"compare_loss.png", "compare_density_slopes.png", "compare_modularity.png", "compare_by.png"} <= names
    for fig in figures.values():
        assert_every_axis_labelled(fig)
    modularity = figures[str(tmp_path / "out" / "compare_modularity.png")].axes[0]
    assert modularity.get_xlabel() == "training step" and modularity.get_ylabel() == "score_v2 (0-1)"


# ------------------------------------------------------------------------------------------- run plots
def test_run_plots_label_every_axis_and_modularity_has_step_ticks(tmp_path, figures):
    run = fake_run(tmp_path / "run")
    rmod.plot_modularity(run)
    rmem.plot_memorization(run)
    rd.density_report([run])
    for fig in figures.values():
        assert_every_axis_labelled(fig)
    mod = figures[str(run / "plots" / "modularity_over_training.png")]
    for ax in mod.axes:
        assert ax.get_xlabel() == "training step"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "4", "16", "40"]  # the probe steps
    over = figures[str(run / "plots" / "density_over_training.png")]
    assert [ax.get_ylabel() for ax in over.axes] == ["fraction of MLP units"] * 2
    assert [t.get_text() for t in over.axes[0].get_xticklabels()] == ["0", "1", "4", "16", "40"]


def test_step_axis_ticks_at_most_max_ticks_steps_first_and_last_included():
    plt = common.pyplot()
    fig, ax = plt.subplots()
    steps = [0, 1, 4, 16, 64, *range(150, 3001, 150)]
    ax.plot(steps, np.ones(len(steps)))
    common.step_axis(ax, steps, max_ticks=8)
    ticks = list(ax.get_xticks())
    assert len(ticks) <= 8 and ticks[0] == 0 and ticks[-1] == 3000 and ax.get_xlabel() == "training step"
    plt.close(fig)


def test_vs_familiarity_legend_matches_what_is_drawn_and_names_the_measure(tmp_path, figures):
    df = density_frame(steps=(0, 10), insufficient=frozenset({"64+"}), n_entities={"64+": 7})
    rd.plot_vs_familiarity(rd.aggregate_runs([df]), tmp_path / "f.png", note="95% CI, CR1 over persons")
    fig = figures[str(tmp_path / "f.png")]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [
        "panel mean (95% CI, CR1 over persons)",
        "insufficient: < 10 persons in the bin (n<10) or in bin 0 (ref n<10)",
    ]
    title = fig._suptitle.get_text()
    assert "distinct_docs (documents about the person trained at least once)" in title
    assert "people with no training document" in title
    assert_every_axis_labelled(fig)
    # no insufficient bin drawn: no such legend entry; text data: mentions, and the reference set named
    ok = density_frame(steps=(0,)).replace({"exposure": {"distinct_docs": "mentions"}})
    rd.plot_vs_familiarity(rd.aggregate_runs([ok]), tmp_path / "t.png", note="95% CI")
    fig = figures[str(tmp_path / "t.png")]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["panel mean (95% CI)"]
    title = fig._suptitle.get_text()
    assert "mentions (name mentions trained on)" in title and "entities never mentioned in training" in title
    assert fig.axes[0].get_xlabel() == "mentions bin (0: reference)"


def test_heatmaps_label_axes_and_take_a_fixed_colour_scale():
    from densitylab.probes.modularity import Component

    fig = rd.heatmap_by_bin(density_frame(steps=(0,)), 0, vmin=0.0, vmax=1.0)
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    assert fig.axes[0].get_ylabel() == "layer" and fig.axes[1].get_ylabel() == "active_frac_live (panel mean)"
    common.pyplot().close(fig)
    fig = rmod.ablation_heatmap([Component("head", 0, 0), Component("mlp", 0, 0)], np.ones((2, 2)), ["a", "b"], 3, 2.5)
    assert fig.axes[0].images[0].get_clim() == (-2.5, 2.5)
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("task", "ablated component")
    common.pyplot().close(fig)


# ------------------------------------------------------------------------------------------- data sources
def test_a_text_file_that_becomes_one_document_gets_a_one_line_warning(tmp_path, caplog):
    from densitylab.data.sources import SINGLE_DOCUMENT_MIN_LINES, TextSource, warn_single_documents

    verses = tmp_path / "verses.txt"
    verses.write_text("".join(f"In the beginning verse {i}.\n" for i in range(SINGLE_DOCUMENT_MIN_LINES)))
    prose = tmp_path / "prose.txt"
    prose.write_text("".join(f"Paragraph {i}, line one.\nline two.\n\n" for i in range(20)))
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\nthree\n")
    with caplog.at_level(logging.WARNING, logger="densitylab.data.sources"):
        assert warn_single_documents(TextSource(files=[str(verses), str(prose), str(short)])) == [str(verses)]
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "verses.txt" in message and "data.source.sample_by=line" in message
    assert f"{SINGLE_DOCUMENT_MIN_LINES} lines" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="densitylab.data.sources"):
        assert warn_single_documents(TextSource(files=str(verses), sample_by="line")) == []
        assert warn_single_documents(TextSource(files=str(prose))) == []
    assert not caplog.records
