"""SFT on gold final answers only, no trace (the RFT paper's first row): the floor that traces must beat.

    L = CE(p_S, y) over the answer tokens of "question : #### answer <eos>"

The loss is cot_ft's; what differs is the data, ``data.answer_only=true`` (set by
``+experiment=sft``), which this module declares it needs (checked before any work). Its student
answers without steps, so compare its ``answer_acc``: its ``chain_acc`` and ``step_acc`` are 0 by
construction.
"""

from __future__ import annotations

from rtd_lab.methods.cot_ft import CoTFineTune


class AnswerOnlySFT(CoTFineTune):
    data_requirements = {"answer_only": True}
