"""SFT on gold answers only: answer-only targets, no boundaries, and the guard on the data."""

import pytest

from rtd_lab.data.batch import encode_example
from rtd_lab.data.synthetic import FORMAT, SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.tasks.preflight import check_config
from rtd_lab.tasks.train import train


def test_answer_only_encoding_supervises_just_the_answer():
    tok = build_synthetic_tokenizer(11)
    ex = SyntheticBenchmark(modulus=11, max_depth=3, n_train_per_depth=4, n_val_per_depth=2, n_test_per_depth=2)
    ex = ex.splits()["test"][-1]
    full = encode_example(ex, tok, FORMAT)
    short = encode_example(ex, tok, FORMAT, with_trace=False)
    assert short.boundary_pos == [] and short.prompt_len == full.prompt_len
    supervised = tok.convert_ids_to_tokens(
        [i for i, lab in zip(short.input_ids, short.labels, strict=True) if lab != -100]
    )
    assert supervised == ["####", str(ex.answer), "<eos>"]


def test_sft_experiment_trains_on_answers_and_reports_answer_accuracy(make_cfg):
    results = train(make_cfg("+experiment=sft"))
    assert results["method"] == "sft"
    metrics = results["student"]["metrics"]
    assert metrics["chain_acc"] == 0.0 and 0.0 <= metrics["answer_acc"] <= 1.0


def test_sft_refuses_traces_before_any_work(make_cfg):
    with pytest.raises(ValueError, match="data.answer_only=true"):
        check_config(make_cfg("method=sft"))
