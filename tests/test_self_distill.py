"""task=self_distill: sample -> filter -> fine-tune rounds, the student of round r the teacher of round r + 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import rtd_lab.traces.sample as sample_mod
from rtd_lab.tasks.preflight import check_config
from rtd_lab.tasks.self_distill import run_self_distill
from rtd_lab.traces.self_distill import SelfDistillSettings, sample_stats

from .test_rft import scripted_sample_chunk


def test_sample_stats_measure_the_spread_of_traces_per_question():
    rows = {"uid": ["q1"] * 4 + ["q2"] * 4, "completion": ["a", "a", "a", "a", "a", "b", "c", "d  "]}
    stats = sample_stats(rows)
    assert stats["trace_entropy_bits"] == pytest.approx((0 + 2.0) / 2)  # q1: one trace; q2: four, equally often
    assert stats["distinct_traces_per_question"] == pytest.approx((1 + 4) / 2) and stats["questions"] == 2


def test_rounds_chain_students_and_report_each_round(make_cfg, monkeypatch):
    calls = []
    monkeypatch.setattr(sample_mod, "sample_chunk", scripted_sample_chunk(calls))
    cfg = make_cfg("+experiment=self_distill", "self_distill.rounds=2", "sample.n_samples=3", "sample.max_questions=12")
    check_config(cfg)
    summary = run_self_distill(cfg)
    out = Path(cfg.paths.output_dir)
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [1, 2] and len(calls) == 2  # one SAMPLE per round
    first, second = (json.loads((out / f"round_{r}" / "results.json").read_text()) for r in (1, 2))
    # Round 2 samples from round 1's exported student, and that student trains on.
    assert [t["name"] for t in first["config"]["sample"]["teachers"]] == ["teacher"]
    assert first["config"]["student"]["pretrained"] is None  # round 1: the student's base
    assert second["config"]["sample"]["teachers"][0]["pretrained"] == str(out / "round_1" / "student")
    assert second["config"]["student"]["pretrained"] == str(out / "round_1" / "student")
    assert second["config"]["data"]["trace_source"] == "rft"
    # The scripted teacher draws per question: the gold trace, the gold answer through a wrong first
    # step, and a wrong answer; FILTER keeps the first two, one with a valid path.
    for row in rows:
        assert row["trace_entropy_bits"] == pytest.approx(math.log2(3))
        assert row["distinct_traces_per_question"] == 3
        assert row["valid_paths_per_question"] == 1 and row["kept_wrong_step_share"] == 0.5
        assert 0.0 <= row["chain_acc"] <= 1.0 and set(row["by_depth"]) == {"3"}
    assert (out / "self_distill.png").stat().st_size > 0
    assert "| 2 | student_round1 |" in (out / "self_distill.md").read_text()
    # A rerun reads the finished rounds back instead of training them again.
    again = run_self_distill(cfg)
    assert again["rounds"] == rows and len(calls) == 2


def test_rounds_must_be_a_positive_integer(make_cfg):
    with pytest.raises(ValueError, match="self_distill.rounds"):
        SelfDistillSettings(rounds=0)
    with pytest.raises(ValueError, match="self_distill.rounds"):
        check_config(make_cfg("+experiment=self_distill", "self_distill.rounds=0"))
