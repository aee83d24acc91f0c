"""``densitylab``: the command-line tools around a run folder (the console script of ``[project.scripts]``).

``densitylab report COMMAND RUN_DIR ...`` (plots and headline tables, = ``python -m densitylab.report``),
``densitylab export RUN_DIR ...`` (a transformers folder), ``densitylab probe RUN_DIR ...`` (probes again over the
kept checkpoints). Each subcommand's module provides ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when its subcommand runs, so ``densitylab --help`` imports neither torch nor pandas. Training is
``python train.py`` (Hydra), not a subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys

#: subcommand -> (module providing ``add_arguments``/``run``, one-line help)
SUBCOMMANDS = {
    "report": ("densitylab.report.__main__", "plots and headline tables from run folders"),
    "export": (
        "densitylab.export",
        "write a transformers GPT2LMHeadModel folder (and tokenizer) from a run's checkpoint",
    ),
    "probe": (
        "densitylab.reprobe",
        "re-run probes over the kept checkpoints of a finished run (checkpoints.keep=probe_steps)",
    ),
}

EPILOG = """\
training: python train.py [overrides] (see python train.py --help)
help on one command: densitylab COMMAND --help (e.g. densitylab report density --help)"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written, lines up to 120 characters (or the terminal's width), and room for the
    subcommands' names before their help."""

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size((120, 24)).columns, 120) - 2
        super().__init__(prog, max_help_position=24, width=width)
        self._action_max_length = 18  # argparse does not count subcommands' indentation: names would wrap


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("densitylab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from densitylab import __version__

        return __version__


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked (importlib.metadata is not free)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _load(command: str):
    """The module of ``command`` with its ``add_arguments`` and ``run``; raises ImportError (one line) when it is
    missing or incomplete."""
    name = SUBCOMMANDS[command][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == name or name.startswith(e.name + ".")):
            raise ImportError(f"{name} is not available") from e
        raise ImportError(f"{name} is not available: {e}") from e  # a dependency of it is missing
    missing = [f for f in ("add_arguments", "run") if not callable(getattr(module, f, None))]
    if missing:
        raise ImportError(f"{name} is not available: it has no {' or '.join(missing)}")
    return module


def build_parser(command: str | None = None, module=None) -> argparse.ArgumentParser:
    """The ``densitylab`` parser: every subcommand listed, only ``command``'s options added (from ``module``)."""
    ap = argparse.ArgumentParser(
        prog="densitylab",
        description="densitylab: the tools around a run folder (reports, export, probes again).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--version", action=_VersionAction, help="show the installed densitylab version and exit")
    commands = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name, (_, help_line) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_line, description=help_line, formatter_class=HelpFormatter)
        if name == command and module is not None:
            if name == "report":
                sub.description, sub.epilog = f"{help_line} (= python -m densitylab.report).", module.__doc__
            module.add_arguments(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run ``densitylab``; returns the exit status (2 with one ``error:`` line for a bad command line or when a
    subcommand's module is not available). ``--help`` and argparse's errors exit through SystemExit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    module = None
    if command is not None:
        try:
            module = _load(command)
        except ImportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if command == "report":  # `densitylab report RUN_DIR ...` means `density`, as for python -m densitylab.report
            argv = [command, *module.with_default_command(argv[1:])]
    args = build_parser(command, module).parse_args(argv)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
