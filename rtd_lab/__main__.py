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


def run(cfg: DictConfig) -> dict:
    """The task ``cfg.task`` names, after every config error has been reported."""
    from rtd_lab.tasks import TASKS, task_function

    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r} is not one of {list(TASKS)}")
    from rtd_lab.tasks.preflight import check_config

    check_config(cfg)  # every config error before any data, model or cache is built
    if cfg.retain_freed_memory:
        from rtd_lab.utils import retain_freed_memory

        retain_freed_memory()
    result = task_function(cfg.task)(cfg)
    if cfg.task in ("sample", "filter"):
        return {"dataset": str(result)}
    return result


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
