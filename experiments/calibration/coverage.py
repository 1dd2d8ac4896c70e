"""The transfer set's coverage ceiling: which test chains use only facts the student's training set shows.

On the table rule a fact ("59 @ 5 = 29") is arbitrary, so a student that learns exactly the facts
its training traces show, and chains them without error, answers a test chain right if and only if
every one of the chain's facts is shown. That share, per depth, is the ceiling of "learning the
transfer set"; a method scores above it only by teaching facts the traces do not show (the teacher's
soft labels or hidden states would have to carry them).

    python experiments/calibration/coverage.py                          # the default config
    python experiments/calibration/coverage.py data.max_train_examples=null
    python experiments/calibration/coverage.py data.benchmark.max_depth=8 data.train_max_depth=4   # length gen.
    # which test chains runs got right, split by covered / not (add the runs' data overrides, if any):
    python experiments/calibration/coverage.py <run dir>/predictions_student.jsonl ...
"""

import json
import re
import sys
from collections import Counter
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rtd_lab.data.training_set import subset

CONF = Path(__file__).resolve().parents[2] / "rtd_lab" / "conf"
FACT = re.compile(r"(\d+) (\S) (\d+) = (\d+)")


def facts(example) -> list[tuple[str, str, str]]:
    """The (value, operator, operand) of each step of a gold trace."""
    return [FACT.fullmatch(step.text).groups()[:3] for step in example.steps]


def solved_beyond(predictions: Path, uses: Counter) -> str:
    """A run's chain accuracy on the test chains whose every fact is shown, and on the others: a
    student that scores on the others learned facts its training traces do not show."""
    split: dict[bool, list[bool]] = {True: [], False: []}
    for line in predictions.read_text().splitlines():
        rec = json.loads(line)
        shown = all(FACT.fullmatch(s).groups()[:3] in uses for s in rec["gold_steps"])
        split[shown].append(bool(rec["chain_correct"]))
    cells = [f"{sum(v) / len(v):.3f} ({sum(v)} of {len(v)})" if v else "–" for v in (split[True], split[False])]
    return f"| {predictions.parent.name} | " + " | ".join(cells) + " |"


def main(overrides: list[str], predictions: list[Path]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    bench = instantiate(cfg.data.benchmark)
    splits = bench.splits()
    train = splits["train"]
    if cfg.data.get("train_max_depth") is not None:  # as build_splits: the short chains, then the subset
        train = [e for e in train if e.depth <= cfg.data.train_max_depth]
    if cfg.data.max_train_examples is not None:
        train = subset(train, cfg.data.max_train_examples)
    uses = Counter(f for e in train for f in facts(e))
    b = cfg.data.benchmark
    n_facts = len(b.ops) * b.n_operands * b.modulus
    print(
        f"training examples: {len(train)}; facts shown: {len(uses)} of {n_facts} ({len(uses) / n_facts:.3f}), "
        f"{sum(v == 1 for v in uses.values())} of them once"
    )
    print("| depth | test chains whose every fact is shown |")
    print("|---|---|")
    test = splits["test"]
    for d in bench.depths:
        chains = [e for e in test if e.depth == d]
        print(f"| {d} | {sum(all(f in uses for f in facts(e)) for e in chains) / len(chains):.3f} |")
    print(f"| all | {sum(all(f in uses for f in facts(e)) for e in test) / len(test):.3f} |")
    if predictions:
        print("\n| run | chain acc, every fact shown | chain acc, some fact not shown |\n|---|---|---|")
        for path in predictions:
            print(solved_beyond(path, uses))


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if not a.endswith(".jsonl")], [Path(a) for a in args if a.endswith(".jsonl")])
