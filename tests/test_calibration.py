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
from rtd_lab.optim import warmup_stable_decay, warmup_stable_decay_on_plateau
from rtd_lab.tasks.preflight import check_config
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


def _plateau(total=1000, **kwargs):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    settings = dict(warmup_steps=10, decay_steps=100, earliest_decay=200, patience=3, min_delta=0.01) | kwargs
    return warmup_stable_decay_on_plateau(opt, total, **settings)


def test_plateau_schedule_decays_once_the_curve_stalls_after_the_earliest_step():
    f = _plateau(total=3000, earliest_decay=500).lr_lambdas[0]
    curve = [0.1, 0.2, 0.2, 0.2, 0.2, 0.5, 0.6, 0.61, 0.615, 0.6, 0.605]  # checks every 100 steps
    for i in range(len(curve)):
        f.observe(100 * i, curve[: i + 1])
        if i == 4:  # flat at 0.2 over steps 100-400 (a curriculum's early stage), before earliest_decay
            assert f.decay_start is None
    # the best, 0.615 at 800; at 1000 the last 3 checks (0.615, 0.6, 0.605) beat the best before them
    # (0.61 at 700) by less than 0.01: stalled
    assert f.decay_start == 1000 and f.reason == "plateau"


def test_plateau_schedule_keeps_the_peak_while_the_curve_climbs_and_resumes_its_decay():
    curve = [0.0, 0.1, 0.2, 0.3, 0.32, 0.34, 0.36, 0.37, 0.37, 0.37, 0.372]
    schedule = _plateau(total=3000)
    f = schedule.lr_lambdas[0]
    for i in range(len(curve)):
        f.observe(100 * i, curve[: i + 1])
        assert f.decay_start is None or i == 10  # climbing by >= 0.01 per 3 checks until step 900
    # the last 3 checks (0.37, 0.37, 0.372) beat the best before them (0.37 at 700) by < 0.01: stalled
    assert f.decay_start == 1000 and f.reason == "plateau"
    assert f(5) == pytest.approx(0.6) and f(999) == 1.0 and f(1050) == pytest.approx(0.5) and f(1100) == 0.0
    assert not f.finished(1099) and f.finished(1100)
    # Exact resume: the decay's start travels in the scheduler's state (a callable object's __dict__).
    resumed = _plateau(total=3000)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.lr_lambdas[0].decay_start == 1000 and resumed.lr_lambdas[0](1050) == pytest.approx(0.5)


def test_plateau_schedule_that_never_stalls_decays_before_the_cap():
    f = _plateau(total=1000).lr_lambdas[0]
    for i in range(11):
        f.observe(100 * i, [0.09 * k for k in range(i + 1)])  # climbing 0.09 per check, never stalled
    assert f.decay_start is None and f.reason == "cap" and f.start() == 900
    assert f(899) == 1.0 and f(950) == pytest.approx(0.5) and not f.finished(999) and f.finished(1000)


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.scheduler.patience=0", "optim.scheduler.patience"),
        ("optim.scheduler.min_delta=1.5", "optim.scheduler.min_delta"),
        ("optim.scheduler.decay_steps=10", r"warmup_steps \+ decay_steps"),
        ("callbacks.learning_curve=null", "callbacks.learning_curve"),
    ],
)
def test_plateau_schedule_settings_are_checked_before_anything_is_built(make_cfg, override, field):
    base = ("optim=adamw_wsd_plateau", "optim.scheduler.warmup_steps=1", "optim.scheduler.decay_steps=2")
    cfg = make_cfg(*base, override)
    with pytest.raises(ValueError, match=field):
        check_config(cfg)


def test_a_run_on_the_plateau_schedule_stops_after_its_decay_and_reports_why(make_cfg):
    cfg = make_cfg(
        "+experiment=cot_ft",
        "optim=adamw_wsd_plateau",
        "optim.scheduler.warmup_steps=1",
        "optim.scheduler.decay_steps=4",
        "optim.scheduler.earliest_decay=0",
        "optim.scheduler.patience=2",
        "optim.scheduler.min_delta=0.9",  # a tiny student's curve cannot gain 0.9: stalled at the third check
        "trainer.max_steps=40",
    )
    check_config(cfg)
    curve = train(cfg)["student"]["learning_curve"]
    # checks every 2 steps: 0, 2, 4 -> stalled at 4, decays over 4 steps, stops at 8 of the 40 allowed
    assert curve["decay_start"] == 4 and curve["decay_reason"] == "plateau" and curve["converged"]
    assert curve["steps"][-1] == 8 and curve["aulc_steps"] == 0


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
