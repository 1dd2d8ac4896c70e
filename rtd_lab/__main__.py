"""Hydra entry point: ``python -m rtd_lab [+experiment=NAME] [overrides]`` (``-m`` for sweeps)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

# W&B runs offline by default through the logger's own setting (conf/logger/wandb.yaml: offline: true),
# so logger.offline=false goes online and WANDB_MODE, when the user sets it, is W&B's to read.


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


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    results = run(cfg)
    if cfg.task != "train":
        return None
    # Returned to Hydra so that sweepers (e.g. Optuna) can optimise it.
    return results["student"]["metrics"]["chain_acc"]


if __name__ == "__main__":
    main()
