import json

import pytest

from rtd_lab.summarize import load_results, per_seed_table, summarize


def _result(path, method, seed, acc):
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
                "teacher": {"metrics": teacher},
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
