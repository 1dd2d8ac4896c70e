"""The coverage ceiling of each arm's training set (see experiments/calibration/coverage.py): the share of
test chains whose every fact ("59 @ 5 = 29", with its correct value) appears in the arm's 500 training traces.
The RFT arms train on a fixed-seed subset of what FILTER kept, so their sets differ from the gold arm's set
in which questions they hold, not only in how the traces were made.

    python experiments/rft_table/coverage.py [cache dir]     # after the rft_table sweep (it reads its samples)
    python experiments/rft_table/coverage.py [cache dir] rft_dag   # the same for the rft_dag sweep's arms
"""

import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from rtd_lab.data.training_set import subset
from rtd_lab.tasks.rft import rft_key
from rtd_lab.traces.teacher import examples_from_dataset

CONF = Path(__file__).resolve().parents[2] / "rtd_lab" / "conf"
# A step's fact: "59 @ 5 = 29" (data=synthetic_dag's steps name their variable first: "b = 59 @ 5 = 29").
FACT = re.compile(r"(?:^|= )(\d+) (\S) (\d+) = (\d+)$")


def facts(example) -> set[tuple[str, ...]]:
    return {m.groups() for step in example.steps if (m := FACT.search(" ".join(step.text.split())))}


def main(cache_dir: str, experiment: str = "rft_table") -> None:
    rows = []
    sweep = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    arms = [a for a in re.search(r"\+experiment@_global_: (\S+)", sweep).group(1).split(",") if a != "rft_sft_answers"]
    for arm in arms:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose("config", overrides=[f"+experiment={experiment}", f"+experiment@_global_={arm}"])
        with open_dict(cfg):
            cfg.paths.cache_dir = cache_dir
        bench = instantiate(cfg.data.benchmark)
        if arm == "rft_sft_traces":
            train = bench.splits()["train"]
        else:
            folder = "filtered" if cfg.filter.by_answer else "unfiltered"
            kept = Path(cache_dir) / "samples" / rft_key(cfg) / folder / "dataset"
            train, _ = examples_from_dataset(str(kept), bench)
        train = subset(train, cfg.data.max_train_examples)
        shown = set().union(*(facts(e) for e in train))
        test = bench.splits()["test"]
        by_depth = [
            sum(facts(e) <= shown for e in test if e.depth == d) / sum(e.depth == d for e in test) for d in bench.depths
        ]
        rows.append((arm, len(shown), by_depth, sum(facts(e) <= shown for e in test) / len(test)))
    print("| arm | distinct facts shown (any value) | " + " | ".join(f"depth {d}" for d in bench.depths) + " | all |")
    print("|---|---|" + "---|" * (len(bench.depths) + 1))
    for arm, n, by_depth, overall in rows:
        print(f"| {arm} | {n} | " + " | ".join(f"{v:.3f}" for v in by_depth) + f" | {overall:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".cache/rtd_lab", *sys.argv[2:3])
