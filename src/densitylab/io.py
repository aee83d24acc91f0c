"""Atomic writers: a temporary file in the same folder, then a rename, so readers never see half a file
and a crash never leaves a broken file in place of a good one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_parquet_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` (without its index) to ``path``, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (non-JSON values through ``str``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
