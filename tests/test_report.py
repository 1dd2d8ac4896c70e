"""task=report: statistics, and a tiny real sweep (one job killed, one never started) → table + PNGs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rtd_lab.report import expected_jobs, mean_ci, paired_bootstrap
from tests.test_experiments import ROOT, _cli


def test_mean_ci_is_student_t():
    m, h = mean_ci([0.0, 1.0, 2.0])
    assert m == 1.0 and h == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) * s / sqrt(n)
    assert np.isnan(mean_ci([0.5])[1])


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=(3, 400)).astype(float)
    same = paired_bootstrap(base, base, n=2000)
    assert same["delta"] == 0 and same["p_questions"] == 1.0
    better = np.clip(base + (rng.random((3, 400)) < 0.3), 0, 1)  # ~15 points more questions right
    out = paired_bootstrap(better, base, n=2000)
    assert out["delta"] > 0.1 and out["p_questions"] < 0.001 and out["p_questions_and_seeds"] < 0.01
    # Seed noise: one seed of "a" learned everything, the others nothing; b is in between every seed.
    a = np.stack([np.ones(400), np.zeros(400), np.zeros(400)])
    b = np.full((3, 400), 0.3)
    noisy = paired_bootstrap(a, b, n=2000)
    assert noisy["p_questions"] < 0.01 < 0.2 < noisy["p_questions_and_seeds"]  # seeds decide nothing here


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """2 methods x 2 seeds, tiny; then one job "killed" (no results.json) and one "never started"."""
    root = tmp_path_factory.mktemp("sweep")
    proc = _cli(
        "-m",
        "+experiment=standard_kd,cot_ft",
        "seed=0,1",
        "+debug=fast",
        "trainer.enable_progress_bar=false",
        "diagnostics.self_consistency_k=2",
        "data.benchmark.n_test_per_depth=12",  # CKA needs >= 10 chains of a depth
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((root / "multirun").glob("*/*"))
    assert len(expected_jobs(sweep)) == 4
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    (jobs[1] / "results.json").unlink()  # standard_kd seed 1: killed before it finished
    shutil.rmtree(jobs[2])  # cot_ft seed 0: never started
    return root, sweep, jobs


def test_sweep_report_names_missing_jobs_and_draws_plots(tiny_sweep):
    root, sweep, jobs = tiny_sweep
    proc = _cli("task=report", f"report.sweep_dir={sweep}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((sweep / "report.json").read_text())
    assert len(rep["missing"]) == 2
    assert any(jobs[1].name in m and "no results.json" in m for m in rep["missing"])
    assert any(m.startswith("never started:") and "seed=0" in m for m in rep["missing"])
    assert rep["baseline"] == "standard_kd" and set(rep["vs_baseline"]) == {"cot_ft"}
    assert {"p_questions", "p_questions_and_seeds"} <= set(rep["vs_baseline"]["cot_ft"])
    assert rep["chain_acc"]["standard_kd"]["seeds"] == [0] and rep["chain_acc"]["cot_ft"]["seeds"] == [1]
    assert rep["diagnostics"]["standard_kd"]["cka"]
    md = (sweep / "report.md").read_text()
    assert "Missing or failed jobs (2)" in md and "| all |" in md
    for png in ("chain_acc_by_depth.png", "cka_by_step.png", "chain_acc_bars.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((sweep / "wandb").glob("offline-run-*"))  # the report as a W&B run, offline


def test_the_analysis_notebook_runs_on_a_sweep(tiny_sweep, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    _, sweep, _ = tiny_sweep
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    monkeypatch.setenv("RTD_LAB_SWEEP", str(sweep))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "2 finished runs, 2 missing" in printed
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3


def test_expected_jobs_merge_the_sweep_file_and_the_command_line(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n"
        "  sweeper:\n"
        "    params: {'+experiment@_global_': 'rtd,standard_kd', seed: '0,1,2'}\n"
        "  overrides:\n"
        "    task: ['+experiment=paper_table', 'seed=3,4', 'sample.temperatures=[0.7,1.0]', 'group=x']\n"
    )
    jobs = expected_jobs(tmp_path)
    assert len(jobs) == 4 and {"+experiment@_global_": "rtd", "seed": "3"} in jobs
    assert expected_jobs(tmp_path / "nowhere") is None


def test_report_errors_name_the_field(make_cfg, tmp_path):
    from rtd_lab.report import run_report

    with pytest.raises(ValueError, match="report.sweep_dir is not set"):
        run_report(make_cfg("task=report"))
    with pytest.raises(FileNotFoundError, match="report.sweep_dir"):
        run_report(make_cfg("task=report", f"report.sweep_dir={tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished run"):
        run_report(make_cfg("task=report", f"report.sweep_dir={tmp_path / 'empty'}"))
