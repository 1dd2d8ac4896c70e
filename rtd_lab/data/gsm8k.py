"""GSM8K (Cobbe et al. 2021) as a reasoning benchmark: steps = solution lines, depth = their number.

Loads the JSONL files of the public release (``train.jsonl``, ``test.jsonl``, and where present
``test_socratic.jsonl``) from a local folder — by default ``../shared/data/gsm8k`` — or, given
``hub_id``, the ``main`` (and ``socratic``) configs through ``datasets``.

    {"question": "...", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n...\\n#### 72"}

A solution line is a step; its value is the result of its last calculator annotation
(``<<48/2=24>>`` → 24), else its last number, else None. The final answer is the ``#### N`` line,
normalised (``rtd_lab.traces.answers``). The socratic file's sub-question (``How many ...? ** ``)
becomes the step's ``subquestion`` annotation. The validation split is the last ``n_val`` training
problems (GSM8K has none of its own).

Malformed input — a line that is not JSON, a missing field, an answer without ``#### N`` or with
a non-numeric one — raises an error naming the file and the line, or, with ``on_error: skip``, is
skipped and counted (``self.skipped``), never dropped silently.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from rtd_lab.data.example import ReasoningExample, Step, TraceFormat
from rtd_lab.traces.answers import ANSWER_MODES, answer_in_mode, extract_answer, normalize_number

log = logging.getLogger(__name__)
FORMAT = TraceFormat(prompt_suffix="\nAnswer:", step_sep="\n", answer_prefix="\n#### ")
_RESULT = re.compile(r"<<[^<>]*=([^<>]*)>>")
_NUMBER = re.compile(r"(?<![\w.])-?\$?\d[\d,]*+(?:\.\d+)?+(?![eE][+-]?\d)")  # as answers._NUM
DEFAULT_PATH = "../shared/data/gsm8k"


class MalformedInput(ValueError):
    """A record that cannot be read, with the file and line it came from."""


def step_value(line: str) -> str | None:
    """The quantity a solution line establishes: its last annotation's result, else its last number."""
    results = _RESULT.findall(line)
    if results:
        return normalize_number(results[-1])
    numbers = _NUMBER.findall(_RESULT.sub("", line))
    return normalize_number(numbers[-1]) if numbers else None


def strip_annotations(text: str) -> str:
    """``"48/2 = <<48/2=24>>24"`` → ``"48/2 = 24"``: the text a model is usually trained to write."""
    return re.sub(r"<<[^<>]*>>", "", text)


def parse_record(record: dict, uid: str, where: str, keep_annotations: bool = True) -> ReasoningExample:
    """One GSM8K record → ReasoningExample; ``where`` ("file:line") goes into every error."""
    for key in ("question", "answer"):
        if not isinstance(record.get(key), str):
            raise MalformedInput(f"{where}: missing or non-string field {key!r}")
    body, sep, final = record["answer"].rpartition("####")
    if not sep:
        raise MalformedInput(f"{where}: the answer has no '#### N' line")
    answer = normalize_number(final)
    if answer is None:
        raise MalformedInput(f"{where}: the final answer {final.strip()!r} is not a number")
    steps = []
    for line in (x.strip() for x in body.strip().split("\n")):
        if not line:
            continue
        subquestion = None
        if " ** " in line:  # socratic: "How many ...? ** the step"
            subquestion, line = (part.strip() for part in line.split(" ** ", 1))
        text = line if keep_annotations else strip_annotations(line)
        steps.append(Step(text=text, value=step_value(line), subquestion=subquestion))
    if not steps:
        raise MalformedInput(f"{where}: the solution has no step before '####'")
    return ReasoningExample(uid=uid, question=record["question"].strip(), steps=tuple(steps), answer=answer)


def read_jsonl(path: Path, on_error: str = "raise") -> tuple[list[tuple[int, dict]], int]:
    """(line number, record) pairs and the number of lines skipped (``on_error="skip"``)."""
    rows, skipped = [], 0
    with open(path, "rb") as f:  # bytes, decoded line by line: a bad byte is reported with its line
        for i, raw in enumerate(f, start=1):
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise MalformedInput(f"{path}:{i}: not UTF-8 (byte {err.start}: {err.reason})") from err
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as err:
                    raise MalformedInput(f"{path}:{i}: not valid JSON ({getattr(err, 'msg', err)})") from err
                if not isinstance(record, dict):
                    raise MalformedInput(f"{path}:{i}: a JSON object was expected, got {type(record).__name__}")
            except MalformedInput:
                if on_error == "skip":
                    skipped += 1
                    continue
                raise
            rows.append((i, record))
    return rows, skipped


def parse_completion(text: str, answer_mode: str = "lenient") -> tuple[list[str | None], str | None]:
    """(step values, final answer) of generated text: lines before the answer, then the answer (read
    as ``answer_mode`` says: ``rtd_lab.traces.answers.answer_in_mode``)."""
    answer = answer_in_mode(text, answer_mode)
    body = text.split("####", 1)[0]
    lines = [x.strip() for x in body.strip().split("\n") if x.strip()]
    return [step_value(x) for x in lines], answer


class GSM8KBenchmark:
    """The benchmark protocol of ``SyntheticBenchmark`` (splits, depths, format, parser, tokenizer)."""

    name = "gsm8k"
    format = FORMAT

    def __init__(
        self,
        path: str | None = DEFAULT_PATH,
        hub_id: str | None = None,
        n_val: int = 200,
        max_train: int | None = None,
        max_test: int | None = None,
        keep_annotations: bool = True,
        on_error: str = "raise",
        tokenizer_vocab_size: int = 4000,
        answer_mode: str = "lenient",
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.benchmark.on_error must be raise or skip, got {on_error!r}")
        if path is None and hub_id is None:
            raise ValueError("data.benchmark needs a local path or a hub_id")
        self.path, self.hub_id = path, hub_id
        self.n_val, self.max_train, self.max_test = n_val, max_train, max_test
        self.keep_annotations = keep_annotations
        self.on_error = on_error
        self.tokenizer_vocab_size = tokenizer_vocab_size
        if answer_mode not in ANSWER_MODES:
            raise ValueError(f"data.benchmark.answer_mode must be one of {list(ANSWER_MODES)}, got {answer_mode!r}")
        # How a completion's final answer is read (rtd_lab.traces.answers.answer_in_mode): lenient, or
        # lm-eval's strict / flexible GSM8K columns. Gold answers are integers, which every mode reads as
        # lm-eval's reference normalisation does, so a string comparison with them is lm-eval's.
        self.answer_mode = answer_mode
        self.skipped: Counter[str] = Counter()
        self._splits: dict[str, list[ReasoningExample]] | None = None

    # ---- loading ------------------------------------------------------------------------------
    def _records(self, split: str, socratic: bool = False) -> list[tuple[str, dict]]:
        """("where", record) pairs of one split, from the folder or the hub."""
        if self.hub_id is not None:
            import datasets

            ds = datasets.load_dataset(self.hub_id, "socratic" if socratic else "main", split=split)
            return [(f"{self.hub_id}[{split}]:{i}", dict(r)) for i, r in enumerate(ds)]
        root = Path(self.path).expanduser()
        name = f"{split}_socratic.jsonl" if socratic else f"{split}.jsonl"
        file = root / name
        if not file.exists():
            if socratic:
                return []
            raise FileNotFoundError(f"data.benchmark.path: {file} does not exist (GSM8K's {name} expected there)")
        rows, skipped = read_jsonl(file, self.on_error)
        self.skipped[str(file)] += skipped
        return [(f"{file}:{i}", r) for i, r in rows]

    def _parse(self, split: str, records: list[tuple[str, dict]]) -> list[ReasoningExample]:
        out = []
        for i, (where, record) in enumerate(records):
            try:
                out.append(parse_record(record, f"gsm8k/{split}/{i}", where, self.keep_annotations))
            except MalformedInput:
                if self.on_error != "skip":
                    raise
                self.skipped[where.rsplit(":", 1)[0]] += 1
        return out

    def splits(self) -> dict[str, list[ReasoningExample]]:
        if self._splits is not None:
            return self._splits
        train = self._parse("train", self._records("train"))
        test = self._parse("test", self._records("test"))
        socratic = {ex.question: ex for ex in self._parse("test", self._records("test", socratic=True))}
        if socratic:  # the sub-questions annotate the test steps (same questions, same lines)
            test = [_with_subquestions(ex, socratic.get(ex.question)) for ex in test]
        if self.n_val >= len(train):
            raise ValueError(f"data.benchmark.n_val={self.n_val} leaves no training problem (of {len(train)})")
        val, train = train[len(train) - self.n_val :], train[: len(train) - self.n_val]
        if self.max_train is not None:
            train = train[: self.max_train]
        if self.max_test is not None:
            test = test[: self.max_test]
        if sum(self.skipped.values()):
            log.warning("GSM8K: skipped malformed records: %s", dict(self.skipped))
        self._splits = {"train": train, "val": val, "test": test}
        return self._splits

    @property
    def depths(self) -> list[int]:
        return sorted({ex.depth for split in self.splits().values() for ex in split})

    # ---- what the DataModule and the evaluator need -------------------------------------------
    def build_tokenizer(self):
        """A byte-level BPE trained locally on the training problems (no download; deterministic)."""
        from rtd_lab.data.tokenizer import train_bpe_tokenizer

        texts = [ex.question + " " + " ".join(s.text for s in ex.steps) for ex in self.splits()["train"]]
        return train_bpe_tokenizer(texts, self.tokenizer_vocab_size)

    def parse_completion(self, text: str) -> tuple[list[str | None], str | None]:
        return parse_completion(text, self.answer_mode)

    def max_completion_tokens(self) -> int:
        return 256


def _with_subquestions(ex: ReasoningExample, socratic: ReasoningExample | None) -> ReasoningExample:
    if socratic is None or len(socratic.steps) != len(ex.steps):
        return ex
    steps = tuple(
        Step(s.text, s.value, subquestion=q.subquestion) for s, q in zip(ex.steps, socratic.steps, strict=True)
    )
    return ReasoningExample(ex.uid, ex.question, steps, ex.answer, ex.depth)


class GSM8KModelSolutions:
    """The 1,319 × 4 real GSM8K traces of ``example_model_solutions.jsonl`` as a SAMPLE output.

    Each record holds a test ``question``, its ``ground_truth`` solution (ending ``A: N``) and one
    ``{"is_correct", "solution"}`` per model; every solution becomes a row with SAMPLE's columns
    (``teacher`` = the model's field name, ``temperature`` unknown = None) plus ``is_correct``.
    """

    def __init__(self, path: str = f"{DEFAULT_PATH}/example_model_solutions.jsonl"):
        self.path = path

    def samples(self):
        import datasets

        file = Path(self.path).expanduser()
        if not file.exists():
            raise FileNotFoundError(f"data.path: {file} does not exist")
        rows = []
        records, _ = read_jsonl(file)
        for n, (line, record) in enumerate(records):
            where = f"{file}:{line}"
            truth = record.get("ground_truth")
            if not isinstance(record.get("question"), str) or not isinstance(truth, str):
                raise MalformedInput(f"{where}: missing or non-string field 'question' or 'ground_truth'")
            gold, _ = extract_answer(truth)
            if gold is None:
                raise MalformedInput(f"{where}: the ground_truth has no final answer")
            depth = sum(1 for x in truth.strip().split("\n") if x.strip() and not x.strip().startswith("A:"))
            models = {k: v for k, v in record.items() if isinstance(v, dict)}
            if not models:
                raise MalformedInput(f"{where}: no model solution in the record")
            for teacher, sol in models.items():
                if not isinstance(sol.get("solution"), str) or not isinstance(sol.get("is_correct"), bool):
                    raise MalformedInput(f"{where}: {teacher!r} needs a string 'solution' and a bool 'is_correct'")
                rows.append(
                    {
                        "uid": f"gsm8k/test/{n}",
                        "question": record["question"],
                        "depth": depth,
                        "gold_answer": gold,
                        "teacher": teacher,
                        "temperature": None,
                        "sample_index": 0,
                        "seed": None,
                        "completion": sol["solution"],
                        "is_correct": sol["is_correct"],
                    }
                )
        return datasets.Dataset.from_list(rows)
