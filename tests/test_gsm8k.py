"""GSM8K loading, answer extraction and safe arithmetic verification, on real files and small fixtures."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from rtd_lab.data.gsm8k import GSM8KBenchmark, MalformedInput, step_value
from rtd_lab.traces.answers import extract_answer, normalize_number, same_answer
from rtd_lab.traces.arith import check_annotations, evaluate

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("RTD_LAB_GSM8K", ROOT.parent / "shared" / "data" / "gsm8k"))
needs_real = pytest.mark.skipif(not (REAL / "test.jsonl").exists(), reason="GSM8K is not in ../shared/data/gsm8k")


@pytest.mark.parametrize(
    ("text", "answer", "how"),
    [
        ("so 3 + 4 = 7\n#### 1,200", "1200", "####"),
        ("Thus the answer is $18.", "18", "the answer is"),
        ("The final answer is -2.50", "-2.5", "the answer is"),
        ("12 apples\nA: 26", "26", "A:"),
        ("A: 1,234,567", "1234567", "A:"),
        ("she has 13 eggs and 5 hens", "5", "last number"),
        ("no number here", None, None),
        ("A: 3/4", "3/4", "A:"),
    ],
)
def test_extract_answer(text, answer, how):
    assert extract_answer(text) == (answer, how)


def test_normalize_and_compare():
    assert normalize_number("$1,200.") == "1200" and normalize_number("18.0") == "18"
    assert normalize_number("abc") is None
    assert same_answer("0.5", "1/2") and same_answer("18", "18.00") and not same_answer("18", None)


@pytest.mark.parametrize(
    ("expr", "value"),
    [("48/2", 24), ("3*+6", 18), ("560//10", 56), ("-(2+3)*4/8", Fraction(-5, 2)), ("0.2*50", 10), ("1,000+1", 1001)],
)
def test_evaluate(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os')", "2**3", "1/0", "(1+2", "1+", "abs(3)"])
def test_evaluate_refuses_anything_but_arithmetic(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_check_annotations():
    checks = check_annotations("She sold 48/2 = <<48/2=24>>24 and 3*5=<<3*5=16>>16 and <<x=1>>1.")
    assert [c.correct for c in checks] == [True, False, None]


def test_step_value():
    assert step_value("Natalia sold 48/2 = <<48/2=24>>24 clips in May.") == "24"
    assert step_value("She earns $1,200 a month.") == "1200"
    assert step_value("So she is happy.") is None


def _write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"question": "Q?", "answer": "A is 2+3 = <<2+3=5>>5.\nB is 5*2 = <<5*2=10>>10.\n#### 10"}


def test_loader_on_a_fixture_in_the_real_format(tmp_path):
    _write(tmp_path / "train.jsonl", [GOOD] * 5)
    _write(tmp_path / "test.jsonl", [GOOD])
    soc = dict(GOOD, answer="What is A? ** A is 2+3 = <<2+3=5>>5.\nWhat is B? ** B is 5*2 = <<5*2=10>>10.\n#### 10")
    _write(tmp_path / "test_socratic.jsonl", [soc])
    bm = GSM8KBenchmark(path=str(tmp_path), n_val=2)
    s = bm.splits()
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 2, 1]
    ex = s["test"][0]
    assert ex.depth == 2 and ex.answer == "10" and [st.value for st in ex.steps] == ["5", "10"]
    assert [st.subquestion for st in ex.steps] == ["What is A?", "What is B?"]
    assert bm.parse_completion(bm.format.render(ex)[1]) == (["5", "10"], "10")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("{not json", "train.jsonl:3: not valid JSON"),
        ({"question": "Q?"}, "train.jsonl:3: missing or non-string field 'answer'"),
        ({"question": "Q?", "answer": "1+1=2"}, "train.jsonl:3: the answer has no '#### N' line"),
        ({"question": "Q?", "answer": "x\n#### many"}, "train.jsonl:3: the final answer 'many' is not a number"),
    ],
)
def test_malformed_input_names_file_and_line_or_is_counted(tmp_path, bad, match):
    _write(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD, GOOD])
    _write(tmp_path / "test.jsonl", [GOOD])
    with pytest.raises(MalformedInput, match=match):
        GSM8KBenchmark(path=str(tmp_path), n_val=1).splits()
    skipping = GSM8KBenchmark(path=str(tmp_path), n_val=1, on_error="skip")
    assert len(skipping.splits()["train"]) == 3 and sum(skipping.skipped.values()) == 1


def test_missing_folder_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.benchmark.path"):
        GSM8KBenchmark(path=str(tmp_path / "nope")).splits()


@needs_real
def test_real_gsm8k_loads_and_every_annotation_verifies():
    bm = GSM8KBenchmark(path=str(REAL))
    s = bm.splits()
    assert [len(s[k]) for k in ("train", "val", "test")] == [7273, 200, 1319]
    assert s["test"][0].answer == "18" and s["test"][0].steps[0].subquestion == "How many eggs does Janet sell?"
    checks = [c for ex in s["train"] + s["test"] for st in ex.steps for c in check_annotations(st.text)]
    assert len(checks) > 27000 and all(c.correct for c in checks)


@needs_real
def test_answer_extraction_agrees_with_the_model_solutions_labels():
    """FILTER's answer check against the is_correct labels of the 5,276 real model traces (bar: >= 99 %)."""
    gold = {}
    for line in (REAL / "test.jsonl").read_text().splitlines():
        r = json.loads(line)
        gold[r["question"]] = extract_answer(r["answer"])[0]
    agree = total = 0
    for line in (REAL / "example_model_solutions.jsonl").read_text().splitlines():
        r = json.loads(line)
        for v in (v for v in r.values() if isinstance(v, dict)):
            total += 1
            agree += same_answer(extract_answer(v["solution"])[0], gold[r["question"]]) == v["is_correct"]
    assert total == 5276 and agree / total >= 0.99


# Verdicts of lm-evaluation-harness 0.4.13's GSM8K task (its strict-match / flexible-extract filters,
# then exact_match with the task's regexes_to_ignore and ignore_case), computed by running lm-eval's
# own RegexFilter and exact_match_hf_evaluate on these strings, against the reference "... #### gold".
LM_EVAL_TABLE = [
    # completion, gold, strict, flexible, lenient (rtd_lab's default)
    ("#### 18", "18", True, True, True),
    ("#### 18.0", "18", False, False, True),
    ("#### $1,200", "1200", False, True, True),
    ("#### 1,200", "1200", True, True, True),
    ("the answer is 7", "7", False, True, True),
    ("Janet has 3 eggs.\n#### 18.", "18", True, True, True),
    ("#### -5", "-5", True, True, True),
    ("so 4 + 5 = 9\n#### 9\nQuestion: what is 2+2? #### 4", "9", True, False, False),
    ("The answer is $42.", "42", False, True, True),
    ("nothing here", "3", False, False, False),
    ("#### 3/4", "3", True, False, False),
    ("x = 12, y = 15 so 27", "27", False, True, True),
    ("#### 007", "7", False, False, True),
    ("A: 12", "12", False, True, True),
    ("#### 18 dollars", "18", True, True, True),
    ("####18", "18", False, True, True),
    ("#### 12\n#### 13", "13", False, True, True),
]


@pytest.mark.parametrize(("text", "gold", "strict", "flexible", "lenient"), LM_EVAL_TABLE)
def test_answer_modes_match_lm_eval_gsm8k_columns(text, gold, strict, flexible, lenient):
    from rtd_lab.traces.answers import answer_in_mode

    for mode, expected in (("strict", strict), ("flexible", flexible), ("lenient", lenient)):
        bench = GSM8KBenchmark(path="unused", answer_mode=mode)
        assert (bench.parse_completion(text)[1] == gold) is expected, mode
        assert (answer_in_mode(text, mode) == gold) is expected, mode


def test_answer_modes_agree_with_lm_eval_itself_where_it_imports():
    filters = pytest.importorskip("lm_eval.filters.extraction", reason="lm-eval is not installed")
    metrics = pytest.importorskip("lm_eval.api.metrics")
    from rtd_lab.traces.answers import LM_EVAL_IGNORE, answer_in_mode

    regex = {"strict": (r"#### (\-?[0-9\.\,]+)", 0), "flexible": (r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)}
    for text, gold, *_ in LM_EVAL_TABLE:
        for mode, (pattern, select) in regex.items():
            pred = filters.RegexFilter(pattern, select).apply([[text]], [{}])[0][0]
            score = metrics.exact_match_hf_evaluate(
                [pred], [f"step\n#### {gold}"], regexes_to_ignore=list(LM_EVAL_IGNORE), ignore_case=True
            )["exact_match"]
            assert bool(score == 1.0) is (answer_in_mode(text, mode) == gold), (text, mode)


def test_an_unknown_answer_mode_is_refused():
    with pytest.raises(ValueError, match="data.benchmark.answer_mode"):
        GSM8KBenchmark(path="unused", answer_mode="loose")
