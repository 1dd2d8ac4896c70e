"""SEGMENT: rule-based segmenters, the learned boundary classifier, RTD on learned boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtd_lab.data.batch import encode_example
from rtd_lab.data.segmenters import rule_boundaries, segment_calculator, segment_lines, segment_sentences
from rtd_lab.data.synthetic import FORMAT, SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.tasks.segment import run_segment
from rtd_lab.tasks.train import train

GSM = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe sold 48+24 = <<48+24=72>>72 in all.\n#### 72"


def test_rule_segmenters():
    first_end = GSM.index("clips.") + len("clips.") - 1
    assert segment_lines(GSM)[:2] == [first_end, GSM.index("in all.") + len("in all.") - 1]
    assert [GSM[i] for i in segment_calculator(GSM)] == ["4", "2"]  # the last digit of 24 and of 72
    assert [GSM[i - 1 : i + 1] for i in segment_calculator(GSM)] == ["24", "72"]
    assert segment_sentences("It costs 2.50 dollars. Then! Done?") == [21, 27, 33]  # 2.50 is no sentence end
    text = "7 + 3 = 10 ; 10 * 2 = 9 #### 9"
    assert [text[i - 1 : i + 1] for i in rule_boundaries("separators", text, FORMAT)] == ["10", " 9"]
    # GSM8K's step separator is a line break: its steps are its lines
    from rtd_lab.data.gsm8k import FORMAT as GSM8K_FORMAT

    assert rule_boundaries("separators", GSM, GSM8K_FORMAT) == segment_lines(GSM)[:2]
    with pytest.raises(ValueError, match="data.boundaries"):
        rule_boundaries("paragraphs", text, FORMAT)


def test_separator_rule_reproduces_the_synthetic_gold_boundaries():
    bm = SyntheticBenchmark(modulus=11, max_depth=4, n_train_per_depth=5, n_val_per_depth=5, n_test_per_depth=5)
    tok = build_synthetic_tokenizer(11)
    for ex in bm.splits()["val"]:
        gold = encode_example(ex, tok, FORMAT).boundary_pos
        ruled = encode_example(ex, tok, FORMAT, segmenter=lambda t: rule_boundaries("separators", t, FORMAT))
        assert ruled.boundary_pos == gold


def test_task_segment_reports_every_segmenter(make_cfg):
    cfg = make_cfg("task=segment", "segment.epochs=20", "segment.n_train_examples=40")
    report = run_segment(cfg)
    assert set(report) == {"lines", "calculator", "sentences", "separators", "learned"}
    assert report["separators"]["f1"] == 1.0  # the synthetic benchmark's own steps
    assert 0.0 <= report["learned"]["f1"] <= 1.0
    saved = json.loads((Path(cfg.paths.output_dir) / "segment_report.json").read_text())
    assert saved["classifier"]["report"]["heldout_tokens"] > 0


def test_rtd_trains_on_learned_boundaries(make_cfg):
    cfg = make_cfg("data.boundaries=learned", "segment.epochs=20", "segment.n_train_examples=40")
    results = train(cfg)
    seg = results["segmenter"]
    assert {"heldout_precision", "heldout_recall", "heldout_f1"} <= set(seg["report"])
    assert Path(seg["source"]).exists()


def test_rtd_trains_on_rule_boundaries(make_cfg):
    assert train(make_cfg("data.boundaries=sentences"))["segmenter"] is None


def test_the_decision_threshold_is_tuned_for_f1():
    import torch

    from rtd_lab.traces.segment import f1_threshold

    # 2 boundaries in 10 tokens; balanced training pushes the 8 others to 0.6-0.8, above 0.5
    probs = torch.tensor([0.97, 0.96, 0.8, 0.7, 0.7, 0.6, 0.6, 0.65, 0.75, 0.62])
    gold = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]).bool()
    assert f1_threshold(probs, gold) == 0.85  # the lowest threshold that keeps only the two: F1 = 1


def test_online_boundaries_equal_the_precomputed_ones():
    """learned_online finds, per batch, the positions predict_boundaries gives the same examples."""
    import torch

    from rtd_lab.data.batch import Collator
    from rtd_lab.data.datamodule import ReasoningDataModule
    from rtd_lab.data.synthetic import SyntheticBenchmark
    from rtd_lab.data.tokenizer import build_synthetic_tokenizer
    from rtd_lab.traces.segment import BoundaryClassifier, online_boundaries, predict_boundaries, token_features
    from tests.test_methods import tiny_lm

    tok = build_synthetic_tokenizer(11)
    bm = SyntheticBenchmark(modulus=11, max_depth=3, n_train_per_depth=8, n_val_per_depth=2, n_test_per_depth=2)
    part = ReasoningDataModule.gold(bm, tok, 12, 12).encoded["train"][:12]
    teacher = tiny_lm(tok, 24, layers=2, seed=1)
    batch = Collator(tok.pad_token_id)(part)
    feats = token_features(teacher, batch)
    torch.manual_seed(0)
    clf = BoundaryClassifier(feats.size(-1), 16).eval()
    with torch.no_grad():
        probs = torch.sigmoid(clf(feats))
    clf.threshold = float(probs[batch["labels"] != -100].median())  # about half the trace tokens
    pos, mask = online_boundaries(clf, teacher, batch)
    want = predict_boundaries(clf, teacher, part, tok.pad_token_id, batch_size=len(part))
    got = [pos[b][mask[b]].tolist() for b in range(len(part))]
    assert got == want and any(want) and mask.size(1) == max(map(len, want))


def test_rtd_trains_with_the_classifier_online(make_cfg, monkeypatch):
    """data.boundaries=learned_online with the teacher online: every training and validation batch's
    boundaries come from the classifier; with an offline cache they are computed once (as learned)."""
    import rtd_lab.methods.base as base

    calls = []
    real = base.online_boundaries

    def counting(clf, teacher_model, batch):
        calls.append(batch["input_ids"].size(0))
        return real(clf, teacher_model, batch)

    monkeypatch.setattr(base, "online_boundaries", counting)
    extra = ("segment.epochs=20", "segment.n_train_examples=40", "data.boundaries=learned_online")
    results = train(make_cfg(*extra, "teacher_cache.mode=off"))
    assert results["segmenter"]["report"]["heldout_tokens"] > 0
    assert len(calls) >= results["student"]["steps"]  # each training step, and the validation batches
    calls.clear()
    train(make_cfg(*extra, "teacher_cache.mode=build"))
    assert calls == []
