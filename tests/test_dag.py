"""data=synthetic_dag: questions with several valid reasoning paths; the evaluator and FILTER accept
every valid order, and count the distinct ones."""

from __future__ import annotations

import itertools
import math

import pytest

from rtd_lab.data.synthetic import SyntheticBenchmark, SyntheticConfig
from rtd_lab.evaluation import score
from rtd_lab.tasks.preflight import check_config
from rtd_lab.traces.filter import filter_rows, verify_steps

DAG = dict(rule="table", modulus=23, min_depth=3, max_depth=5, ops=["@"], n_operands=8, mark_asked=True, paths="dag")


@pytest.fixture(scope="module")
def bench():
    return SyntheticBenchmark(**DAG, n_train_per_depth=200, n_val_per_depth=10, n_test_per_depth=20)


def _render(steps, answer) -> str:
    return " " + " ; ".join(s.text for s in steps) + f" #### {answer}"


def _valid_orders(ex) -> list[tuple]:
    """Every order of the gold steps in which a variable comes after the branch steps before it."""

    def ok(order):
        pos = {s.text.split()[0]: i for i, s in enumerate(order)}
        names = [s.text.split()[0] for s in ex.steps]
        branches = [[n for n in names if n in "abcdefghi"], [n for n in names if n in "jklmnopq"]]
        return order[-1].text.startswith("r ") and all(
            pos[b[i]] < pos[b[i + 1]] for b in branches for i in range(len(b) - 1)
        )

    return [order for order in itertools.permutations(ex.steps) if ok(order)]


def _score(bench, ex, completion):
    return score(ex, completion, bench.parse_completion, step_marks=bench.step_marks)


def test_every_valid_order_scores_as_a_correct_chain_and_only_those(bench):
    for ex in bench.splits()["test"][::7]:
        n1 = sum(s.text[0] in "abcdefghi" for s in ex.steps)
        valid = _valid_orders(ex)
        assert len(valid) == math.comb(ex.depth - 1, n1) >= 2  # several valid paths, as many as interleavings
        for order in itertools.permutations(ex.steps):
            s = _score(bench, ex, _render(order, ex.answer))
            assert s.chain_correct == (order in valid), (ex.question, [t.text for t in order])
            assert bench.valid_path(ex, _render(order, ex.answer)) == (order in valid)


def test_the_evaluator_accepts_a_valid_non_gold_order_and_rejects_wrong_steps(bench):
    ex = next(e for e in bench.splits()["test"] if e.depth == 4)
    other = next(o for o in _valid_orders(ex) if list(o) != list(ex.steps))
    s = _score(bench, ex, _render(other, ex.answer))
    assert s.chain_correct and s.steps_correct == 4 and s.step_correct == [True] * 4
    # A wrong value in a step: that step is wrong, and so is the chain, even with the right answer.
    name, rest = other[0].text.split(" = ", 1)
    wrong = other[0].__class__(text=f"{name} = {rest.rsplit(' = ', 1)[0]} = {(other[0].value + 1) % 23}", value=None)
    s = _score(bench, ex, _render((wrong, *other[1:]), ex.answer))
    assert not s.chain_correct and s.step_correct[0] is False
    # A step repeated, or the combine step before its inputs: not a valid next step.
    s = _score(bench, ex, _render((other[0], other[0], *other[1:]), ex.answer))
    assert s.step_correct[1] is False and not s.chain_correct
    s = _score(bench, ex, _render((ex.steps[-1], *ex.steps[:-1]), ex.answer))
    assert s.step_correct[0] is False and not s.chain_correct


def test_gold_traces_take_both_branches_first(bench):
    """The gold order is drawn per question, so a teacher trained on gold traces learns several paths."""
    firsts = {ex.steps[0].text[0] in "abcdefghi" for ex in bench.splits()["train"]}
    assert firsts == {True, False}
    for ex in bench.splits()["train"][:50]:
        assert bench.valid_path(ex, _render(ex.steps, ex.answer))


def test_filter_counts_distinct_valid_paths_and_unfiltered_keeps_wrong_answers(bench):
    ex = next(e for e in bench.splits()["train"] if e.depth == 3)
    a, b = _valid_orders(ex)[:2]
    bad = (ex.steps[-1], *ex.steps[:-1])  # the gold answer through an invalid order
    row = dict(uid=ex.uid, gold_answer=str(ex.answer), teacher="t", temperature=1.0, depth=ex.depth)
    rows = [
        {**row, "completion": _render(a, ex.answer).strip()},
        {**row, "completion": _render(a, ex.answer).strip()},  # the same path again: deduplicated
        {**row, "completion": _render(b, ex.answer).strip()},
        {**row, "completion": _render(bad, ex.answer).strip()},
        {**row, "completion": _render(a, (ex.answer + 1) % 23).strip()},  # a wrong answer
    ]
    verify_steps(rows, bench)
    assert [r["steps_correct"] for r in rows] == [True, True, True, False, True]
    kept, report = filter_rows([dict(r) for r in rows])
    assert len(kept) == 3 and report["valid_paths_per_question"] == 2
    assert report["kept_wrong_steps"] == 1 and report["by_teacher"]["t"]["valid_paths_per_question"] == 2
    kept, report = filter_rows([dict(r) for r in rows], by_answer=False)
    assert len(kept) == 4 and report["by_answer"] is False  # the wrong answer too; duplicates still dropped
    assert report["kept_wrong_answers"] == 1 and report["kept_wrong_steps"] == 1  # wrong steps: gold answers only


@pytest.mark.parametrize(
    "settings, field",
    [
        (dict(min_depth=2), "data.min_depth"),
        (dict(ops=["@", "&"]), "data.ops"),
        (dict(paths="tree"), "data.paths"),
    ],
)
def test_bad_dag_settings_name_the_field(settings, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        SyntheticConfig(**{**DAG, **settings})


def test_a_method_that_checks_steps_by_index_refuses_several_paths(make_cfg):
    check_config(make_cfg("data=synthetic_dag", "+experiment=cot_ft", tiny=False))
    with pytest.raises(ValueError, match="data.benchmark.paths=dag"):
        check_config(make_cfg("data=synthetic_dag", "+experiment=step_reward", tiny=False))
