"""trainer=ddp: 2 CPU processes (gloo) follow the single-process trajectory; launcher and GPU configs."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from hydra.utils import instantiate

from tests.cli import logged, run_cli

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "diagnostics.enabled=false"]
STEPS = [
    "trainer.max_steps=8",
    "curriculum.min_steps_per_stage=2",
    "curriculum.check_every_n_steps=2",
    "curriculum.max_steps_per_stage=3",
]


def test_two_processes_follow_the_single_process_trajectory(tmp_path):
    """RTD with its depth curriculum: same global batch of 16, 8 per rank; every logged loss matches."""
    one = run_cli(*STEPS, "hydra.run.dir=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(*STEPS, *DDP, "hydra.run.dir=two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for key in ("train/loss", "train/loss_kd", "train/loss_align", "train/loss_coherence", "val/loss"):
        a, b = logged(tmp_path / "one", key), logged(tmp_path / "two", key)
        assert a.keys() == b.keys() and len(a) >= 2, key
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (key, step)
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    h1, h2 = r1["curriculum"]["history"], r2["curriculum"]["history"]
    assert [(h["end_step"], h["reason"]) for h in h2] == [(h["end_step"], h["reason"]) for h in h1]
    assert [h["value"] or 0.0 for h in h2] == pytest.approx([h["value"] or 0.0 for h in h1], rel=1e-5)
    assert r2["student"]["metrics"] == pytest.approx(r1["student"]["metrics"])
    # Evaluation and results come from rank zero alone: one results file, one depth table.
    assert two.stdout.count("| depth | teacher |") == 1
    assert (tmp_path / "two" / "train_ddp_process_1.log").exists()  # rank 1 ran in the same run directory


def test_wandb_logs_once_from_rank_zero(tmp_path):
    proc = run_cli("trainer.max_steps=2", *DDP, "logger=wandb", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1


def test_local_multirun_with_ddp_is_refused_with_the_reason(tmp_path):
    proc = run_cli("-m", "seed=0,1", "trainer.max_steps=2", *DDP, cwd=tmp_path)
    assert proc.returncode != 0
    assert "re-run the whole sweep" in proc.stderr and "submitit_slurm" in proc.stderr


def test_global_batch_must_divide_over_the_ranks(make_cfg):
    from rtd_lab.data.samplers import ShuffledBatchSampler

    with pytest.raises(ValueError, match=r"data.batch_size=15 .* 2 processes"):
        ShuffledBatchSampler(100, 15, world_size=2)
    ranks = [list(ShuffledBatchSampler(100, 16, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    whole = list(ShuffledBatchSampler(100, 16, seed=3))
    assert [sorted(a + b) for a, b in zip(*ranks, strict=True)] == [sorted(b) for b in whole]


def test_slurm_launcher_config_matches_the_trainer(make_cfg):
    cfg = make_cfg("trainer=slurm", "trainer.num_nodes=4", "hydra/launcher=submitit_slurm", tiny=False)
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == cfg.trainer.devices == 8 and launcher.gpus_per_node == 8
    assert launcher.nodes == cfg.trainer.num_nodes == 4
    assert "signal" not in launcher.additional_parameters  # submitit sends its own SIGUSR2
    env = instantiate(cfg.trainer.plugins[0])
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue
    assert env.requeue_signal == signal.SIGUSR2  # submitit's signal; NCCL may catch USR1
    assert cfg.trainer.use_distributed_sampler is False


@pytest.mark.parametrize("name", ["fsdp", "deepspeed"])
def test_gpu_strategy_configs_compose(make_cfg, name):
    cfg = make_cfg(f"trainer={name}", tiny=False)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.use_distributed_sampler is False


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed", "slurm"])
def test_every_trainer_strategy_instantiates(make_cfg, name):
    import importlib.util

    from omegaconf import OmegaConf

    from rtd_lab.tasks.preflight import check_target

    cfg = make_cfg(f"trainer={name}", tiny=False)
    node = OmegaConf.to_container(cfg.trainer.strategy, resolve=True)
    check_target("trainer.strategy", node)  # every key is one of the strategy's settings
    if name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        # Without the package Lightning refuses the strategy itself, after its arguments were accepted.
        with pytest.raises(Exception, match="(?i)install.*deepspeed"):
            instantiate(cfg.trainer.strategy)
        pytest.skip("deepspeed is not installed (pip install .[deepspeed]): arguments checked, not built")
    strategy = instantiate(cfg.trainer.strategy)
    expected = {"ddp": "DDPStrategy", "slurm": "DDPStrategy", "fsdp": "FSDPStrategy", "deepspeed": "DeepSpeedStrategy"}
    assert type(strategy).__name__ == expected[name]
    if name == "ddp":
        assert cfg.trainer.devices == "auto"  # every device of the machine


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")
def test_fsdp_bf16_trains_on_gpu(tmp_path):
    devices = min(torch.cuda.device_count(), 2)
    proc = run_cli(
        "trainer=fsdp",
        f"trainer.devices={devices}",
        "trainer.max_steps=4",
        "diagnostics.enabled=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["student"]["steps"] == 4


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")
def test_ddp_bf16_trains_on_gpu(tmp_path):
    proc = run_cli(
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=4",
        "diagnostics.enabled=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_shuffle_is_seeded_by_epoch_not_by_the_global_rng():
    """Whatever used the global RNG before training, the batches are the same (seed + epoch)."""
    from rtd_lab.data.samplers import ShuffledBatchSampler

    seeded = []
    for rng in (1, 2):
        torch.manual_seed(rng)  # the global RNG differs; the batches do not
        sampler = ShuffledBatchSampler(100, 16, seed=0)
        seeded.append([list(sampler) for _epoch in range(2)])
    assert seeded[0] == seeded[1] and seeded[0][0] != seeded[0][1]
