"""Synthetic multi-step reasoning benchmark: chains of modular arithmetic over named variables.

A problem is a program of ``max_depth`` variables, each computed from the one before; a depth-k
question asks for the k-th::

    question:  a = 7 , b = a + 3 , c = b * 2 , d = c - 5 ; c ?       (max_depth 3, modulus 23)
    trace:     7 + 3 = 10 ; 10 * 2 = 20 #### 20

Every step substitutes the previous step's value, so step i can only be right if step i-1 was:
the sequential structure RTD assumes. A step concludes at its value token: that is its boundary.

Difficulty knobs (all in ``conf/data/synthetic.yaml``):
  modulus      size of the number field; the per-step arithmetic table has |ops|·modulus² entries
  min/max_depth  the range of chain lengths k (1..8)
  rule         "arithmetic": + - * modulo ``modulus``; "table": operators @ & % name random tables
               (one permutation per operand) that must be memorised fact by fact: much slower
               to learn (a 2-layer width-48 model was still at chance after 1500 steps)
  ops          which operators of the rule appear (default: all three)
  distractors  extra definitions, off the chain, that the trace must ignore (the definitions past
               the asked variable are distractors already)
  shuffle      present the definitions in random order (the model must look each one up by name)
  n_operands   distinct operands per operator (rule "table": facts = |ops| x n_operands x modulus)
  mark_asked   the asked variable's definition ends with "?" instead of ",": a step can see whether it
               was the last one where it reads its operand, instead of matching the step count against
               the asked name at the end of the question (a conjunction one-layer students learn after
               a plateau of random length, or not at all: experiments/calibration)
  paths        "chain": one correct trace per question (above) | "dag": several (below)

With ``paths: dag`` a question's definitions form a dependency graph: two independent branches and
a step that combines them (rule "table": ``&`` looks up a random table with the other branch's value
as its operand, ``|ops|·n_operands·modulus + modulus²`` facts; "arithmetic": ``+``)::

    question:  a = 7 , b = a @ 3 , j = 4 , k = j @ 2 , r = b & k ; r ?
    traces:    b = 7 @ 3 = 41 ; k = 4 @ 2 = 9 ; r = 41 & 9 = 3 #### 3
               k = 4 @ 2 = 9 ; b = 7 @ 3 = 41 ; r = 41 & 9 = 3 #### 3

A step names the variable it computes, so a trace can take the branches in any interleaving: a
depth-k question (k >= 3: branches of L1 + L2 = k - 1 steps, both >= 1) has C(k - 1, L1) valid traces.
The gold trace is one of them, drawn at random (each step continues either branch with equal odds
while both have steps left), so a teacher trained on gold traces learns them all, with unequal
frequencies; the evaluator accepts every valid one (``SyntheticBenchmark.step_marks``).

Splits are disjoint: test, then val, then train questions are drawn from separate random streams,
and a later split never reuses a question of an earlier one. Test and val are also unique within
themselves; train may repeat a question (a small modulus and max_depth leave few distinct ones).
"""

from __future__ import annotations

import functools
import random
import re
import string
from dataclasses import dataclass

from rtd_lab.data.example import ReasoningExample, Step, TraceFormat

OPS = ("+", "-", "*")  # rule "arithmetic": modular arithmetic
TABLE_OPS = ("@", "&", "%")  # rule "table": each names a random table, one permutation per operand
RULES = ("arithmetic", "table")
MAX_DEPTH = 8
CHAIN_NAMES = string.ascii_lowercase[: MAX_DEPTH + 1]  # a..i: a holds the start value
BRANCH_NAMES = "jklmnopq"  # paths=dag: the second branch (j holds its start value)
COMBINE_NAME = "r"  # paths=dag: the variable the two branches meet in (the asked one)
COMBINE_OP = {"table": "&", "arithmetic": "+"}
PATHS = ("chain", "dag")
DISTRACTOR_NAMES = string.ascii_lowercase[::-1][:8]  # z, y, x, ...: never on the chain
FORMAT = TraceFormat(prompt_suffix=" :", step_sep=" ; ", answer_prefix=" #### ")


@dataclass
class SyntheticConfig:
    modulus: int = 23
    min_depth: int = 1
    max_depth: int = 6
    rule: str = "arithmetic"
    ops: tuple[str, ...] | None = None  # None: every operator of the rule
    distractors: int = 0
    shuffle: bool = False
    mark_asked: bool = False  # the asked definition ends with "?" instead of ","
    n_operands: int | None = None  # None: every operand the operator allows
    paths: str = "chain"  # chain: one valid trace per question | dag: two branches and a combine step
    n_train_per_depth: int = 3000
    n_val_per_depth: int = 50
    n_test_per_depth: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"data.rule must be one of {list(RULES)}, got {self.rule!r}")
        allowed = OPS if self.rule == "arithmetic" else TABLE_OPS
        self.ops = tuple(allowed if self.ops is None else self.ops)
        if not 3 <= self.modulus <= 997:
            raise ValueError(f"data.modulus must be in [3, 997], got {self.modulus}")
        if not 1 <= self.min_depth <= MAX_DEPTH:
            raise ValueError(f"data.min_depth must be in [1, {MAX_DEPTH}], got {self.min_depth}")
        if not self.min_depth <= self.max_depth <= MAX_DEPTH:
            raise ValueError(
                f"data.max_depth must be in [data.min_depth={self.min_depth}, {MAX_DEPTH}], "
                f"got {self.max_depth} (the depth range is empty)"
            )
        bad = [op for op in self.ops if op not in allowed]
        if not self.ops or bad:
            raise ValueError(
                f"data.ops must be a non-empty subset of {list(allowed)} for data.rule={self.rule}, "
                f"got {list(self.ops)}"
            )
        if self.n_operands is not None and not 1 <= self.n_operands <= self.modulus - 2:
            raise ValueError(
                f"data.n_operands must be in [1, data.modulus - 2 = {self.modulus - 2}] or null, got {self.n_operands}"
            )
        if self.paths not in PATHS:
            raise ValueError(f"data.paths must be one of {list(PATHS)}, got {self.paths!r}")
        if self.paths == "dag" and self.min_depth < 3:
            raise ValueError(
                f"data.min_depth must be >= 3 with data.paths=dag (two branches of >= 1 step and the step "
                f"that combines them), got {self.min_depth}"
            )
        if self.paths == "dag" and COMBINE_OP[self.rule] in self.ops:
            raise ValueError(
                f"data.ops must not hold {COMBINE_OP[self.rule]!r} with data.paths=dag: it is the step that "
                f"combines the branches (a value as its operand), got {list(self.ops)}"
            )
        if not 0 <= self.distractors <= len(DISTRACTOR_NAMES):
            raise ValueError(f"data.distractors must be in [0, {len(DISTRACTOR_NAMES)}], got {self.distractors}")
        for name in ("n_train_per_depth", "n_val_per_depth", "n_test_per_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def depths(self) -> list[int]:
        return list(range(self.min_depth, self.max_depth + 1))


@functools.lru_cache(maxsize=8)
def lookup_tables(modulus: int, seed: int) -> dict[str, list[list[int]]]:
    """Rule "table": ``tables[op][n]`` is a random permutation of 0..modulus-1, fixed by the data seed.

    A permutation per operand keeps every step information-preserving (as + and - are), and a
    table has no structure a model could discover instead of memorising it: learning is gradual,
    fact by fact, where modular arithmetic is often learned all at once ("grokking").
    """
    rng = random.Random(f"tables/{modulus}/{seed}")
    tables = {}
    for op in TABLE_OPS:
        rows = []
        for _ in range(modulus):
            perm = list(range(modulus))
            rng.shuffle(perm)
            rows.append(perm)
        tables[op] = rows
    return tables


def apply_op(x: int, op: str, n: int, modulus: int, seed: int = 0) -> int:
    if op in TABLE_OPS:
        return lookup_tables(modulus, seed)[op][n][x]
    if op == "+":
        return (x + n) % modulus
    if op == "-":
        return (x - n) % modulus
    return (x * n) % modulus


def _operand(rng: random.Random, op: str, modulus: int, n_operands: int | None = None) -> int:
    # Multiplying by 0 or 1 would make a step trivial or erase the chain's history.
    low = 0 if op in TABLE_OPS else 2 if op == "*" else 1
    return low + rng.randrange(n_operands or modulus - low)


def sample_example(rng: random.Random, depth: int, cfg: SyntheticConfig, uid: str) -> ReasoningExample:
    """A program of ``cfg.max_depth`` chained definitions; the question asks for the depth-th variable.

    Every question has the same layout whatever its depth (the definitions past the asked variable
    are distractors that the trace must not use), and a trace step has as many tokens as a
    definition, so step i sits at a fixed distance from definition i: what a small model must learn
    is the arithmetic and a chain of fixed-offset look-ups, not where to look.
    """
    m = cfg.modulus
    value = rng.randrange(m)
    defs = [f"a = {value}"]
    steps = []
    for i in range(1, cfg.max_depth + 1):
        op = rng.choice(cfg.ops)
        n = _operand(rng, op, m, cfg.n_operands)
        defs.append(f"{CHAIN_NAMES[i]} = {CHAIN_NAMES[i - 1]} {op} {n}")
        new = apply_op(value, op, n, m, cfg.seed)
        if i <= depth:
            steps.append(Step(text=f"{value} {op} {n} = {new}", value=new))
        value = new
    for name in DISTRACTOR_NAMES[: cfg.distractors]:
        op = rng.choice(cfg.ops)
        src = CHAIN_NAMES[rng.randrange(cfg.max_depth + 1)]
        defs.append(f"{name} = {src} {op} {_operand(rng, op, m, cfg.n_operands)}")
    asked = defs[depth] if cfg.mark_asked else None  # before any shuffle: defs[depth] defines the asked variable
    if cfg.shuffle:
        rng.shuffle(defs)
    parts = []
    for i, d in enumerate(defs):
        parts.append(d if i == len(defs) - 1 else d + (" ?" if d == asked else " ,"))
    question = " ".join(parts) + f" ; {CHAIN_NAMES[depth]} ?"
    return ReasoningExample(uid=uid, question=question, steps=tuple(steps), answer=steps[-1].value, depth=depth)


def sample_dag_example(rng: random.Random, depth: int, cfg: SyntheticConfig, uid: str) -> ReasoningExample:
    """Two branches of chained definitions and the step that combines their last values (``paths: dag``)."""
    m = cfg.modulus
    n1 = 1 + rng.randrange(depth - 2)  # branch lengths: n1 + n2 = depth - 1, both >= 1
    defs, values, todo = [], {}, []
    for names, n in ((CHAIN_NAMES, n1), (BRANCH_NAMES, depth - 1 - n1)):
        values[names[0]] = rng.randrange(m)
        defs.append(f"{names[0]} = {values[names[0]]}")
        branch = []
        for i in range(1, n + 1):
            op = rng.choice(cfg.ops)
            k = _operand(rng, op, m, cfg.n_operands)
            defs.append(f"{names[i]} = {names[i - 1]} {op} {k}")
            x = values[names[i - 1]]
            values[names[i]] = apply_op(x, op, k, m, cfg.seed)
            branch.append(Step(text=f"{names[i]} = {x} {op} {k} = {values[names[i]]}", value=values[names[i]]))
        todo.append((branch, names[n]))
    (left, x_name), (right, k_name) = todo
    op = COMBINE_OP[cfg.rule]
    x, k = values[x_name], values[k_name]
    answer = apply_op(x, op, k, m, cfg.seed)
    for name in DISTRACTOR_NAMES[: cfg.distractors]:
        op_d = rng.choice(cfg.ops)
        src = rng.choice([d.split(" = ")[0] for d in defs])
        defs.append(f"{name} = {src} {op_d} {_operand(rng, op_d, m, cfg.n_operands)}")
    combine = f"{COMBINE_NAME} = {x_name} {op} {k_name}"
    defs.append(combine)
    if cfg.shuffle:
        rng.shuffle(defs)
    steps = []
    while left or right:  # a random interleaving of the branches: the gold trace is one valid order of many
        branch = left if left and (not right or rng.random() < 0.5) else right
        steps.append(branch.pop(0))
    steps.append(Step(text=f"{COMBINE_NAME} = {x} {op} {k} = {answer}", value=answer))
    parts = [d + (" ?" if cfg.mark_asked and d == combine else " ,") for d in defs]
    question = " ".join(parts)[:-2] + f" ; {COMBINE_NAME} ?"
    return ReasoningExample(uid=uid, question=question, steps=tuple(steps), answer=answer, depth=depth)


def generate_splits(cfg: SyntheticConfig) -> dict[str, list[ReasoningExample]]:
    """Deterministic in ``cfg``: the same config gives the same examples, in the same order."""
    sizes = {"test": cfg.n_test_per_depth, "val": cfg.n_val_per_depth, "train": cfg.n_train_per_depth}
    reserved: set[str] = set()  # questions of earlier splits
    out: dict[str, list[ReasoningExample]] = {}
    sampler = sample_dag_example if cfg.paths == "dag" else sample_example
    for split_idx, split in enumerate(("test", "val", "train")):  # held-out splits claim questions first
        unique = split != "train"
        examples: list[ReasoningExample] = []
        for depth in cfg.depths:
            rng = random.Random(f"{cfg.seed}/{split_idx}/{depth}")
            seen: set[str] = set()
            n_depth, tries = 0, 0
            while n_depth < sizes[split]:
                tries += 1
                if tries > 50 * sizes[split] + 1000:
                    raise ValueError(
                        f"data.n_{split}_per_depth={sizes[split]} is more than the distinct questions "
                        f"available at depth {depth} with data.modulus={cfg.modulus} after the other "
                        f"splits took theirs; lower it or raise data.modulus"
                    )
                ex = sampler(rng, depth, cfg, uid=f"synthetic/{split}/{depth}/{n_depth}")
                if ex.question in reserved or (unique and ex.question in seen):
                    continue
                seen.add(ex.question)
                examples.append(ex)
                n_depth += 1
            if unique:
                reserved |= seen
        out[split] = examples
    return out


_STEP_VALUE = re.compile(r"=\s*(-?\d+)\s*$")


def parse_completion(text: str) -> tuple[list[int | None], int | None]:
    """Parse a generated trace into (step values, final answer). Never evaluates the text.

    Unparseable steps give ``None`` so that they count as wrong instead of raising.
    """
    body, _, answer_part = text.partition("####")
    steps: list[int | None] = []
    for chunk in body.split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        match = _STEP_VALUE.search(chunk)
        steps.append(int(match.group(1)) if match else None)
    answer_tokens = answer_part.split()
    answer = int(answer_tokens[0]) if answer_tokens and answer_tokens[0].lstrip("-").isdigit() else None
    return steps, answer


_DEFINITION = re.compile(r"([a-z]) = ([a-z]|\d+)(?: \S+ ([a-z]|\d+))?")
_NAMED_STEP = re.compile(r"^\s*([a-z]) =")


def dag_step_marks(example: ReasoningExample, completion: str) -> list[bool]:
    """``paths: dag``: for every step of ``completion``, whether it is a valid next step.

    A step is valid when it computes a variable the asked one needs and has not been computed yet,
    after every variable it reads, with the right operands and value: its text equals the gold step
    of that variable, word for word. So every topological order of the gold steps is valid, and the
    chain is right when every step is valid and every gold step is there (``score``'s count check).
    """
    gold = {_NAMED_STEP.match(s.text).group(1): " ".join(s.text.split()) for s in example.steps}
    reads = {name: {src for src in (a, b) if src in gold} for name, a, b in _DEFINITION.findall(example.question)}
    done: set[str] = set()
    marks = []
    body = completion.partition("####")[0]
    for chunk in body.split(";"):
        if not chunk.strip():
            continue
        name = _NAMED_STEP.match(chunk)
        name = name.group(1) if name else None
        ok = (
            name in gold
            and name not in done
            and reads.get(name, set()) <= done
            and " ".join(chunk.split()) == gold[name]
        )
        if ok:
            done.add(name)
        marks.append(ok)
    return marks


class SyntheticBenchmark:
    """What the DataModule and the evaluator need from a benchmark (``data.benchmark._target_``)."""

    name = "synthetic"
    format = FORMAT

    SETTINGS = SyntheticConfig  # what data.benchmark may set (rtd_lab.tasks.preflight checks it before any work)

    def __init__(self, **kwargs):
        self.cfg = SyntheticConfig(**kwargs)
        self._splits: dict[str, list[ReasoningExample]] | None = None

    @property
    def unique_paths(self) -> bool:
        """One correct chain of step values per question (paths: chain), so a sampled trace's steps can
        be checked against the gold ones position by position (FILTER reports traces with the right
        answer but a wrong step). With paths: dag, ``step_marks`` checks them."""
        return self.cfg.paths == "chain"

    def step_marks(self, example: ReasoningExample, completion: str) -> list[bool]:
        """Per step of ``completion``: is it right? Chain: its value is the gold value at its index.
        Dag: it is a valid next step of some valid order (``dag_step_marks``)."""
        if self.cfg.paths == "dag":
            return dag_step_marks(example, completion)
        values, _ = parse_completion(completion)
        gold = [s.value for s in example.steps]
        return [i < len(gold) and v == gold[i] for i, v in enumerate(values)]

    def valid_path(self, example: ReasoningExample, completion: str) -> bool:
        """Every step right and every gold step there: a valid reasoning path (of several, with dag)."""
        marks = self.step_marks(example, completion)
        return len(marks) == len(example.steps) and all(marks)

    @property
    def depths(self) -> list[int]:
        return self.cfg.depths

    def splits(self) -> dict[str, list[ReasoningExample]]:
        if self._splits is None:
            self._splits = generate_splits(self.cfg)
        return self._splits

    def build_tokenizer(self):
        from rtd_lab.data.tokenizer import build_synthetic_tokenizer

        return build_synthetic_tokenizer(self.cfg.modulus)

    @staticmethod
    def parse_completion(text: str) -> tuple[list[int | None], int | None]:
        return parse_completion(text)

    def max_completion_tokens(self) -> int:
        # "7 + 3 = 10 ;" is 6 tokens a step (dag's "b = 7 + 3 = 10 ;" 8), "#### 10 <eos>" 3 more; slack
        # for a rambling model.
        return (8 if self.cfg.paths == "dag" else 6) * self.cfg.max_depth + 8
