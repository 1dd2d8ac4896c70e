"""``task=teacher``: build (or load) the run's teacher and measure it on the test split — the
robustness check of the calibration study (``teacher.train.seed``, ``teacher.train.order_family``)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.evaluation import Evaluator
from rtd_lab.models.provision import prepare_teacher
from rtd_lab.results import depth_table, environment
from rtd_lab.tasks.settings import build_context, teacher_settings
from rtd_lab.tasks.train import quiet_duplicate_logs
from rtd_lab.utils import atomic_write_json


def run_teacher(cfg: DictConfig) -> dict:
    quiet_duplicate_logs()
    benchmark = hydra.utils.instantiate(cfg.data.benchmark)
    teacher, tokenizer, info = prepare_teacher(teacher_settings(cfg.teacher), build_context(cfg), benchmark)
    bs = cfg.data.eval_batch_size
    test = ReasoningDataModule.gold(benchmark, tokenizer, bs, bs).test_dataloader()
    metrics, _ = Evaluator(tokenizer, benchmark).evaluate(teacher.model, test, "teacher eval")
    out_dir = Path(cfg.paths.output_dir)
    results = {
        "teacher": {**{k: v for k, v in info.items() if k != "config"}, "metrics": metrics},
        "depths": benchmark.depths,
        "environment": environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out_dir / "teacher_results.json", results)
    print(f"\nTeacher chain accuracy by depth, test split ({info['source']}):")
    print(depth_table(benchmark.depths, {"teacher": metrics}))
    return results
