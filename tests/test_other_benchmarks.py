"""MATH, StrategyQA and ARC-Challenge loaders on small fixtures written in each dataset's real format."""

from __future__ import annotations

import json

import pytest

from rtd_lab.data.gsm8k import MalformedInput
from rtd_lab.data.others import last_boxed, load_examples

MATH = [
    {
        "problem": "What is $1+1$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "We add. One plus one is two. So the answer is $\\boxed{2}$.",
    },
    {
        "problem": "Simplify $\\frac{4}{8}$.",
        "level": "Level 5",
        "type": "Algebra",
        "solution": "Divide both by $4$. The result is $\\boxed{\\frac{1}{2}}$.",
    },
]
STRATEGYQA = [
    {
        "qid": "abc123",
        "term": "Hamster",
        "description": "a rodent",
        "question": "Are more people today related to Genghis Khan than Julius Caesar?",
        "answer": True,
        "facts": ["Julius Caesar had three children.", "Genghis Khan had sixteen children."],
        "decomposition": [
            "How many kids did Julius Caesar have?",
            "How many kids did Genghis Khan have?",
            "Is #2 > #1?",
        ],
    }
]
ARC_ORIGINAL = {
    "id": "Mercury_7175875",
    "question": {
        "stem": "A planet rotates faster after a meteorite impact. Which is the most likely effect?",
        "choices": [
            {"text": "Planetary density will decrease.", "label": "A"},
            {"text": "Planetary days will become shorter.", "label": "B"},
        ],
    },
    "answerKey": "B",
}
ARC_HUB = {
    "id": "x1",
    "question": "Which is a gas?",
    "choices": {"text": ["ice", "steam"], "label": ["A", "B"]},
    "answerKey": "B",
}


def test_last_boxed_balances_braces():
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$ and") == "\\frac{1}{2}"
    assert last_boxed("$\\boxed{1}$ then $\\boxed{3}$") == "3"
    assert last_boxed("no box") is None


def test_math_folder_of_json_files_with_a_level_filter(tmp_path):
    for i, r in enumerate(MATH):
        (tmp_path / "algebra").mkdir(exist_ok=True)
        (tmp_path / "algebra" / f"{i}.json").write_text(json.dumps(r))
    examples, skipped = load_examples("math", path=str(tmp_path))
    assert [ex.answer for ex in examples] == ["2", "\\frac{1}{2}"] and skipped == 0
    assert examples[0].depth == 3 and examples[0].steps[-1].value == "2"
    hard, _ = load_examples("math", path=str(tmp_path), levels=[4, 5])
    assert [ex.answer for ex in hard] == ["\\frac{1}{2}"]


def test_strategyqa_json_list(tmp_path):
    (tmp_path / "strategyqa_train.json").write_text(json.dumps(STRATEGYQA))
    (ex,), _ = load_examples("strategyqa", path=str(tmp_path / "strategyqa_train.json"))
    assert ex.uid == "abc123" and ex.answer == "yes" and ex.depth == 3
    assert ex.steps[2].subquestion == "Is #2 > #1?"


def test_arc_original_jsonl_and_hub_layout(tmp_path):
    (tmp_path / "ARC-Challenge-Test.jsonl").write_text(json.dumps(ARC_ORIGINAL) + "\n" + json.dumps(ARC_HUB) + "\n")
    a, b = load_examples("arc_challenge", path=str(tmp_path / "ARC-Challenge-Test.jsonl"))[0]
    assert a.answer == "B" and "(B) Planetary days will become shorter." in a.question and a.steps == ()
    assert b.question == "Which is a gas? (A) ice (B) steam"


@pytest.mark.parametrize(
    ("kind", "record", "match"),
    [
        ("math", {"problem": "p", "level": "Level 1", "solution": "no box"}, ":2: the solution has no"),
        ("arc_challenge", dict(ARC_HUB, answerKey="E"), ":2: answerKey 'E' is not one of the choices"),
        ("strategyqa", {"question": "q", "answer": "maybe"}, ":2: missing or malformed field 'answer'"),
    ],
)
def test_malformed_records_name_file_and_line_or_are_counted(tmp_path, kind, record, match):
    good = {"math": MATH[0], "arc_challenge": ARC_HUB, "strategyqa": STRATEGYQA[0]}[kind]
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n" + "{broken\n")
    with pytest.raises(MalformedInput, match=match):
        load_examples(kind, path=str(f))
    examples, skipped = load_examples(kind, path=str(f), on_error="skip")
    assert len(examples) == 1 and skipped == 2
