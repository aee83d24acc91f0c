"""Plots and cross-run comparison from run folders (no W&B needed): ``python -m densitylab.report``."""

from densitylab.report.density import aggregate_runs, density_report, find_runs

__all__ = ["aggregate_runs", "density_report", "find_runs"]
