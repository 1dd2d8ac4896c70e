"""Kill a training run mid-way (SIGKILL), rerun it in the same directory: it ends exactly where an
uninterrupted run ends (weights, metrics, curriculum), and ckpt_path=last names the same resume."""

from __future__ import annotations

import json
import signal

import torch

from tests.cli import logged, run_cli

# RTD with the depth curriculum: 144 training chains in batches of 16 = 9 batches an epoch. A
# checkpoint every 5 steps; the kill comes at step 7 (mid-epoch, in stage 2, after the step-5
# checkpoint), so the resumed run must restore the sampler's place in the epoch, the stage, the
# optimizer and RNG state, and then cross the epoch boundary at step 9 as the uninterrupted run did.
RUN = [
    "trainer.max_steps=14",
    "trainer.val_check_interval=7",
    "callbacks.model_checkpoint.every_n_train_steps=5",
    "curriculum.min_steps_per_stage=2",
    "curriculum.check_every_n_steps=2",
    "curriculum.max_steps_per_stage=4",
    "diagnostics.enabled=false",
]
KILL = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=7"]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return state


def test_killed_run_resumes_to_the_same_end(tmp_path):
    whole = run_cli(*RUN, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = run_cli(*RUN, *KILL, "hydra.run.dir=broken", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL  # a crash: no clean-up ran
    ckpt = torch.load(tmp_path / "broken" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5 and not (tmp_path / "broken" / "results.json").exists()

    # The same command again (the kill callback gone): the run directory holds a checkpoint, so it resumes.
    resumed = run_cli(*RUN, "hydra.run.dir=broken", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout

    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "broken" / "results.json").read_text())
    assert b["student"]["steps"] == a["student"]["steps"] == 14
    assert b["student"]["metrics"] == a["student"]["metrics"]
    assert b["curriculum"]["history"] == a["curriculum"]["history"]
    wa, wb = _weights(tmp_path / "whole"), _weights(tmp_path / "broken")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    # The losses after the resume are the uninterrupted run's, step by step.
    la, lb = logged(tmp_path / "whole", "train/loss"), logged(tmp_path / "broken", "train/loss")
    assert all(lb[s] == la[s] for s in range(5, 14))


def test_ckpt_path_last_needs_a_checkpoint(tmp_path):
    proc = run_cli(
        "trainer.max_steps=2", "ckpt_path=last", "diagnostics.enabled=false", "hydra.run.dir=fresh", cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "ckpt_path=last" in proc.stderr and "fresh/checkpoints/last.ckpt" in proc.stderr


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """Sampling methods (step_reward) draw from the global RNGs in every step: a resume restores them."""
    import random

    import numpy as np

    from rtd_lab.methods.base import rng_states, set_rng_states

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    torch.save({"rng": rng_states()}, tmp_path / "rng.pt")
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
