"""Test-only pieces that a CLI run loads by config (``+callbacks.kill._target_=tests.helpers.KillAtStep``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process when training reaches ``step`` (before that step runs): a crash, not an exit."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def data_settings(benchmark):
    """``DataSettings`` of ``benchmark`` with the rest of conf/data/synthetic.yaml's defaults (seed 0)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from rtd_lab.data.training_set import DataSettings

    node = OmegaConf.load(Path(__file__).parent.parent / "rtd_lab" / "conf" / "data" / "synthetic.yaml")
    fields = {k: v for k, v in OmegaConf.to_container(node).items() if k not in ("_target_", "benchmark", "seed")}
    return DataSettings(benchmark=benchmark, seed=0, **fields)
