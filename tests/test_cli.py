"""The command lines' help and parsing: ``densitylab`` (densitylab.cli), ``python -m densitylab.report``, ``make help``
and ``python train.py --help`` (Hydra's app help from conf/config.yaml). Fast: nothing here trains or writes a
report."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_command

from densitylab import cli
from densitylab.report import __main__ as report_cli

REPORT_COMMANDS = ["density", "knowledge", "capacity", "compare", "study", "priming"]
#: the examples `python train.py --help` shows (README's quick start and conf/experiment/)
TRAIN_EXAMPLES = [
    "python train.py ",
    "python train.py experiment=smoke",
    "python train.py data=text data.source.files=my.txt",
    "python train.py -m seed=0,1,2",
    "python train.py experiment=priming",
]


def _python(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python *args`` with help texts formatted 120 columns wide (one line per subcommand)."""
    return run_command([sys.executable, *args], timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "120"})


def _command_lines(help_text: str) -> dict[str, str]:
    """``{name: one-line help}`` of the subcommands listed in an argparse help text."""
    return dict(re.findall(r"^ {4}(\S+) +(\S.*)$", help_text, flags=re.M))


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # help texts one line per subcommand


def _exit_code(argv: list[str], main=cli.main) -> int:
    """``main(argv)``'s status, whether returned or raised by argparse (``--help``, a bad command line)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# ----------------------------------------------------------------------------- densitylab
def test_densitylab_help_lists_report_export_probe_with_one_line_each():
    proc = _python("-m", "densitylab.cli", "--help")
    assert proc.returncode == 0, proc.stderr
    commands = _command_lines(proc.stdout)
    assert list(commands) == ["report", "export", "probe"], proc.stdout
    assert commands["report"] == "plots and headline tables from run folders"
    assert commands["export"] == "write a transformers GPT2LMHeadModel folder (and tokenizer) from a run's checkpoint"
    assert commands["probe"] == (
        "re-run probes over the kept checkpoints of a finished run (checkpoints.keep=probe_steps)"
    )
    assert "training: python train.py [overrides] (see python train.py --help)" in proc.stdout
    assert proc.stdout.startswith("usage: densitylab ")


def test_densitylab_main_help_exits_0(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(_command_lines(out)) == {"report", "export", "probe"}, out


def test_densitylab_version(capsys):
    from importlib.metadata import version

    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"densitylab {version('densitylab')}"


def test_densitylab_help_imports_neither_torch_nor_pandas():
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from densitylab.cli import main
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                main(["--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
        print(",".join(m for m in ("torch", "lightning", "pandas", "hydra") if m in sys.modules))
        """
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"densitylab --help imported {proc.stdout.strip()}"


def test_console_script_runs():
    script = Path(sys.executable).parent / "densitylab"
    if not script.is_file():
        pytest.skip(f"no {script}: pip install -e . installs the densitylab console script")
    proc = run_command([str(script), "--help"], timeout=60, cwd=REPO)
    assert proc.returncode == 0 and "report" in proc.stdout, proc.stderr


@pytest.mark.parametrize("argv", [["bogus"], [], ["report", "--bogus-flag", "x"], ["--bogus-flag"]])
def test_densitylab_bad_command_line_exits_2(argv, capsys):
    assert _exit_code(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_densitylab_report_help_lists_the_report_commands(capsys):
    assert _exit_code(["report", "--help"]) == 0
    out = capsys.readouterr().out
    assert list(_command_lines(out)) == REPORT_COMMANDS, out
    assert out.startswith("usage: densitylab report ")


@pytest.mark.parametrize("command", REPORT_COMMANDS)
def test_densitylab_report_command_help(command, capsys):
    assert _exit_code(["report", command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: densitylab report {command} ") and "--out" in out, out


@pytest.mark.parametrize("command", ["export", "probe"])
def test_export_and_probe_are_listed_and_their_help_works_when_available(command, capsys):
    module = cli.SUBCOMMANDS[command][0]
    assert _exit_code(["--help"]) == 0 and command in _command_lines(capsys.readouterr().out)
    if importlib.util.find_spec(module) is None:
        assert cli.main([command, "--help"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {module} is not available"
    else:
        assert _exit_code([command, "--help"]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith(f"usage: densitylab {command}")


def test_a_subcommand_module_is_loaded_lazily_and_its_run_status_returned(tmp_path, monkeypatch, capsys):
    """cli.main imports only the chosen subcommand's module, adds its options and returns what its run returns;
    a missing or incomplete module (or a missing dependency of it) is one ``error:`` line and status 2."""
    (tmp_path / "dl_fake_export.py").write_text(
        "def add_arguments(parser):\n"
        "    parser.add_argument('run_dir')\n"
        "    parser.add_argument('--out')\n"
        "def run(args):\n"
        "    print(args.command, args.run_dir, args.out)\n"
        "    return 3\n"
    )
    (tmp_path / "dl_fake_needs_dep.py").write_text("import dl_no_such_dependency\n")
    (tmp_path / "dl_fake_no_run.py").write_text("def add_arguments(parser):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    help_line = cli.SUBCOMMANDS["export"][1]

    for name in ("dl_fake_export", "dl_fake_needs_dep", "dl_fake_no_run"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh here, dropped again after the test

    monkeypatch.setitem(cli.SUBCOMMANDS, "export", ("dl_fake_export", help_line))
    assert _exit_code(["--help"]) == 0 and "export" in capsys.readouterr().out
    assert "dl_fake_export" not in sys.modules  # listing the subcommands imports none of them
    assert cli.main(["export", "RUN", "--out", "OUT"]) == 3
    assert capsys.readouterr().out == "export RUN OUT\n"
    for module, error in [
        ("dl_fake_missing", "error: dl_fake_missing is not available"),
        ("dl_fake_needs_dep", "error: dl_fake_needs_dep is not available: No module named 'dl_no_such_dependency'"),
        ("dl_fake_no_run", "error: dl_fake_no_run is not available: it has no run"),
    ]:
        monkeypatch.setitem(cli.SUBCOMMANDS, "export", (module, help_line))
        assert cli.main(["export", "RUN"]) == 2
        assert capsys.readouterr().err.strip() == error


# ----------------------------------------------------------------------------- python -m densitylab.report
def test_report_module_help_lists_the_commands_and_keeps_the_long_help():
    proc = _python("-m", "densitylab.report", "--help")
    assert proc.returncode == 0, proc.stderr
    commands = _command_lines(proc.stdout)
    assert list(commands) == REPORT_COMMANDS, proc.stdout
    assert all(len(line) > 20 for line in commands.values()), commands
    assert proc.stdout.startswith("usage: python -m densitylab.report ")
    for command in REPORT_COMMANDS:  # the module docstring (the long help) follows the list
        assert f"``{command}``" in proc.stdout


def test_report_module_density_help():
    proc = _python("-m", "densitylab.report", "density", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m densitylab.report density [-h] [--out OUT] runs [runs ...]")
    assert "``density`` (the default)" in proc.stdout  # its paragraph of the module docstring
    assert "--by" not in proc.stdout and "--no-wandb" not in proc.stdout


@pytest.mark.parametrize(
    ("command", "options", "absent"),
    [
        ("density", ["--out"], ["--by", "--capacity", "--depth-width", "--no-wandb"]),
        ("knowledge", ["--out"], ["--by", "--no-wandb"]),
        ("capacity", ["--out"], ["--by", "--no-wandb"]),
        ("compare", ["--out", "--by"], ["--capacity", "--no-wandb"]),
        ("study", ["--out", "--capacity", "--depth-width", "--no-wandb"], ["--by"]),
        ("priming", ["--out"], ["--by", "--no-wandb"]),
    ],
)
def test_report_command_options(command, options, absent, capsys):
    assert _exit_code([command, "--help"], report_cli.main) == 0
    out = capsys.readouterr().out
    assert all(o in out for o in options) and not any(o in out for o in absent), out


def test_report_parses_as_before():
    parse = report_cli.build_parser().parse_args
    args = parse(["study", "a", "b", "--capacity", "c", "--depth-width", "d", "e", "--no-wandb", "--out", "o"])
    assert vars(args) == dict(
        report_command="study", runs=["a", "b"], capacity=["c"], depth_width=["d", "e"], no_wandb=True, out="o"
    )
    args = parse(["compare", "a", "--by", "model.net.n_layer"])
    assert (args.report_command, args.runs, args.by, args.out) == ("compare", ["a"], "model.net.n_layer", None)
    # no command: density, as before (README and the end-to-end tests rely on it); -h/--help stays the list
    assert report_cli.with_default_command(["RUN", "--out", "o"]) == ["density", "RUN", "--out", "o"]
    assert report_cli.with_default_command(["--out", "o", "RUN"]) == ["density", "--out", "o", "RUN"]
    assert report_cli.with_default_command(["knowledge", "RUN"]) == ["knowledge", "RUN"]
    assert report_cli.with_default_command(["--help"]) == ["--help"]
    assert report_cli.with_default_command([]) == ["density"]


def test_report_dispatches_each_command_with_its_options(monkeypatch, tmp_path, capsys):
    """Each command reaches its report function with the parsed options, through both entry points."""
    import pandas as pd

    from densitylab.report import capacity, compare, density, study

    calls = []
    monkeypatch.setattr(density, "density_report", lambda runs, out: calls.append(("density", runs, out)) or ("o", 0))
    monkeypatch.setattr(density, "format_table", lambda table: "table")
    monkeypatch.setattr(
        capacity, "capacity_report", lambda runs, out: calls.append(("capacity", runs, out)) or ("o", 0)
    )
    monkeypatch.setattr(capacity, "format_result", lambda result: "result")
    monkeypatch.setattr(
        compare, "compare_report", lambda runs, out, by: calls.append(("compare", runs, out, by)) or "p"
    )

    def fake_study(runs, out, cap, depth_width, wandb_table):
        calls.append(("study", runs, out, cap, depth_width, wandb_table))
        return "o", pd.DataFrame()

    monkeypatch.setattr(study, "study_report", fake_study)
    monkeypatch.setattr(study, "format_verdicts", lambda table: "verdicts")
    for main, prefix in [(report_cli.main, []), (cli.main, ["report"])]:
        calls.clear()
        assert main([*prefix, "r1", "r2"]) == 0
        assert main([*prefix, "density", "r1", "--out", "o"]) == 0
        assert main([*prefix, "capacity", "m"]) == 0
        assert main([*prefix, "compare", "a", "b", "--by", "seed"]) == 0
        assert main([*prefix, "study", "s", "--capacity", "c", "--no-wandb"]) == 0
        assert main([*prefix, "study", "s", "--depth-width", "d"]) == 0
        assert calls == [
            ("density", ["r1", "r2"], None),
            ("density", ["r1"], "o"),
            ("capacity", ["m"], None),
            ("compare", ["a", "b"], None, "seed"),
            ("study", ["s"], None, ["c"], None, False),
            ("study", ["s"], None, None, ["d"], True),
        ]
    capsys.readouterr()


@pytest.mark.parametrize("command", [None, *REPORT_COMMANDS])
def test_report_on_a_missing_folder_is_one_error_line_and_status_2(command, tmp_path, capsys):
    missing = str(tmp_path / "nothing")
    argv = ([] if command is None else [command]) + [missing] + (["--no-wandb"] if command == "study" else [])
    for main, prefix in [(report_cli.main, []), (cli.main, ["report"])]:
        assert main([*prefix, *argv]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing" in lines[0], captured.err
        assert captured.out == ""


def test_report_module_on_a_missing_folder_in_a_subprocess(tmp_path):
    for args in (["-m", "densitylab.report"], ["-m", "densitylab.cli", "report"]):
        proc = _python(*args, str(tmp_path / "nothing"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: {str(tmp_path / 'nothing')!r} does not exist: expected a run folder or a multirun folder"
        ]


def test_report_module_unknown_option_exits_2():
    proc = _python("-m", "densitylab.report", "density", "RUN", "--bogus")
    assert proc.returncode == 2 and "error: unrecognized arguments: --bogus" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- make help
def test_make_help_lists_the_documented_targets():
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    documented = dict(
        re.findall(r"^([a-zA-Z_-]+):.*?## (.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    )  # target -> its comment
    assert {"train", "test", "test-fast", "smoke", "help"} <= set(documented), documented
    proc = run_command(["make", "-s", "help"], timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    listed = dict(re.findall(r"^ +([a-zA-Z_-]+) +(\S.*)$", proc.stdout, flags=re.M))
    assert listed == {t: c.strip() for t, c in documented.items()}, proc.stdout
    first_rule = re.search(r"^([a-zA-Z_-]+):", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    assert first_rule == "setup"  # `make` alone still sets up; help is not the default goal


# ----------------------------------------------------------------------------- python train.py --help
def test_train_py_help_shows_densitylab_help_and_trains_nothing(tmp_path):
    proc = _python(str(REPO / "train.py"), "--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("densitylab: train a small GPT"), out[:500]
    for example in TRAIN_EXAMPLES:
        assert example in out, example
    groups = dict(re.findall(r"^([a-z_/]+): (.*)$", out, flags=re.M))
    for group in ("experiment", "model", "data", "trainer", "logger", "callbacks", "tokenizer"):
        assert group in groups, (group, out)
    assert "density_emergence" in groups["experiment"] and "smoke" in groups["experiment"]
    assert "densitylab --help" in out and "--hydra-help" in out
    assert "${" not in out and "$APP_CONFIG_GROUPS" not in out  # every interpolation resolved
    assert list(tmp_path.iterdir()) == [], "python train.py --help wrote files"
