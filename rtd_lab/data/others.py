"""Loaders for the RTD paper's other benchmarks — MATH, StrategyQA, ARC-Challenge — from a local file in
the dataset's published format, or from a hub id through ``datasets``. Each record becomes a
``ReasoningExample``; malformed records raise an error naming the file and line (or record index),
or are skipped and counted with ``on_error="skip"``.

MATH (Hendrycks et al. 2021): ``{"problem", "level": "Level 3", "type", "solution"}`` — one JSON file
  per problem, a JSON list, or JSONL. Steps = the solution's sentences; the answer is the last
  ``\\boxed{...}`` (braces balanced). ``levels`` keeps only those difficulty levels.
StrategyQA (Geva et al. 2021): ``[{"qid", "question", "answer": bool, "decomposition": [...], "facts"}]``.
  Steps = the decomposition's sub-questions (each annotated with itself); answer "yes" / "no".
ARC-Challenge (Clark et al. 2018), the original JSONL: ``{"id", "question": {"stem", "choices":
  [{"label", "text"}]}, "answerKey"}``, or the hub layout ``{"question", "choices": {"label", "text"},
  "answerKey"}``. No reasoning trace comes with it: no steps; the answer is the choice label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from rtd_lab.data.example import ReasoningExample, Step
from rtd_lab.data.gsm8k import MalformedInput

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z$\\])")


def iter_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """("file:line" or "file[index]", record) from a JSON file (object or list), JSONL, or a folder of them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.benchmark.path: {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    for file in files:
        text = file.read_text(encoding="utf-8")
        if file.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        yield f"{file}:{i}", json.loads(line)
                    except json.JSONDecodeError as err:
                        yield f"{file}:{i}", MalformedInput(f"{file}:{i}: not valid JSON ({err.msg})")
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            yield f"{file}:{err.lineno}", MalformedInput(f"{file}:{err.lineno}: not valid JSON ({err.msg})")
            continue
        if isinstance(data, list):
            yield from ((f"{file}[{i}]", r) for i, r in enumerate(data))
        else:
            yield str(file), data


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def _need(record: object, where: str, fields: dict[str, type | tuple]) -> dict:
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise MalformedInput(f"{where}: a JSON object was expected")
    for name, kind in fields.items():
        if not isinstance(record.get(name), kind):
            raise MalformedInput(f"{where}: missing or malformed field {name!r}")
    return record


def parse_math(record: object, where: str, uid: str) -> ReasoningExample:
    r = _need(record, where, {"problem": str, "solution": str})
    answer = last_boxed(r["solution"])
    if answer is None:
        raise MalformedInput(f"{where}: the solution has no \\boxed{{...}} answer")
    sentences = [s.strip() for s in _SENTENCE.split(r["solution"].strip()) if s.strip()]
    steps = tuple(Step(s, last_boxed(s)) for s in sentences)
    return ReasoningExample(uid, r["problem"].strip(), steps, answer, len(steps))


def parse_strategyqa(record: object, where: str, uid: str) -> ReasoningExample:
    r = _need(record, where, {"question": str, "answer": bool})
    decomposition = r.get("decomposition") or []
    if not isinstance(decomposition, list) or not all(isinstance(d, str) for d in decomposition):
        raise MalformedInput(f"{where}: 'decomposition' must be a list of strings")
    steps = tuple(Step(d, None, subquestion=d) for d in decomposition)
    return ReasoningExample(r.get("qid", uid), r["question"].strip(), steps, "yes" if r["answer"] else "no", len(steps))


def parse_arc(record: object, where: str, uid: str) -> ReasoningExample:
    r = _need(record, where, {"answerKey": str})
    q = r.get("question")
    if isinstance(q, dict):  # the original release
        stem, choices = q.get("stem"), q.get("choices")
        if not isinstance(stem, str) or not isinstance(choices, list):
            raise MalformedInput(f"{where}: 'question' needs 'stem' and a 'choices' list")
        pairs = [(c.get("label"), c.get("text")) for c in choices]
    elif isinstance(q, str) and isinstance(r.get("choices"), dict):  # the hub layout
        stem, pairs = q, list(zip(r["choices"].get("label", []), r["choices"].get("text", []), strict=False))
    else:
        raise MalformedInput(f"{where}: missing or malformed field 'question'")
    if not pairs or any(not isinstance(lab, str) or not isinstance(t, str) for lab, t in pairs):
        raise MalformedInput(f"{where}: malformed 'choices'")
    if r["answerKey"] not in {lab for lab, _ in pairs}:
        raise MalformedInput(f"{where}: answerKey {r['answerKey']!r} is not one of the choices")
    question = stem.strip() + " " + " ".join(f"({lab}) {t}" for lab, t in pairs)
    return ReasoningExample(r.get("id", uid), question, (), r["answerKey"], 0)


PARSERS = {"math": parse_math, "strategyqa": parse_strategyqa, "arc_challenge": parse_arc}


def load_examples(
    kind: str,
    path: str | None = None,
    hub_id: str | None = None,
    hub_config: str | None = None,
    split: str = "test",
    levels: list[int] | None = None,
    on_error: str = "raise",
) -> tuple[list[ReasoningExample], int]:
    """(examples, number skipped) of one benchmark split, from a local file/folder or the hub."""
    if kind not in PARSERS:
        raise ValueError(f"data.benchmark.kind must be one of {list(PARSERS)}, got {kind!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.benchmark.on_error must be raise or skip, got {on_error!r}")
    if hub_id is not None:
        import datasets

        ds = datasets.load_dataset(hub_id, hub_config, split=split)
        records: Iterator[tuple[str, object]] = ((f"{hub_id}[{split}][{i}]", dict(r)) for i, r in enumerate(ds))
    elif path is not None:
        records = iter_records(path)
    else:
        raise ValueError("data.benchmark needs a path or a hub_id")
    out, skipped = [], 0
    for i, (where, record) in enumerate(records):
        try:
            if kind == "math" and levels is not None:
                level = _need(record, where, {"level": str})["level"]
                match = re.search(r"\d+", level)
                if not match:
                    raise MalformedInput(f"{where}: level {level!r} has no number")
                if int(match.group()) not in levels:
                    continue
            out.append(PARSERS[kind](record, where, f"{kind}/{split}/{i}"))
        except MalformedInput:
            if on_error == "raise":
                raise
            skipped += 1
    return out, skipped
