"""``python -m densitylab.report [density|knowledge|capacity|compare|study|priming] RUN_DIR [RUN_DIR ...] [--out DIR]``

``density`` (the default): density plots from one run folder (written to ``RUN_DIR/plots/``) or, from several run
folders or a Hydra multirun folder (seeds), mean ± 95% CI across runs (written to ``--out``, default
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

from densitylab.cli import HelpFormatter

#: The report's commands, each with its one-line help; the first (``density``) is the default.
COMMANDS = {
    "density": "density vs exposure plots and the slope/bin headline, one run or mean ± 95%% CI across seeds",
    "knowledge": "the knowledge probe's plots and headline (accuracy per exposure bin, AUROCs), per run folder",
    "capacity": "memorized bits vs dataset size and bits per parameter, from an experiment=capacity multirun",
    "compare": "one self-contained HTML page (compare.html) plus PNGs comparing any runs",
    "study": "the pre-registered claims' verdicts, from an experiment=familiarity_study multirun",
    "priming": "the priming analysis (hinge fit, rho, controls) again, per experiment=priming run folder",
}
DEFAULT_COMMAND = "density"

_OUT_DEFAULTS = {
    "density": "RUN_DIR/plots for one run, else <common parent>/report",
    "knowledge": "RUN_DIR/plots; with several runs, OUT/<run name>",
    "capacity": "<first folder>/report",
    "compare": "<common parent>/compare",
    "study": "<multirun>/report/study",
    "priming": "RUN_DIR/report/priming; with several runs, OUT/<run name>",
}


def _command_docs() -> dict[str, str]:
    """Each command's paragraph of the module docstring (the one that starts with ````command````), for its
    ``--help``."""
    docs: dict[str, str] = {}
    for para in (__doc__ or "").split("\n\n"):
        for name in COMMANDS:
            if para.startswith(f"``{name}``"):
                docs[name] = para.strip()
    return docs


def with_default_command(argv: list[str]) -> list[str]:
    """``argv`` with ``density`` put first when it names no command (``RUN_DIR ...`` alone means ``density``);
    ``-h``/``--help`` first is left as it is (the list of commands)."""
    argv = list(argv)
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        return argv
    return [DEFAULT_COMMAND, *argv]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report's commands to ``parser`` as subcommands (``args.report_command``), each with its options:
    ``runs`` and ``--out``; ``compare`` adds ``--by``; ``study`` adds ``--capacity``, ``--depth-width`` and
    ``--no-wandb``. :func:`run` runs the parsed command."""
    docs = _command_docs()
    commands = parser.add_subparsers(
        dest="report_command",
        metavar="COMMAND",
        title="commands",
        description=f"RUN_DIR ... with no command means {DEFAULT_COMMAND}",
        required=True,
    )
    for name, help_line in COMMANDS.items():
        ap = commands.add_parser(
            name,
            help=help_line,
            description=docs.get(name, help_line),
            formatter_class=HelpFormatter,
        )
        ap.add_argument("runs", nargs="+", help="run folders or multirun folders")
        ap.add_argument("--out", help=f"output folder (default: {_OUT_DEFAULTS[name]})")
        if name == "compare":
            ap.add_argument("--by", help="config key to plot final numbers against (e.g. model.net.n_layer)")
        if name == "study":
            ap.add_argument("--capacity", nargs="+", help="an experiment=capacity multirun folder (claim 8)")
            ap.add_argument("--depth-width", nargs="+", help="an experiment=depth_width multirun folder (claim 9)")
            ap.add_argument("--no-wandb", action="store_true", help="do not log the verdict table to W&B")


def run(args: argparse.Namespace) -> int:
    """Run the parsed report command (``args.report_command``, default ``density``); returns the exit status (2
    with one ``error:`` line when no run is found)."""
    command = getattr(args, "report_command", None) or DEFAULT_COMMAND
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
    return _density(args)


def build_parser(prog: str = "python -m densitylab.report") -> argparse.ArgumentParser:
    """The report's own parser (``python -m densitylab.report``): the commands' list, the module docstring after
    it."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Plots and headline tables from run folders (no W&B needed).",
        epilog=__doc__,
        formatter_class=HelpFormatter,
    )
    add_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the report CLI; returns the exit status (2 with one ``error:`` line when no run is found)."""
    argv = with_default_command(sys.argv[1:] if argv is None else argv)
    return run(build_parser().parse_args(argv))


def _density(args) -> int:
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

    from densitylab.runfolder import is_remeasurement

    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder or a multirun folder")
        runs += sorted(f.parent.parent for f in p.rglob(table) if not is_remeasurement(f.parent.parent, p))
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
