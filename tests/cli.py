"""Run ``python -m rtd_lab`` as a user would, with the tiny settings of conftest.TINY."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, tiny: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RTD_LAB_CACHE": str(cwd / "cache")}
    flags = [a for a in args if a.startswith("-")]  # -m etc. before the overrides (argparse)
    argv = [*flags, *(TINY if tiny else []), *(a for a in args if not a.startswith("-"))]
    return subprocess.run(
        [sys.executable, "-m", "rtd_lab", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def logged(run_dir: Path, key: str) -> dict[int, float]:
    """step → value of one metric in a run's CSV log (the last value when a resumed run logged it again)."""
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}
