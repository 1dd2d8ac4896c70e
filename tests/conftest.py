"""Shared test fixtures: compose the real Hydra config once, then shrink it (tiny models, few steps)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# No network in tests: hub look-ups fail fast, W&B stays offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONF_DIR = str(Path(__file__).resolve().parents[1] / "rtd_lab" / "conf")

# Overrides that make any experiment run in seconds on a 2-core CPU.
TINY = [
    "data.benchmark.max_depth=3",
    "data.benchmark.n_train_per_depth=48",
    "data.benchmark.n_val_per_depth=4",
    "data.benchmark.n_test_per_depth=4",
    "data.max_train_examples=null",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "teacher.model.hidden_size=16",
    "teacher.model.intermediate_size=32",
    "teacher.model.num_hidden_layers=2",
    "teacher.model.num_attention_heads=2",
    "teacher.model.num_key_value_heads=2",
    "teacher.train.max_steps=3",
    "teacher.train.batch_size=16",
    "teacher.train.warmup_steps=1",
    "teacher.train.decay_steps=1",
    "teacher.train.target_chain_acc=null",
    "student.model.hidden_size=8",
    "student.model.intermediate_size=16",
    "student.model.num_hidden_layers=2",
    "student.model.num_attention_heads=2",
    "student.model.num_key_value_heads=2",
    "student.base.train.max_steps=3",
    "student.base.train.batch_size=16",
    "student.base.train.warmup_steps=1",
    "student.base.train.decay_steps=1",
    "student.base.train.target_chain_acc=null",
    "callbacks.learning_curve.every_n_steps=2",
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "logger=csv",
    "parallel_builds=false",  # a second process costs more than these 3-step builds (one test turns it on)
]


def _shrink(overrides: list[str], tiny: bool) -> list[str]:
    if not tiny:
        return []
    pretrained_teacher = "teacher=pretrained" in overrides  # no architecture or training to shrink
    other_data = any(o.startswith("data=") for o in overrides)  # not the synthetic benchmark's knobs
    return [
        o
        for o in TINY
        if not (pretrained_teacher and o.startswith("teacher.")) and not (other_data and o.startswith("data."))
    ]


def compose_cfg(overrides: list[str], tmp_path: Path, tiny: bool = True) -> DictConfig:
    """The real config as ``python -m rtd_lab <overrides>`` would build it, with paths under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=_shrink(overrides, tiny) + list(overrides),
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    # A fresh run directory per composed config: a reused one would resume the earlier run (train()).
    runs = sorted(tmp_path.glob("run*"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / ("run" if not runs else f"run{len(runs)}"))
        cfg.paths.cache_dir = str(tmp_path / "cache")
        del cfg["hydra"]  # as in a real run: the app's config does not carry Hydra's own node
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path, tiny=tiny)

    return _make


@pytest.fixture(scope="module")
def gold_batch():
    """(tokenizer, benchmark, one training batch of gold traces) of a tiny synthetic benchmark: the
    on-policy methods' tests sample the student for its questions."""
    from rtd_lab.data.datamodule import ReasoningDataModule
    from rtd_lab.data.synthetic import SyntheticBenchmark
    from rtd_lab.data.tokenizer import build_synthetic_tokenizer

    tok = build_synthetic_tokenizer(11)
    bm = SyntheticBenchmark(modulus=11, max_depth=3, n_train_per_depth=16, n_val_per_depth=4, n_test_per_depth=4)
    dm = ReasoningDataModule.gold(bm, tok, 12, 12)
    return tok, bm, next(iter(dm.train_dataloader()))
