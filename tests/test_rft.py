"""data.trace_source=rft: SAMPLE -> FILTER -> train inside one run, cached; equal-size training sets."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

import rtd_lab.traces.sample as sample_mod
from rtd_lab.data.training_set import subset
from rtd_lab.tasks.train import train
from rtd_lab.traces.filter import filter_rows, verify_steps


def _completion(ex, values, answer):
    steps = " ; ".join(f"{s.text.rsplit('=', 1)[0].strip()} = {v}" for s, v in zip(ex.steps, values, strict=True))
    return f"{steps} #### {answer}"


def scripted_sample_chunk(calls):
    """Stands in for the teacher: per question, the gold trace, a trace that reaches the gold answer
    through a wrong first step, and a wrong answer — so what FILTER keeps is known exactly."""

    def fake(model, tokenizer, benchmark, examples, temperature, n_samples, batch_size, seed):
        calls.append(len(examples))
        torch.manual_seed(seed)  # as the real sampler does: it reseeds the global RNG
        rows = []
        m = benchmark.cfg.modulus
        for ex in examples:
            gold = [s.value for s in ex.steps]
            lucky = [(gold[0] + 1) % m, *gold[1:]] if len(gold) > 1 else [gold[0]]
            texts = [
                _completion(ex, gold, ex.answer),
                _completion(ex, lucky, ex.answer),
                _completion(ex, gold, (ex.answer + 1) % m),
            ]
            rows += [sample_mod.trace_row(ex, temperature, i, seed, text) for i, text in enumerate(texts[:n_samples])]
        return rows

    return fake


def _student_weights(results: dict) -> list[float]:
    ckpt = torch.load(
        f"{results['config']['paths']['output_dir']}/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    return [float(v.float().sum()) for k, v in sorted(ckpt["state_dict"].items()) if k.startswith("student.")]


RFT = [
    "+experiment=rft_one",
    "sample.seed=0",
    "sample.n_samples=3",
    "sample.max_questions=30",
    "sample.chunk_questions=16",
    "diagnostics.enabled=false",  # self-consistency samples too: keep the count of SAMPLE calls clean
]


def test_rft_run_samples_filters_trains_and_reuses_its_samples(make_cfg, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(sample_mod, "sample_chunk", scripted_sample_chunk(calls))
    cfg = make_cfg(*RFT)
    train_split = instantiate(cfg.data).benchmark.splits()["train"]
    sampled = train_split[:: len(train_split) // 30][:30]  # SAMPLE's evenly spaced questions
    results = train(cfg)
    first_weights = _student_weights(results)
    assert calls == [16, 14]  # two chunks of the 30 questions
    # FILTER drops the 30 wrong answers; of the "lucky" traces (gold answer, wrong first step), a
    # depth-1 chain's is the gold trace itself and dedup drops it; the others are kept — and counted.
    deep = sum(ex.depth > 1 for ex in sampled)
    assert results["teacher_traces"]["n_traces"] == 30 + deep
    assert results["train_set"] == {"examples": 30 + deep, "questions": 30, "wrong_steps": deep}
    stats = results["train_set"]

    # Another seed of the same arm: the same samples, read from the cache.
    results2 = train(make_cfg(*RFT, "seed=1"))
    assert calls == [16, 14]
    assert results2["train_set"] == stats
    # The same seed again, samples now cached: sampling (which reseeds the RNG) must not have
    # changed the run, so cold and warm cache give the same student. (Each run has its own
    # directory; an earlier version compared one checkpoint file with itself, and missed that the
    # batch order then followed the global RNG, fixed in rtd_lab/data/samplers.py.)
    again = train(make_cfg(*RFT))
    assert calls == [16, 14] and again["train_set"] == stats
    assert _student_weights(again) == first_weights


def test_max_train_examples_is_an_equal_size_fixed_subset(make_cfg, monkeypatch):
    monkeypatch.setattr(sample_mod, "sample_chunk", scripted_sample_chunk([]))
    a = train(make_cfg(*RFT, "data.max_train_examples=25"))
    b = train(make_cfg("+experiment=rft_sft_traces", "data.max_train_examples=25", "seed=1"))
    assert a["train_set"]["examples"] == b["train_set"]["examples"] == 25
    assert b["train_set"]["wrong_steps"] == 0
    with pytest.raises(ValueError, match=r"data.max_train_examples=1000.*only"):
        train(make_cfg(*RFT, "data.max_train_examples=1000"))


def test_subset_is_deterministic_and_keeps_order():
    items = list(range(100))
    assert subset(items, 10) == subset(items, 10) == sorted(subset(items, 10))
    assert len(set(subset(items, 10))) == 10


def test_filter_counts_right_answers_reached_through_wrong_steps(make_cfg):
    benchmark = instantiate(make_cfg().data).benchmark
    ex = next(e for e in benchmark.splits()["train"] if e.depth == 2)
    gold = [s.value for s in ex.steps]
    m = benchmark.cfg.modulus
    first = ex.steps[0].text.split()  # e.g. ["7", "+", "3", "=", "10"]
    miscopied = " ".join([*first[:2], str((int(first[2]) + 1) % m), *first[3:]])  # right value, wrong operand
    rows = [
        {"uid": ex.uid, "gold_answer": str(ex.answer), "teacher": "t", "temperature": 1.0, "depth": 2, "completion": c}
        for c in (
            _completion(ex, gold, ex.answer),
            _completion(ex, [(gold[0] + 1) % m, gold[1]], ex.answer),
            _completion(ex, gold, ex.answer).replace(ex.steps[0].text, miscopied, 1),
        )
    ]
    verify_steps(rows, benchmark)
    assert [r["steps_correct"] for r in rows] == [True, False, False]
    kept, report = filter_rows(rows)
    assert len(kept) == 3 and report["kept_wrong_steps"] == 2
    assert report["by_teacher"]["t"]["kept_wrong_steps"] == 2


def test_unfiltered_arm_reads_the_mixed_arms_samples_and_keeps_wrong_answers(make_cfg, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(sample_mod, "sample_chunk", scripted_sample_chunk(calls))
    opts = ["sample.seed=0", "sample.n_samples=3", "sample.max_questions=12", "diagnostics.enabled=false"]
    mixed = train(make_cfg("+experiment=rft_mixed", *opts))
    n_calls = len(calls)
    unfiltered = train(make_cfg("+experiment=rft_unfiltered", *opts))
    assert len(calls) == n_calls  # the same SAMPLE output, filtered the other way
    # Per question the scripted teacher gives the gold trace, a lucky one and a wrong answer, the same
    # at every teacher and temperature: deduplicated, the unfiltered set holds one wrong answer more per question.
    assert unfiltered["teacher_traces"]["n_traces"] == mixed["teacher_traces"]["n_traces"] + 12
    assert unfiltered["teacher_traces"]["n_correct"] == mixed["teacher_traces"]["n_correct"]
