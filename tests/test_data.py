"""Synthetic benchmark, tokenizer and boundary positions."""

from dataclasses import replace

import pytest
import torch

from rtd_lab.data.batch import Collator, encode_example
from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import (
    FORMAT,
    SyntheticBenchmark,
    SyntheticConfig,
    apply_op,
    generate_splits,
    parse_completion,
)
from rtd_lab.data.tokenizer import build_synthetic_tokenizer, same_tokenizer
from rtd_lab.data.training_set import build_splits, with_boundaries
from tests.helpers import data_settings

SMALL = dict(max_depth=4, n_train_per_depth=60, n_val_per_depth=10, n_test_per_depth=10)


def test_generator_is_deterministic_and_seed_dependent():
    a = generate_splits(SyntheticConfig(**SMALL))
    b = generate_splits(SyntheticConfig(**SMALL))
    c = generate_splits(SyntheticConfig(**SMALL, seed=1))
    assert [e.question for e in a["train"]] == [e.question for e in b["train"]]
    assert [e.question for e in a["train"]] != [e.question for e in c["train"]]


def test_splits_are_disjoint_and_balanced_by_depth():
    splits = generate_splits(SyntheticConfig(**SMALL))
    q = {k: {e.question for e in v} for k, v in splits.items()}
    assert not (q["train"] & q["test"]) and not (q["train"] & q["val"]) and not (q["val"] & q["test"])
    assert len(q["test"]) == len(splits["test"])  # unique within the held-out split
    for split, n in (("train", 60), ("val", 10), ("test", 10)):
        for d in range(1, 5):
            assert sum(e.depth == d for e in splits[split]) == n


@pytest.mark.parametrize("rule", ["arithmetic", "table"])
def test_every_step_builds_on_the_previous_one(rule):
    cfg = SyntheticConfig(**SMALL, distractors=2, shuffle=True, rule=rule)
    for ex in generate_splits(cfg)["test"]:
        program, asked = ex.question.split(" ; ")
        defs = dict(part.split(" = ") for part in program.split(" , "))
        assert len(defs) == cfg.max_depth + 1 + 2  # the whole program, plus the distractors
        assert asked == f"{'abcdefghi'[ex.depth]} ?"
        value = int(defs["a"])
        for i, step in enumerate(ex.steps):
            src, op, n = defs["abcdefghi"[i + 1]].split()
            assert src == "abcdefghi"[i]
            new = apply_op(value, op, int(n), cfg.modulus, cfg.seed)
            assert step.text == f"{value} {op} {n} = {new}"
            value = new
            assert step.value == value
        assert ex.answer == value and ex.depth == len(ex.steps)


def test_layout_is_fixed_so_step_i_sits_at_a_fixed_distance_from_definition_i():
    tok = build_synthetic_tokenizer(23)
    bm = SyntheticBenchmark(**SMALL, modulus=23)
    lengths = {len(encode_example(ex, tok, FORMAT).input_ids) - 6 * ex.depth for ex in bm.splits()["test"]}
    assert len(lengths) == 1  # prompt length is the same at every depth; each step adds 6 tokens


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("data.max_depth", dict(min_depth=4, max_depth=2)),
        ("data.max_depth", dict(max_depth=9)),
        ("data.modulus", dict(modulus=1)),
        ("data.ops", dict(ops=["/"])),
        ("data.ops", dict(rule="table", ops=["+"])),
        ("data.rule", dict(rule="lookup")),
        ("data.n_test_per_depth", dict(n_test_per_depth=0)),
    ],
)
def test_invalid_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        SyntheticConfig(**kwargs)


def test_table_rule_is_a_fixed_permutation_per_operand():
    from rtd_lab.data.synthetic import TABLE_OPS, lookup_tables

    tables = lookup_tables(11, 0)
    assert set(tables) == set(TABLE_OPS)
    for op in TABLE_OPS:
        for n in range(11):
            assert sorted(tables[op][n]) == list(range(11))  # a bijection: no information lost
    assert lookup_tables(11, 0) == tables and lookup_tables(11, 1) != tables  # fixed by the data seed


def test_too_many_questions_for_the_space_is_a_clear_error():
    with pytest.raises(ValueError, match="data.n_test_per_depth"):
        generate_splits(SyntheticConfig(modulus=3, max_depth=1, ops=["+"], n_test_per_depth=10))


def test_parse_never_raises_and_reads_values():
    assert parse_completion("1 + 2 = 3 ; 3 * 2 = 6 #### 6") == ([3, 6], 6)
    assert parse_completion("b = 1 + ; c = = 4 #### x") == ([None, 4], None)
    assert parse_completion("__import__('os') #### 7") == ([None], 7)
    assert parse_completion("") == ([], None)


def test_boundaries_point_at_each_step_value_token():
    tok = build_synthetic_tokenizer(23)
    bm = SyntheticBenchmark(**SMALL, modulus=23)
    for ex in bm.splits()["test"][::7]:
        enc = encode_example(ex, tok, FORMAT)
        assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id
        assert len(enc.boundary_pos) == ex.depth
        for pos, step in zip(enc.boundary_pos, ex.steps, strict=True):
            assert tok.convert_ids_to_tokens(enc.input_ids[pos]) == str(step.value)
            assert tok.convert_ids_to_tokens(enc.input_ids[pos + 1]) in (";", "####")
            assert enc.labels[pos] == enc.input_ids[pos]  # boundaries lie in the supervised trace
        # The prompt (question + " :") is never supervised; everything after it is.
        assert tok.convert_ids_to_tokens(enc.input_ids[enc.prompt_len - 1]) == ":"
        assert all(lab == -100 for lab in enc.labels[: enc.prompt_len])
        assert all(lab != -100 for lab in enc.labels[enc.prompt_len :])


def test_collate_pads_and_masks_boundaries():
    tok = build_synthetic_tokenizer(23)
    bm = SyntheticBenchmark(**SMALL, modulus=23)
    exs = [bm.splits()["test"][i] for i in (0, 15, 35)]  # depths 1, 2, 4
    batch = Collator(tok.pad_token_id)([encode_example(e, tok, FORMAT) for e in exs])
    assert batch["boundary_pos"].shape == (3, 4)
    assert batch["boundary_mask"].sum(1).tolist() == [1, 2, 4] == batch["depth"].tolist()
    assert batch["prompt_mask"][:, -1].all()  # left-padded prompts all end at the last column
    for b in range(3):
        n = batch["attention_mask"][b].sum()
        assert torch.all(batch["labels"][b, n:] == -100) and torch.all(batch["input_ids"][b, n:] == tok.pad_token_id)


def test_tokenizer_round_trips_and_saves(tmp_path):
    tok = build_synthetic_tokenizer(13)
    text = "a = 7 , b = a * 12 ; b ? : 7 * 12 = 6 #### 6"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert same_tokenizer(AutoTokenizer.from_pretrained(tmp_path), tok)
    assert not same_tokenizer(build_synthetic_tokenizer(17), tok)


def test_training_set_is_built_before_the_datamodule_which_serves_every_split():
    bm, tok = SyntheticBenchmark(**SMALL), build_synthetic_tokenizer(23)
    data = replace(data_settings(bm), batch_size=8, eval_batch_size=16, max_train_examples=10, boundaries="lines")
    splits = build_splits(data, tok)
    assert len(splits["train"]) == 10 and [x.row for x in splits["train"]] == list(range(10))
    dm = ReasoningDataModule.from_settings(data, splits, tok.pad_token_id)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 8
    assert sum(len(b["examples"]) for b in dm.test_dataloader()) == 40
    # Other traces need their examples; learned boundaries replace one split's, the others stay.
    with pytest.raises(ValueError, match="needs its training examples"):
        build_splits(replace(data, trace_source="teacher"), tok)
    moved = with_boundaries(splits, "val", [[1]] * len(splits["val"]))
    assert all(x.boundary_pos == [1] for x in moved["val"]) and moved["train"] is splits["train"]


def test_train_max_depth_trains_and_validates_on_short_chains_and_tests_on_all():
    bm, tok = SyntheticBenchmark(**SMALL), build_synthetic_tokenizer(23)
    data = replace(data_settings(bm), train_max_depth=2, max_train_examples=50)
    splits = build_splits(data, tok)
    assert {x.example.depth for x in splits["train"]} == {1, 2} and len(splits["train"]) == 50
    assert {x.example.depth for x in splits["val"]} == {1, 2}
    assert {x.example.depth for x in splits["test"]} == {1, 2, 3, 4}  # the long chains are the test
    with pytest.raises(ValueError, match="data.train_max_depth must be >= 1"):
        replace(data, train_max_depth=0)  # the range check names the field
    with pytest.raises(ValueError, match="below the benchmark's shallowest"):
        replace(data_settings(SyntheticBenchmark(**SMALL, min_depth=2)), train_max_depth=1)


def test_train_max_depth_below_the_shallowest_chains_fails_before_any_work(make_cfg):
    from rtd_lab.tasks.preflight import check_config

    with pytest.raises(ValueError, match="data.train_max_depth=1 is below"):
        check_config(make_cfg("data.benchmark.min_depth=2", "data.train_max_depth=1"))


def test_length_buckets_cover_every_example_once_per_epoch_and_pad_less():
    from rtd_lab.data.samplers import LengthBucketBatchSampler

    lengths = [10 + 6 * (i % 6) for i in range(1000)]
    sampler = LengthBucketBatchSampler(lengths, batch_size=32, seed=3)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert len(epoch1) == len(sampler)
    assert sorted(i for b in epoch1 for i in b) == list(range(1000))
    assert epoch1 != epoch2  # reshuffled every epoch
    padded = sum(len(b) * max(lengths[i] for i in b) for b in epoch1)
    assert padded < 0.9 * 32 * len(epoch1) * max(lengths)  # far less than mixed batches would pad
