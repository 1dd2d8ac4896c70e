"""The plain summary tables (task=report report.summary_only=true): mean over seeds, per-seed values."""

import json

import pytest

from rtd_lab.report import load_results, per_seed_table, summarize


def _result(path, method, seed, acc, teacher_key=None):
    path.mkdir(parents=True)
    metrics = {"chain_acc": acc, "chain_acc/depth_1": acc, "chain_acc/depth_2": acc / 2}
    teacher = {"chain_acc": 1.0, "chain_acc/depth_1": 1.0, "chain_acc/depth_2": 1.0}
    (path / "results.json").write_text(
        json.dumps(
            {
                "method": method,
                "seed": seed,
                "depths": [1, 2],
                "student": {"metrics": metrics},
                "teacher": {"metrics": teacher, "key": teacher_key},
            }
        )
    )


def test_mean_over_seeds_per_method(tmp_path):
    _result(tmp_path / "0", "rtd", 0, 0.2)
    _result(tmp_path / "1", "rtd", 1, 0.4)
    _result(tmp_path / "2", "standard_kd", 0, 0.5)
    table = summarize(load_results([tmp_path]))
    assert "| depth | teacher (n=1) | rtd (n=2) | standard_kd (n=1) |" in table
    assert "| 1 | 1.000 | 0.300 | 0.500 |" in table
    assert "| 2 | 1.000 | 0.150 | 0.250 |" in table


def test_the_teacher_column_counts_its_instances(tmp_path):
    for s in range(3):
        _result(tmp_path / str(s), "rtd", s, 0.2, teacher_key={"seed": s})
    assert "| depth | teacher (n=3) | rtd (n=3) |" in summarize(load_results([tmp_path]))


def test_per_seed_table_names_missing_seeds(tmp_path):
    _result(tmp_path / "0", "rtd", 0, 0.2)
    _result(tmp_path / "1", "rtd", 1, 0.4)
    _result(tmp_path / "2", "standard_kd", 0, 0.5)
    table = per_seed_table(load_results([tmp_path]))
    assert "| run | seed 0 | seed 1 | mean | std |" in table
    assert "| rtd | 0.200 | 0.400 | 0.300 | 0.141 |" in table
    assert "| standard_kd | 0.500 | missing | 0.500 | nan |" in table


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no results.json"):
        summarize(load_results([tmp_path]))


def test_task_report_gives_the_summary_tables_as_an_option(make_cfg, tmp_path, capsys):
    from rtd_lab.tasks.report import run_report

    _result(tmp_path / "runs" / "0", "rtd", 0, 0.2)
    _result(tmp_path / "runs" / "1", "rtd", 1, 0.4)
    out = run_report(make_cfg("task=report", f"report.sweep_dir={tmp_path / 'runs'}", "report.summary_only=true"))
    assert "| rtd | 0.200 | 0.400 | 0.300 | 0.141 |" in out["summary"]
    assert "| 1 | 1.000 | 0.300 |" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "report.json").exists()  # no statistics were computed or written
