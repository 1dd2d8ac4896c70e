"""Teacher-generated training traces (data.trace_source=teacher)."""

from __future__ import annotations

import pytest

import rtd_lab.traces.teacher as traces_mod
from rtd_lab.data.synthetic import FORMAT, parse_completion
from rtd_lab.tasks.train import train
from rtd_lab.traces.teacher import completion_to_steps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 + 3 = 10 ; 10 * 2 = 9 #### 9", ((("7 + 3 = 10", 10), ("10 * 2 = 9", 9)), 9)),
        ("7 + 3 = 10 #### 4", ((("7 + 3 = 10", 10),), 4)),  # read as written: correctness is FILTER's job
        ("7 + 3 = 10 ; 10 * 2 = 9", None),  # no answer
        ("7 + 3 = 10 ; ; 1 + 1 = 2 #### 2", None),  # an empty step
        ("7 + 3 = ; 10 * 2 = 9 #### 9", None),  # a step without a value
        ("#### 9", None),
    ],
)
def test_completion_to_steps(text, expected):
    parsed = completion_to_steps(text, FORMAT, parse_completion)
    if expected is None:
        assert parsed is None
    else:
        steps, answer = parsed
        assert [(s.text, s.value) for s in steps] == list(expected[0]) and answer == expected[1]


class ScriptedTeacher:
    """Stands in for greedy teacher generation: the gold trace, except for every third question,
    whose last value is off by one, and every fifth, which rambles without an answer."""

    def __init__(self, tokenizer, benchmark):
        self.tokenizer = tokenizer
        self.by_question = {ex.question: ex for split in benchmark.splits().values() for ex in split}

    def generate(self, model, prompt_ids, prompt_mask):
        texts = []
        for row, mask in zip(prompt_ids, prompt_mask, strict=True):
            prompt = self.tokenizer.decode(row[mask.bool()], skip_special_tokens=True)
            ex = self.by_question[prompt[: -len(FORMAT.prompt_suffix)].strip()]
            i = int(ex.uid.rsplit("/", 1)[1])
            if i % 5 == 0:
                texts.append("7 + 3 = 10 ; 10 * 2")
                continue
            steps = [s.text for s in ex.steps]
            answer = ex.answer
            if i % 3 == 0:
                head, _, value = steps[-1].rpartition(" ")
                answer = int(value) + 1
                steps[-1] = f"{head} {answer}"
            texts.append(" ; ".join(steps) + f" #### {answer}")
        return texts


def test_cot_ft_trains_on_the_teachers_traces(make_cfg, monkeypatch):
    monkeypatch.setattr(traces_mod, "Evaluator", ScriptedTeacher)
    cfg = make_cfg("+experiment=cot_ft", "data.trace_source=teacher")
    seen = {}
    original = traces_mod.teacher_traces

    def spy(*args, **kwargs):
        seen["out"] = original(*args, **kwargs)
        return seen["out"]

    monkeypatch.setattr("rtd_lab.tasks.train.teacher_traces", spy)
    results = train(cfg)
    report = results["teacher_traces"]
    n = 3 * 48  # TINY: 3 depths x 48 training questions, uids .../0 .. .../47 per depth
    unreadable = 3 * len(range(0, 48, 5))
    wrong = 3 * len([i for i in range(48) if i % 3 == 0 and i % 5])
    assert report == {
        "n_traces": n,
        "n_kept": n - unreadable,
        "n_unreadable": unreadable,
        "n_correct": n - unreadable - wrong,
    }
    examples, _ = seen["out"]
    off = [ex for ex in examples if int(ex.uid.rsplit("/", 1)[1]) % 3 == 0]
    assert off and all(ex.steps[-1].value == ex.answer for ex in off)  # the teacher's (wrong) values, as generated


def test_trace_source_is_validated(make_cfg):
    with pytest.raises(Exception, match="data.trace_source"):
        train(make_cfg("data.trace_source=silver"))
