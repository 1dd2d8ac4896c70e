"""Hydra entry point: ``python -m rtd_lab [+experiment=NAME] [overrides]`` (``-m`` for sweeps)."""

from __future__ import annotations

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

# W&B never needs a server here: offline unless the user asks otherwise, and no prompts in CI.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TASKS = ("train", "teacher", "sample", "filter", "segment", "cache", "report")


def run(cfg: DictConfig) -> dict:
    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r} is not one of {list(TASKS)}")
    from rtd_lab.preflight import check_config

    check_config(cfg)  # every config error before any data, model or cache is built
    if cfg.retain_freed_memory:
        from rtd_lab.utils import retain_freed_memory

        retain_freed_memory()
    # heavy imports after Hydra has parsed the command line
    if cfg.task == "sample":
        from rtd_lab.traces.sample import run_sample

        return {"dataset": str(run_sample(cfg))}
    if cfg.task == "filter":
        from rtd_lab.traces.filter import run_filter

        return {"dataset": str(run_filter(cfg))}
    if cfg.task == "report":
        from rtd_lab.report import run_report

        return run_report(cfg)
    if cfg.task == "cache":
        from rtd_lab.train import run_cache

        return run_cache(cfg)
    if cfg.task == "teacher":
        from rtd_lab.train import run_teacher

        return run_teacher(cfg)
    if cfg.task == "segment":
        from rtd_lab.traces.segment import run_segment

        return run_segment(cfg)
    from rtd_lab.train import train

    return train(cfg)


def check_sweep_mode() -> None:
    """A sweep file (paper_table, ablations) run without -m would silently run one default job."""
    hc = HydraConfig.get()
    params = hc.sweeper.get("params") or {}
    if hc.mode == RunMode.RUN and any(key.startswith("+experiment") for key in params):
        name = hc.runtime.choices.get("experiment", "?")
        raise SystemExit(
            f"+experiment={name} is a sweep over experiments: run it with -m (python -m rtd_lab -m +experiment={name})"
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    check_sweep_mode()
    results = run(cfg)
    if cfg.task != "train":
        return None
    # Returned to Hydra so that sweepers (e.g. Optuna) can optimise it.
    return results["student"]["metrics"]["chain_acc"]


if __name__ == "__main__":
    main()
