"""Teacher-generated training traces (``data.trace_source=teacher``): the RTD paper's CoT fine-tuning
baseline trains the student on the teacher's traces rather than on gold ones.

The teacher answers every training question greedily (batched, with the KV cache); its completion
is cut into steps at the benchmark's step separator and answer marker, and becomes the training
example's trace: ``ReasoningExample(question, steps=teacher's steps, answer=teacher's answer,
depth=the gold depth)``. Nothing is filtered by correctness here (that is the trace pipeline's
FILTER stage); a completion that cannot be read as steps and an answer is dropped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rtd_lab.data.batch import Collator, encode_example, move_batch
from rtd_lab.data.example import ReasoningExample, Step, TraceFormat
from rtd_lab.evaluation import Evaluator

log = logging.getLogger(__name__)


def completion_to_steps(text: str, fmt: TraceFormat, parse) -> tuple[tuple[Step, ...], object] | None:
    """``"7 + 3 = 10 ; 10 * 2 = 9 #### 9"`` → ((Step("7 + 3 = 10", 10), Step("10 * 2 = 9", 9)), 9).

    None when the text has no answer marker, no step, or a step or answer the parser cannot read.
    """
    marker = fmt.answer_prefix.strip()
    if marker not in text:
        return None
    body = text.split(marker, 1)[0]
    sep = fmt.step_sep.strip()
    if sep:
        texts = [t.strip() for t in body.split(sep)]
    else:  # a whitespace separator (GSM8K's newline): stripped it would be "", and blank lines are not steps
        texts = [t.strip() for t in body.split(fmt.step_sep) if t.strip()]
    values, answer = parse(text)
    if not texts or any(not t for t in texts) or answer is None or len(values) != len(texts) or None in values:
        return None
    return tuple(Step(t, v) for t, v in zip(texts, values, strict=True)), answer


@dataclass
class TraceReport:
    n_traces: int  # traces read (one per question for the teacher's greedy traces)
    n_kept: int
    n_unreadable: int
    n_correct: int  # traces whose answer equals the gold answer (kept regardless)


def examples_from_dataset(path: str, benchmark) -> tuple[list[ReasoningExample], TraceReport]:
    """Training examples from a SAMPLE or FILTER output on disk: one per trace row.

    The row's ``uid`` names the benchmark question it answers (its depth comes from there); the
    trace is read with ``completion_to_steps``. Unreadable rows are counted, not trained on.
    """
    import datasets

    ds = datasets.load_from_disk(str(Path(path).expanduser()))
    missing = {"uid", "completion"} - set(ds.column_names)
    if missing:
        raise ValueError(f"data.trace_source={path}: the dataset lacks the column(s) {sorted(missing)}")
    gold = {ex.uid: ex for split in benchmark.splits().values() for ex in split}
    out, unreadable, correct = [], 0, 0
    for i, row in enumerate(ds):
        ex = gold.get(row["uid"])
        if ex is None:
            raise ValueError(
                f"data.trace_source={path}: row {i} answers {row['uid']!r}, not a question of this benchmark"
            )
        parsed = completion_to_steps(row["completion"], benchmark.format, benchmark.parse_completion)
        if parsed is None:
            unreadable += 1
            continue
        steps, answer = parsed
        correct += answer == ex.answer
        out.append(ReasoningExample(f"{ex.uid}#{i}", ex.question, steps, answer, ex.depth))
    if not out:
        raise ValueError(f"data.trace_source={path}: none of its {len(ds)} traces could be read as steps and an answer")
    return out, TraceReport(len(ds), len(out), unreadable, correct)


@torch.no_grad()
def teacher_traces(model, examples: list[ReasoningExample], tokenizer, benchmark, batch_size: int):
    """One greedy teacher trace per question: (new examples, report)."""
    evaluator = Evaluator(tokenizer, benchmark)
    fmt = benchmark.format
    collate = Collator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    out: list[ReasoningExample] = []
    unreadable = correct = 0
    for start in tqdm(range(0, len(examples), batch_size), desc="teacher traces", leave=False):
        chunk = examples[start : start + batch_size]
        batch = move_batch(collate([encode_example(ex, tokenizer, fmt) for ex in chunk]), device)
        for ex, text in zip(chunk, evaluator.generate(model, batch["prompt_ids"], batch["prompt_mask"]), strict=True):
            parsed = completion_to_steps(text, fmt, benchmark.parse_completion)
            if parsed is None:
                unreadable += 1
                continue
            steps, answer = parsed
            correct += answer == ex.answer
            out.append(ReasoningExample(ex.uid, ex.question, steps, answer, ex.depth))
    report = TraceReport(len(examples), len(out), unreadable, correct)
    if not out:
        raise ValueError(
            f"data.trace_source=teacher: none of the teacher's {len(examples)} traces could be read as steps "
            "and an answer; train the teacher longer or use data.trace_source=gold"
        )
    log.info(
        "teacher traces: %d of %d questions kept (%d unreadable), %d with the gold answer",
        report.n_kept,
        report.n_traces,
        report.n_unreadable,
        report.n_correct,
    )
    return out, report
