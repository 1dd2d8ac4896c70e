"""The depth curriculum: stage filtering in the DataModule, the teacher-calibrated threshold, the callback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import rtd_lab.methods.rtd as rtd_mod
from rtd_lab.curriculum import DepthCurriculum
from rtd_lab.data.samplers import ShuffledBatchSampler, StagedBatchSampler
from rtd_lab.losses import align_loss, coherence_loss, mean_direction_baseline, other_chain_baseline
from rtd_lab.tasks.train import train


def test_staged_sampler_draws_only_allowed_depths_and_follows_stage_changes():
    depths = [1] * 10 + [2] * 10 + [3] * 10
    stage = {"max": 1}
    sampler = StagedBatchSampler(depths, batch_size=4, max_depth_fn=lambda: stage["max"], seed=0)
    seen = []
    for i, batch in enumerate(sampler):
        seen.append({depths[j] for j in batch})
        if i == 1:
            stage["max"] = 3  # the stage ends mid-epoch: the next batch already comes from the new pool
    assert all(s == {1} for s in seen[:2])
    assert set().union(*seen[2:]) > {1}
    stage["max"] = 0
    with pytest.raises(ValueError, match="no training example has depth <= 0"):
        list(sampler)


def test_curriculum_changes_the_batch_order_only_by_its_filter():
    """With every depth allowed the staged sampler gives the plain shuffle's batches; with a stage,
    its batches are that shuffle's order with the deeper examples left out (the no-curriculum
    ablation differs from RTD in nothing else)."""
    depths = [1 + i % 3 for i in range(50)]
    plain_sampler = ShuffledBatchSampler(len(depths), batch_size=4, seed=7)
    plain = [list(b) for epoch in range(2) for b in plain_sampler]
    staged_sampler = StagedBatchSampler(depths, batch_size=4, max_depth_fn=lambda: 3, seed=7)
    staged = [list(b) for epoch in range(2) for b in staged_sampler]
    assert staged == plain and plain[0] != plain[len(plain) // 2]  # two different epochs, the same batches
    shallow_batches = list(StagedBatchSampler(depths, batch_size=4, max_depth_fn=lambda: 2, seed=7))
    assert all(len(b) == 4 for b in shallow_batches)  # full batches during a stage, across permutations
    shallow = [i for b in shallow_batches for i in b]
    assert shallow == [i for b in plain for i in b if depths[i] <= 2][: len(shallow)]


def test_mean_direction_baseline_analytic():
    # Every target points the same way: the mean direction predicts them exactly.
    same = torch.tensor([[[2.0, 0.0], [5.0, 0.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert float(mean_direction_baseline(same, mask, align_loss)) == pytest.approx(0.0, abs=1e-6)
    # Two orthogonal targets: the mean direction is at 45 degrees to both.
    ortho = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    expected = 1 - 1 / math.sqrt(2)
    assert float(mean_direction_baseline(ortho, mask, align_loss)) == pytest.approx(expected, rel=1e-5)
    assert float(mean_direction_baseline(ortho, mask, coherence_loss)) == pytest.approx(expected**2, rel=1e-5)
    # Padded entries take no part: a huge padded vector would otherwise pull the mean.
    padded = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-100.0, 7.0]]])
    assert float(mean_direction_baseline(padded, torch.tensor([[True, True, False]]), align_loss)) == pytest.approx(
        expected, rel=1e-5
    )


def test_other_chain_baseline_is_the_loss_of_another_chains_teacher_vectors():
    mask = torch.ones(3, 1, dtype=torch.bool)
    # Every chain's vector points the same way: another chain's predicts it exactly.
    same = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]], [[2.0, 0.0]]])
    assert float(other_chain_baseline(same, mask, align_loss)) == pytest.approx(0.0, abs=1e-6)
    # Three chains, two pointing one way and one orthogonal: of the 6 ordered pairs, 4 are orthogonal.
    mixed = torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]], [[0.0, 1.0]]])
    assert float(other_chain_baseline(mixed, mask, align_loss)) == pytest.approx(4 / 6, rel=1e-5)
    assert float(other_chain_baseline(mixed, mask, coherence_loss)) == pytest.approx(4 / 6, rel=1e-5)
    # It is never below the mean direction's loss on nearly collinear vectors (the stricter level).
    torch.manual_seed(0)
    near = torch.tensor([10.0, 0.0, 0.0]) + torch.randn(64, 2, 3)
    full = torch.ones(64, 2, dtype=torch.bool)
    assert other_chain_baseline(near, full, coherence_loss) > 2 * mean_direction_baseline(near, full, coherence_loss)
    # A chain without step 2 is not compared at step 2.
    ragged = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [-50.0, 3.0]]])
    assert float(other_chain_baseline(ragged, torch.tensor([[True, True], [True, False]]), align_loss)) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "kd"}, "curriculum.metric"),
        ({"threshold_ratio": 0}, "curriculum.threshold_ratio"),
        ({"chance": "uniform"}, "curriculum.chance"),
        ({"min_steps_per_stage": 10, "max_steps_per_stage": 5}, "max_steps_per_stage"),
        ({"check_every_n_steps": 0}, "curriculum.check_every_n_steps"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DepthCurriculum(**kwargs)


@pytest.mark.parametrize(("stages", "match"), [([1, 2], "must end at the deepest"), ([2, 1, 3], "increasing")])
def test_invalid_stages_name_the_field(make_cfg, stages, match):
    cfg = make_cfg(f"curriculum.stages=[{','.join(map(str, stages))}]")
    with pytest.raises(ValueError, match=match):
        train(cfg)


def _run_recording_depths(make_cfg, monkeypatch, *overrides):
    seen: list[tuple[int, int]] = []  # (global step, deepest chain in the batch)
    original = rtd_mod.RTD.training_step

    def spy(self, batch, batch_idx):
        seen.append((self.trainer.global_step, int(batch["depth"].max())))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(rtd_mod.RTD, "training_step", spy)
    fast_stages = [
        "curriculum.min_steps_per_stage=1",
        "curriculum.check_every_n_steps=1",
        "curriculum.max_steps_per_stage=2",
    ]
    cfg = make_cfg("trainer.max_steps=8", *([] if "curriculum=none" in overrides else fast_stages), *overrides)
    results = train(cfg)
    return cfg, results, seen


def test_stages_end_at_the_step_cap_and_filter_training_data(make_cfg, monkeypatch):
    # A threshold no loss can reach: every stage runs to its 2-step cap.
    cfg, results, seen = _run_recording_depths(make_cfg, monkeypatch, "curriculum.threshold_ratio=1e-12")
    history = results["curriculum"]["history"]
    assert [h["max_depth"] for h in history] == [1, 2, 3]
    assert [h["end_step"] for h in history] == [2, 4, None] and [h["reason"] for h in history[:2]] == ["step cap"] * 2
    assert history[0]["metric"] == "align" and history[1]["metric"] == "coherence"  # 1-step chains: no transition
    assert all(h["value"] is not None for h in history[:2])
    # Training batches of a stage hold only its depths; the last stage sees every depth.
    assert all(depth <= 1 for step, depth in seen if step < 2)
    assert all(depth <= 2 for step, depth in seen if step < 4)
    assert max(depth for step, depth in seen if step >= 4) == 3
    # The threshold is threshold_ratio x the teacher's chance level, recorded for each stage.
    c = results["curriculum"]
    assert len(c["thresholds"]) == 2 and all(
        t == pytest.approx(1e-12 * ch) for t, ch in zip(c["thresholds"], c["chance"], strict=True)
    )
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["curriculum"]["history"] == history
    metrics_csv = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "curriculum/stage" in metrics_csv and "curriculum/threshold" in metrics_csv


def test_stage_ends_at_the_first_check_below_threshold(make_cfg, monkeypatch):
    # A threshold every loss is below: a stage ends at its first check (min_steps_per_stage = 1).
    _, results, _ = _run_recording_depths(make_cfg, monkeypatch, "curriculum.threshold_ratio=1e12")
    history = results["curriculum"]["history"]
    assert [h["end_step"] for h in history] == [1, 2, None]
    assert [h["reason"] for h in history[:2]] == ["threshold", "threshold"]
    assert all(h["value"] < h["threshold"] for h in history[:2])


def test_no_curriculum_trains_on_every_depth_from_the_start(make_cfg, monkeypatch):
    _, results, seen = _run_recording_depths(make_cfg, monkeypatch, "curriculum=none")
    assert results["curriculum"] is None
    assert max(depth for _, depth in seen[:2]) == 3


def test_a_method_without_coherence_gets_a_clear_error(make_cfg):
    cfg = make_cfg("method=standard_kd", "curriculum=depth")  # RTD's curriculum, asked for explicitly
    with pytest.raises(ValueError, match="curriculum=none"):
        train(cfg)


def test_fixed_length_stages_work_for_any_method(make_cfg):
    cfg = make_cfg(
        "method=standard_kd",
        "curriculum=depth",
        "curriculum.metric=null",
        "trainer.max_steps=5",
        "curriculum.min_steps_per_stage=1",
        "curriculum.max_steps_per_stage=2",
    )
    history = train(cfg)["curriculum"]["history"]
    assert [(h["end_step"], h["reason"]) for h in history] == [(2, "step cap"), (4, "step cap"), (None, None)]


def test_state_round_trips_through_a_checkpoint():
    cb = DepthCurriculum(stages=[1, 2, 3])
    cb.stage, cb.stage_start, cb.thresholds, cb.chance = 1, 40, [0.1, 0.2], [0.2, 0.4]
    from rtd_lab.curriculum import StageRecord

    cb.history = [StageRecord(1, 1, 0, 40, "threshold", "align", 0.05, 0.1), StageRecord(2, 2, 40, metric="coherence")]
    restored = DepthCurriculum()
    restored.load_state_dict(cb.state_dict())
    assert restored.state_dict() == cb.state_dict()
    assert restored.stage == 1 and restored.history[0].reason == "threshold"
