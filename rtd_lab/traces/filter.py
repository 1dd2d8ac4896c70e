"""FILTER (the RFT paper): keep a sampled trace when its final answer equals the gold answer
(rejection sampling), drop repeated reasoning paths, and report acceptance rates.

    python -m rtd_lab task=filter                                   # the SAMPLE output of sample.out_dir
    python -m rtd_lab task=filter data=gsm8k_model_solutions        # the 5,276 real GSM8K traces

Answers are extracted by ``rtd_lab.traces.answers`` (``#### N``, ``The answer is N``, ``A: N``, last
number; commas, ``$`` and a trailing ``.`` normalised) and compared as exact numbers.

Deduplication follows RFT (Yuan et al. 2023): two accepted traces of one question are the same
reasoning path when they contain the same sequence of equations (GSM8K's ``<<48/2=24>>``
annotations, else every ``a op b = c`` in the text, spaces removed); a trace with no equation is
keyed by its whitespace-normalised text. The first trace of each path is kept.

Writes ``<filter.out_dir>/dataset`` (atomically; the input's columns plus ``extracted_answer``) and
``report.json`` + ``report.md`` with acceptance rates per teacher, temperature and depth. When
the input has ``is_correct`` labels (the GSM8K model solutions), the report also gives the
agreement of our answer check with them and lists every disagreement. An empty result is an error.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from itertools import pairwise

from rtd_lab.traces.answers import extract_answer, same_answer

log = logging.getLogger(__name__)
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
# An equation "a op b ... = c" is found around each "=": its left side read backwards from the "="
# (the left side's pattern, reversed), its right side forwards. One anchored match per "=" keeps
# this linear in the text; searching for the left side from every start position was quadratic.
_LHS_REVERSED = re.compile(r"\s*([\d.,]*\d-?(?:\s*[-+*/x×]\s*[\d.,]*\d-?)+)")
_RHS = re.compile(r"\s*(-?\d[\d.,]*)")


def _equations(text: str) -> list[str]:
    out = []
    for left, right in pairwise(text.split("=")):
        lhs, rhs = _LHS_REVERSED.match(left[::-1]), _RHS.match(right)
        if lhs and rhs:
            out.append(f"{lhs.group(1)[::-1]}={rhs.group(1)}".replace(" ", ""))
    return out


def reasoning_path(text: str) -> tuple[str, ...]:
    """The sequence of equations of a trace (RFT's deduplication key)."""
    annotations = _ANNOTATION.findall(text)
    if annotations:
        return tuple(a.replace(" ", "") for a in annotations)
    equations = _equations(text)
    return tuple(equations) if equations else (" ".join(text.split()),)


def verify_steps(rows: list[dict], benchmark) -> None:
    """Set ``steps_correct`` on every row where the benchmark can check a trace's steps: it has one
    correct path per question, or says which paths are valid (``valid_path``: several per question).

    Answer filtering cannot see a trace that reaches the gold answer through a wrong step (the RFT paper:
    "trace hallucination propagates"); on such a benchmark FILTER counts them, and the distinct valid
    paths it collects per question.
    """
    unique = getattr(benchmark, "unique_paths", False)
    if not unique and not hasattr(benchmark, "valid_path"):
        return
    gold = {ex.uid: ex for split in benchmark.splits().values() for ex in split}
    for r in rows:
        ex = gold.get(r["uid"])
        if ex is None:
            r["steps_correct"] = None
        elif unique:  # the one correct trace, word for word: a miscopied operand with a right value is wrong too
            r["steps_correct"] = _words(r["completion"]) == _words(benchmark.format.render(ex)[1])
        else:
            r["steps_correct"] = benchmark.valid_path(ex, r["completion"])


def _words(text: str) -> str:
    return " ".join(text.split())


def rate_table(rows: list[dict], key: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[str(r[key])].append(r)
    table = {}
    for name, g in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        accepted = sum(r["accepted"] for r in g)
        kept = sum(r["kept"] for r in g)
        table[name] = {"samples": len(g), "accepted": accepted, "rate": accepted / len(g), "unique_paths": kept}
        if any(r.get("steps_correct") is not None for r in g):
            table[name]["kept_wrong_steps"] = sum(
                r["kept"] and r["accepted"] and r.get("steps_correct") is False for r in g
            )
            table[name]["valid_paths_per_question"] = valid_paths_per_question(g)
    return table


def valid_paths_per_question(rows: list[dict]) -> float:
    """Mean over the questions of ``rows`` of the distinct reasoning paths with the gold answer and
    every step valid: what sampling across teachers and temperatures collects (the RFT paper)."""
    valid = {(r["uid"], reasoning_path(r["completion"])) for r in rows if r["accepted"] and r.get("steps_correct")}
    return len(valid) / max(1, len({r["uid"] for r in rows}))


def _sort_key(name: str) -> tuple:
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def filter_rows(rows: list[dict], by_answer: bool = True) -> tuple[list[dict], dict]:
    """Mark every row ``accepted`` (its answer is the gold one) / ``kept``; return the kept rows and
    the report. ``by_answer=False`` keeps wrong answers too (deduplicated all the same): the RFT
    paper's unfiltered samples, the arm that shows what the filter is for."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for r in rows:
        answer, how = extract_answer(r["completion"])
        r["extracted_answer"] = answer
        r["accepted"] = same_answer(answer, r["gold_answer"])
        key = (r["uid"], reasoning_path(r["completion"]))
        r["kept"] = (r["accepted"] or not by_answer) and key not in seen
        if r["kept"]:
            seen.add(key)
    kept = [r for r in rows if r["kept"]]
    report: dict = {
        "by_answer": by_answer,
        "samples": len(rows),
        "accepted": sum(r["accepted"] for r in rows),
        "kept_after_dedup": len(kept),
        "questions_with_a_kept_trace": len({r["uid"] for r in kept}),
        "questions": len({r["uid"] for r in rows}),
        "kept_wrong_answers": sum(not r["accepted"] for r in kept),  # > 0 only unfiltered
        "kept_wrong_steps": (  # the gold answer through a wrong step
            sum(r["accepted"] and r.get("steps_correct") is False for r in kept)
            if any(r.get("steps_correct") is not None for r in rows)
            else None
        ),
        "valid_paths_per_question": (
            valid_paths_per_question(rows) if any(r.get("steps_correct") is not None for r in rows) else None
        ),
        "by_teacher": rate_table(rows, "teacher"),
        "by_temperature": rate_table(rows, "temperature"),
        "by_depth": rate_table(rows, "depth"),
    }
    labelled = [r for r in rows if r.get("is_correct") is not None]
    if labelled:
        disagree = [r for r in labelled if r["accepted"] != r["is_correct"]]
        report["label_agreement"] = {
            "traces": len(labelled),
            "agree": len(labelled) - len(disagree),
            "rate": 1 - len(disagree) / len(labelled),
            "disagreements": [
                {k: r[k] for k in ("uid", "teacher", "gold_answer", "extracted_answer", "is_correct", "completion")}
                for r in disagree
            ],
        }
    return kept, report


def report_markdown(report: dict) -> str:
    lines = [
        f"{report['accepted']} of {report['samples']} traces accepted "
        f"({report['accepted'] / max(1, report['samples']):.1%}); {report['kept_after_dedup']} kept after "
        f"deduplication{'' if report.get('by_answer', True) else ' (unfiltered: wrong answers kept too)'}, "
        f"covering {report['questions_with_a_kept_trace']} of {report['questions']} questions.",
    ]
    if report.get("kept_wrong_answers"):
        lines.append(f"{report['kept_wrong_answers']} kept traces have a wrong answer.")
    wrong = report.get("kept_wrong_steps")
    if wrong is not None:
        lines.append(
            f"{wrong} kept traces ({wrong / max(1, report['kept_after_dedup']):.1%}) reach the gold answer "
            "through a wrong step (checked word for word against the one correct trace, or each valid one where "
            "a question has several; answer filtering cannot see them)."
        )
    if report.get("valid_paths_per_question") is not None:
        lines.append(
            f"Distinct valid reasoning paths per question (gold answer, every step valid): "
            f"{report['valid_paths_per_question']:.2f}."
        )
    extra = wrong is not None
    for key in ("by_teacher", "by_temperature", "by_depth"):
        head = f"| {key[3:]} | samples | accepted | rate | unique paths |"
        head += " kept, wrong steps | valid paths per question |" if extra else ""
        lines += ["", head, "|---|---|---|---|---|" + ("---|---|" if extra else "")]
        for name, g in report[key].items():
            row = f"| {name} | {g['samples']} | {g['accepted']} | {g['rate']:.3f} | {g['unique_paths']} |"
            if extra:
                row += f" {g.get('kept_wrong_steps', 0)} | {g.get('valid_paths_per_question', 0):.2f} |"
            lines.append(row)
    if "label_agreement" in report:
        a = report["label_agreement"]
        lines += ["", f"Agreement with the is_correct labels: {a['agree']} / {a['traces']} = {a['rate']:.4f}."]
    return "\n".join(lines) + "\n"
