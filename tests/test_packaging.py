"""A built wheel is rtd_lab whole: it carries its configs, and its console script runs a smoke job
from any directory (no checkout beside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("rtd_lab-*.whl")
    return path


def test_the_wheel_carries_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(ROOT)) for p in (ROOT / "rtd_lab" / "conf").rglob("*.yaml")}
    assert configs and configs <= names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "rtd-lab = rtd_lab.__main__:main" in entry_points


def test_the_installed_wheel_runs_the_smoke_job_from_anywhere(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "RTD_LAB_CACHE": str(tmp_path / "cache")}
    where = subprocess.run(
        [sys.executable, "-c", "import rtd_lab; print(rtd_lab.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(site))  # the wheel's copy, not the checkout's
    proc = subprocess.run(
        [
            str(site / "bin" / "rtd-lab"),
            "+debug=fast",
            "logger=csv",
            "hydra.run.dir=run",
            "trainer.enable_progress_bar=false",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["method"] == "rtd" and (work / "run" / "student" / "config.json").exists()
    assert (work / "run" / "rtd_lab.log").exists()  # hydra.job.name names the log, not __main__

    help_text = subprocess.run(
        [str(site / "bin" / "rtd-lab"), "--help"], cwd=work, env=env, capture_output=True, text=True
    ).stdout
    assert "rtd_lab: distil step-by-step reasoning" in help_text
    assert "export" in help_text and "paper_table" in help_text and "experiment" in help_text
