"""FILTER: answer check, RFT-style deduplication, acceptance rates, the labelled real traces."""

from __future__ import annotations

import json

import datasets
import pytest

from rtd_lab.tasks.filter import run_filter
from rtd_lab.traces.filter import filter_rows, reasoning_path

from .test_gsm8k import REAL, needs_real


def _row(uid, completion, gold="10", teacher="t", temperature=1.0, depth=2, **extra):
    return dict(
        uid=uid,
        question="q",
        depth=depth,
        gold_answer=gold,
        teacher=teacher,
        temperature=temperature,
        sample_index=0,
        seed=0,
        completion=completion,
        **extra,
    )


def test_reasoning_path_is_the_sequence_of_equations():
    a = "She has 2 + 3 = <<2+3=5>>5 and 5*2=<<5*2=10>>10.\nA: 10"
    b = "First 2+3 = <<2 + 3=5>>5 apples, then 5 * 2 = <<5*2=10>>10 in all. #### 10"
    assert reasoning_path(a) == reasoning_path(b) == ("2+3=5", "5*2=10")
    assert reasoning_path("7 + 3 = 10 ; 10 * 2 = 9 #### 9") == ("7+3=10", "10*2=9")
    assert reasoning_path("no   equations\there") == ("no equations here",)


def test_filter_accepts_gold_answers_dedups_paths_and_reports_rates():
    rows = [
        _row("q1", "2 + 8 = 10 #### 10"),
        _row("q1", "2+8 = 10  #### 10", temperature=0.5),  # the same path, other spacing: dropped
        _row("q1", "5 * 2 = 10 #### 10", teacher="u"),  # another path to the same answer: kept
        _row("q1", "2 + 7 = 9 #### 9"),  # wrong answer
        _row("q2", "The answer is $1,000.", gold="1000", depth=3),
        _row("q2", "no idea", gold="1000", depth=3),
    ]
    kept, report = filter_rows(rows)
    assert [r["completion"] for r in kept] == ["2 + 8 = 10 #### 10", "5 * 2 = 10 #### 10", "The answer is $1,000."]
    assert report["accepted"] == 4 and report["kept_after_dedup"] == 3 and report["questions_with_a_kept_trace"] == 2
    assert report["by_teacher"]["t"] == {"samples": 5, "accepted": 3, "rate": 0.6, "unique_paths": 2}
    assert report["by_depth"]["3"]["rate"] == 0.5
    assert report["by_temperature"]["0.5"]["unique_paths"] == 0
    assert "label_agreement" not in report


def test_an_empty_filter_result_is_an_error(make_cfg, tmp_path):
    src = tmp_path / "samples"
    datasets.Dataset.from_list([_row("q1", "#### 3"), _row("q2", "nothing")]).save_to_disk(str(src / "dataset"))
    cfg = make_cfg("task=filter", f"sample.out_dir={src}")
    with pytest.raises(ValueError, match="FILTER kept no trace of 2"):
        run_filter(cfg)
    report = json.loads((src / "filtered" / "report.json").read_text())  # the report is written regardless
    assert report["samples"] == 2 and report["accepted"] == 0
    assert not (src / "filtered" / "dataset").exists()


def test_missing_input_names_the_field(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="filter.input"):
        run_filter(make_cfg("task=filter", f"sample.out_dir={tmp_path / 'none'}"))


@needs_real
def test_filter_on_the_real_model_solutions_agrees_with_their_labels(make_cfg, tmp_path):
    cfg = make_cfg("task=filter", "data=gsm8k_model_solutions", f"data.path={REAL / 'example_model_solutions.jsonl'}")
    out = run_filter(cfg)
    report = json.loads((out.parent / "report.json").read_text())
    assert report["samples"] == 5276 and report["accepted"] == 2001  # the file's README: 2001 correct
    assert report["label_agreement"]["rate"] >= 0.99
    assert set(report["by_teacher"]) == {"6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"}
    assert len(datasets.load_from_disk(str(out))) == report["kept_after_dedup"]
