"""The calibrated instrument's parts: the WSD schedule, training until learned, the learning curve,
the student base, the sibling world and the batch-order family."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import rtd_lab.models.provision as provision
from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.data.synthetic import SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.learning_curve import LearningCurve, aulc, plateaued
from rtd_lab.models.pretrain import TraceTraining, UntilLearned
from rtd_lab.optim import warmup_stable_decay
from rtd_lab.tasks.settings import build_context, student_settings
from rtd_lab.tasks.train import train
from tests.helpers import data_settings


def _factors(schedule, steps):
    return [schedule.lr_lambdas[0](s) for s in range(steps)]


def test_wsd_holds_the_peak_until_the_decay_then_anneals_to_the_floor():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    f = _factors(warmup_stable_decay(opt, 100, warmup_ratio=0.1, decay_ratio=0.2, min_lr_ratio=0.0), 101)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(x == 1.0 for x in f[10:80])  # the stable phase: the peak, untouched
    assert all(a > b for a, b in zip(f[80:100], f[81:101], strict=True))  # the decay: strictly down
    assert f[100] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="optim.scheduler.decay_ratio"):
        warmup_stable_decay(opt, 100, warmup_ratio=0.5, decay_ratio=0.6)


class _Trainer:
    def __init__(self):
        self.global_step, self.should_stop = 0, False


def _drive(settings: TraceTraining, accuracy_at) -> tuple[UntilLearned, int, list[float]]:
    trainer, lrs = _Trainer(), []
    schedule = UntilLearned(settings, lambda: {"chain_acc": accuracy_at(trainer.global_step)})
    while not trainer.should_stop and trainer.global_step < settings.max_steps:
        lrs.append(schedule.factor(trainer.global_step))
        trainer.global_step += 1
        schedule.on_train_batch_end(trainer, None, None, None, 0)
    return schedule, trainer.global_step, lrs


def test_until_learned_decays_once_the_target_is_met_and_stops_after_the_decay():
    settings = TraceTraining(max_steps=1000, warmup_steps=5, check_every=10, decay_steps=20, target_chain_acc=0.9)
    schedule, stopped, lrs = _drive(settings, lambda step: 1.0 if step >= 137 else 0.1)  # learned at 137
    assert schedule.reached and schedule.decay_start == 140  # the first check at or after 137
    assert stopped == 160 and lrs[139] == 1.0 and lrs[150] == pytest.approx(0.5)
    assert [s for s, _ in schedule.checks] == list(range(10, 141, 10))


def test_until_learned_that_never_learns_decays_before_the_cap():
    settings = TraceTraining(max_steps=100, warmup_steps=5, check_every=10, decay_steps=20, target_chain_acc=0.9)
    schedule, stopped, _ = _drive(settings, lambda step: 0.0)
    assert not schedule.reached and schedule.decay_start == 80 and stopped == 100


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"lr": float("nan")}, "lr"),
        ({"target_chain_acc": 1.5}, "target_chain_acc"),
        ({"warmup_steps": 600, "decay_steps": 500, "max_steps": 1000}, "exceed"),
    ],
)
def test_trace_training_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TraceTraining(**kwargs, field="student.base.train")
    with pytest.raises(ValueError, match=r"student.base.train has no setting \['epochs'\]"):
        TraceTraining.from_config({"epochs": 3}, "student.base.train")


def test_learning_curve_area_and_plateau():
    assert aulc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert aulc([0], [1.0]) is None
    assert plateaued([0.1, 0.6, 0.61, 0.6], window=3, tolerance=0.03)
    assert not plateaued([0.1, 0.5, 0.6, 0.61], window=3, tolerance=0.03)
    curve = LearningCurve(every_n_steps=5, plateau_window=2, plateau_tolerance=0.0)
    curve.load_state_dict({"steps": [0, 5], "chain_acc": [0.2, 0.2]})
    assert curve.summary()["converged"] and curve.summary()["aulc"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="every_n_steps"):
        LearningCurve(every_n_steps=0)


def test_mark_asked_ends_the_asked_definition_with_a_question_mark():
    bench = SyntheticBenchmark(modulus=11, max_depth=4, rule="table", ops=["@"], n_operands=3, mark_asked=True,
                               n_train_per_depth=5, n_val_per_depth=2, n_test_per_depth=2)  # fmt: skip
    names = "abcde"
    for ex in bench.splits()["test"]:
        asked = names[ex.depth]
        assert f"{asked} = {names[ex.depth - 1]} @" in ex.question
        after = ex.question.split(f"{asked} = ", 1)[1].split(" ")[3]  # "<prev> @ <n> ?"
        last = ex.depth == 4  # the last definition is followed by the question itself
        assert after == (";" if last else "?") and ex.question.count(" ? ") == (0 if last else 1)
        assert ex.question.endswith(f"; {asked} ?")


def test_order_family_moves_the_batch_order_and_nothing_else():
    bench = SyntheticBenchmark(modulus=11, max_depth=2, n_train_per_depth=40, n_val_per_depth=2, n_test_per_depth=2)
    tok = bench.build_tokenizer()

    def first_batch(family: int, seed: int = 0) -> list[list[int]]:
        dm = ReasoningDataModule.gold(bench, tok, 8, 8, seed=seed, order_family=family)
        return next(iter(dm.train_dataloader()))["input_ids"].tolist()

    assert first_batch(0) == first_batch(0)
    assert first_batch(1) != first_batch(0)
    assert first_batch(1) == first_batch(1)
    with pytest.raises(ValueError, match="data.order_family"):
        replace(data_settings(bench), order_family=-1)


def test_student_base_is_pretrained_once_per_seed_on_a_sibling_world(make_cfg, monkeypatch):
    results = train(make_cfg("+experiment=cot_ft"))
    base = results["student"]["base"]
    path = Path(base["source"])
    meta = json.loads((path / provision.STUDENT_BASE_META).read_text())
    assert meta["world"]["seed"] == 1000 and meta["seed"] == 0  # another world, the run's seed

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the cached base should have been reused")

    monkeypatch.setattr(provision, "train_on_traces", no_pretraining)
    again = train(make_cfg("+experiment=standard_kd"))  # another method, same seed: the same block
    assert again["student"]["base"]["key"] == base["key"]
    with pytest.raises(AssertionError, match="reused"):
        train(make_cfg("+experiment=cot_ft", "seed=1"))  # another seed: another base
    scratch = train(make_cfg("+experiment=cot_ft", "student.base=null"))
    assert scratch["student"].get("base") is None


def test_student_base_key_and_world(make_cfg):
    cfg = make_cfg()
    tok = build_synthetic_tokenizer(cfg.data.benchmark.modulus)

    def key(c):
        return provision.student_base_key(student_settings(c.student), build_context(c), tok)

    assert key(make_cfg("seed=1")) != key(cfg)
    assert key(make_cfg("student.model.hidden_size=12")) != key(cfg)
    assert key(make_cfg("method.w_align=0.1")) == key(cfg)  # not the method's
    bad = make_cfg("student.base.world_seed=0")
    with pytest.raises(ValueError, match="student.base.world_seed=0 equals data.benchmark.seed"):
        provision.base_world(student_settings(bad.student), build_context(bad))
