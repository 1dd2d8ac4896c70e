"""The unit every benchmark produces: a question, its reasoning steps, the answer and the depth.

Step boundaries are first-class: ``render`` returns, with the text, the character offset at
which every step concludes, so any tokenizer (ours, or a pretrained model's) can map them to the
boundary token through its offset mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    text: str  # e.g. "b = 7 + 3 = 10"; the step concludes at its last character
    value: int | float | str | None  # the quantity the step establishes (None: none could be read)
    subquestion: str | None = None  # a human decomposition of the step, where a dataset has one


@dataclass(frozen=True)
class TraceFormat:
    """How a benchmark lays out question → trace → answer as one string."""

    prompt_suffix: str = " :"  # ends the prompt; generation starts after it
    step_sep: str = " ; "
    answer_prefix: str = " #### "

    def render(self, ex: ReasoningExample, with_trace: bool = True) -> tuple[str, str, list[int]]:
        """Return ``(prompt, completion, step_ends)``.

        ``step_ends[i]`` is the offset, in ``prompt + completion``, of the last character of step i.
        ``with_trace=False`` gives the answer alone (the RFT paper's "SFT on gold answers"), no steps.
        """
        prompt = ex.question + self.prompt_suffix
        if not with_trace:
            return prompt, self.answer_prefix + str(ex.answer), []
        parts, ends, pos = [], [], len(prompt) + 1  # completion starts with one space
        for i, step in enumerate(ex.steps):
            if i:
                parts.append(self.step_sep)
                pos += len(self.step_sep)
            parts.append(step.text)
            pos += len(step.text)
            ends.append(pos - 1)
        completion = " " + "".join(parts) + self.answer_prefix + str(ex.answer)
        return prompt, completion, ends


@dataclass(frozen=True)
class ReasoningExample:
    uid: str  # stable id, unique within a benchmark, e.g. "synthetic/test/3/17"
    question: str
    steps: tuple[Step, ...]
    answer: int | float | str
    depth: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.depth == -1:
            object.__setattr__(self, "depth", len(self.steps))
