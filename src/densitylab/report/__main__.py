"""``python -m densitylab.report [density] RUN_DIR [RUN_DIR ...] [--out DIR]``

Density plots from one run folder (written to ``RUN_DIR/plots/``) or, from several run folders or a
Hydra multirun folder (seeds), mean ± 95% CI across runs (written to ``--out``, default
``<common parent>/report``). Prints the final per-layer slope and gap with CIs.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the report CLI; returns the exit status (2 with one ``error:`` line when no run is found)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "density":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m densitylab.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders or multirun folders")
    ap.add_argument("--out", help="output folder (default: RUN/plots for one run, else <common parent>/report)")
    args = ap.parse_args(argv)
    from densitylab.report.density import density_report, format_table

    try:
        out, table = density_report(args.runs, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/density_over_training.png, {out}/density_vs_familiarity.png, {out}/density_headline.csv")
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
