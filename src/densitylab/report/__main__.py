"""``python -m densitylab.report [density|knowledge|capacity|compare|study|priming] RUN_DIR [RUN_DIR ...] [--out DIR]``

``density`` (the default): density plots from one run folder (written to ``RUN_DIR/plots/``) or, from several run
folders or a
Hydra multirun folder (seeds), mean ± 95% CI across runs (written to ``--out``, default
``<common parent>/report``). Prints, per layer and endpoint role (``name_last``, ``pre_value``), the final slope of
``active_frac_live`` per doubling of exposure and the ``64+`` vs ``0`` bin difference with CIs (persons are the unit:
CR1 within a run, t across runs; bins with < 10 persons are insufficient).

``knowledge``: per run folder, the knowledge probe's plots (``knowledge_vs_exposure.png``,
``knowledge_over_training.png``, ``hallucination_auroc.png``, in ``RUN_DIR/plots/`` or ``--out``) and its
headline: accuracy per exposure bin with person-clustered CIs beside chance and the popularity prior, the GLM
slope, the confident-error rate on zero-exposure people, the leak rate against its chance rate, the AUROCs.

``capacity``: from an ``experiment=capacity`` multirun folder (or its run folders), each model's
capacity (plateau of memorized bits over dataset size) and bits per parameter α with a 95% CI
across models, next to Morris et al.'s 3.83 (fp32) / 3.51 (bf16); writes
``memorized_vs_dataset.png``, ``capacity_vs_params.png``, ``capacity.json`` and CSVs to ``--out``
(default ``<first folder>/report``).

``compare``: one self-contained HTML page (``compare.html``) plus PNGs comparing any runs: loss
curves, density slopes per layer and role, modularity and memorization over training, final numbers, the
config values that differ, and final numbers against a varying config value (``--by KEY``, found
automatically when exactly one numeric value varies). Default output ``<common parent>/compare``.

``study``: from an ``experiment=familiarity_study`` multirun folder, the pre-registered claims' verdicts
(``verdicts.md``, ``verdicts.csv``, also logged to W&B as a table unless ``--no-wandb``), the within-person estimates
per layer, role and metric, the pairwise (per pair of corpora) estimates and the controls, in ``--out`` (default
``<multirun>/report/study``). ``--capacity DIR`` and ``--depth-width DIR`` add claims 8 and 9 from those multiruns.

``priming``: per ``experiment=priming`` run folder, the end analysis again from the folder alone (the hinge fit, ρ and
its verdict, ρ per k, the controls' null, the control check, density at insertion): tables and
``priming_vs_pbefore.png`` in ``--out`` (default ``RUN_DIR/report/priming``), the headline printed.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the report CLI; returns the exit status (2 with one ``error:`` line when no run is found)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "density"
    if argv and argv[0] in ("density", "knowledge", "capacity", "compare", "study", "priming"):
        command, argv = argv[0], argv[1:]
    ap = argparse.ArgumentParser(
        prog="python -m densitylab.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="run folders or multirun folders")
    ap.add_argument("--out", help="output folder (default: RUN/plots for one run, else <common parent>/report)")
    if command == "compare":
        ap.add_argument("--by", help="config key to plot final numbers against (e.g. model.net.n_layer)")
    if command == "study":
        ap.add_argument("--capacity", nargs="+", help="an experiment=capacity multirun folder (claim 8)")
        ap.add_argument("--depth-width", nargs="+", help="an experiment=depth_width multirun folder (claim 9)")
        ap.add_argument("--no-wandb", action="store_true", help="do not log the verdict table to W&B")
    args = ap.parse_args(argv)
    if command == "study":
        return _study(args)
    if command == "capacity":
        return _capacity(args)
    if command == "compare":
        return _compare(args)
    if command == "knowledge":
        return _knowledge(args)
    if command == "priming":
        return _priming(args)
    from densitylab.report.density import density_report, format_table

    try:
        out, table = density_report(args.runs, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/density_over_training.png, {out}/density_vs_familiarity.png, {out}/density_headline.csv")
    print(format_table(table))
    return 0


def _run_folders(paths: list[str], table: str) -> list:
    """The run folders under ``paths`` (run or multirun folders) that hold ``table`` (e.g.
    ``probes/priming_log.parquet``), each folder's in sorted order.

    Raises:
        FileNotFoundError: for a path that does not exist, or when no folder holds the table.
    """
    from pathlib import Path

    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder or a multirun folder")
        runs += sorted(f.parent.parent for f in p.rglob(table))
    if not runs:
        raise FileNotFoundError(f"no run folder with {table} under {paths}")
    return runs


def _knowledge(args) -> int:
    from pathlib import Path

    from densitylab.report.knowledge import knowledge_headline, knowledge_report

    try:
        runs = _run_folders(args.runs, "probes/knowledge_curve.parquet")
        for run in runs:
            out = None if args.out is None or len(runs) == 1 else Path(args.out) / Path(run).name
            paths = knowledge_report(run, args.out if len(runs) == 1 else out)
            print(f"{run}: wrote " + ", ".join(str(p) for p in paths))
            print(knowledge_headline(run))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _priming(args) -> int:
    from pathlib import Path

    from densitylab.report.priming import format_priming, priming_report

    try:
        runs = _run_folders(args.runs, "probes/priming_log.parquet")
        for run in runs:
            out = None if args.out is None else (Path(args.out) if len(runs) == 1 else Path(args.out) / run.name)
            out, stats = priming_report(run, out)
            print(f"{run}: wrote {out}/priming_threshold.parquet, {out}/priming_vs_pbefore.png")
            print(format_priming(stats))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _compare(args) -> int:
    from densitylab.report.compare import compare_report

    try:
        page = compare_report(args.runs, args.out, args.by)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {page} (and the PNGs beside it)")
    return 0


def _study(args) -> int:
    from densitylab.report.study import format_verdicts, study_report

    try:
        out, table = study_report(args.runs, args.out, args.capacity, args.depth_width, wandb_table=not args.no_wandb)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/verdicts.md, {out}/verdicts.csv, {out}/within_person.csv, {out}/pairwise.csv")
    print(format_verdicts(table))
    return 0


def _capacity(args) -> int:
    from densitylab.report.capacity import capacity_report, format_result

    try:
        out, result = capacity_report(args.runs, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/memorized_vs_dataset.png, {out}/capacity_vs_params.png, {out}/capacity.json")
    print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
