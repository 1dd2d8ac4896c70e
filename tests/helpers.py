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
