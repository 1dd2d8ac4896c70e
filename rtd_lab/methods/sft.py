"""SFT on gold final answers only, no trace (the RFT paper's first row): the floor that traces must beat.

    L = CE(p_S, y) over the answer tokens of "question : #### answer <eos>"

The loss is cot_ft's; what differs is the data, ``data.answer_only=true`` (set by
``+experiment=sft``), which this module insists on. Its student answers without steps, so compare
its ``answer_acc``: its ``chain_acc`` and ``step_acc`` are 0 by construction.
"""

from __future__ import annotations

from rtd_lab.methods.cot_ft import CoTFineTune


class AnswerOnlySFT(CoTFineTune):
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and not getattr(datamodule, "answer_only", False):
            raise ValueError(
                "method sft trains on gold answers alone: set data.answer_only=true (+experiment=sft does)"
            )
