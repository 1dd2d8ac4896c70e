"""What a self-distillation loop (``task=self_distill``) measures per round, and how it is shown.

The RFT paper: "when a model generates its own fine-tuning data and retrains, the data distribution
narrows each iteration. Rare but valid reasoning strategies disappear from the sample pool". These
are the instruments for it: the diversity of a round's samples, and the table and plot of the rounds.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SelfDistillSettings:
    rounds: int = 4  # sample -> filter -> fine-tune rounds (the first samples from the run's teacher)

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"self_distill.rounds must be an integer >= 1, got {self.rounds!r}")


def sample_stats(samples) -> dict:
    """Diversity of one round's samples (a SAMPLE dataset, or rows with ``uid`` and ``completion``):
    entropy over distinct traces per question, and their count."""
    by_question: dict[str, Counter] = defaultdict(Counter)
    for uid, completion in zip(samples["uid"], samples["completion"], strict=True):
        by_question[uid][" ".join(completion.split())] += 1
    entropies, distinct = [], []
    for counts in by_question.values():
        n = sum(counts.values())
        entropies.append(-sum(c / n * math.log2(c / n) for c in counts.values()))
        distinct.append(len(counts))
    return {
        "trace_entropy_bits": sum(entropies) / len(entropies),
        "distinct_traces_per_question": sum(distinct) / len(distinct),
        "questions": len(by_question),
    }


COLUMNS = [
    ("chain_acc", "chain acc"),
    ("valid_paths_per_question", "valid paths / question"),
    ("trace_entropy_bits", "trace entropy (bits)"),
    ("distinct_traces_per_question", "distinct traces / question"),
    ("kept_wrong_step_share", "kept, wrong step"),
    ("accepted_rate", "accepted"),
]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(rows: list[dict]) -> str:
    depths = sorted(rows[0]["by_depth"], key=int)
    head = ["round", "teacher", *(label for _, label in COLUMNS), *(f"depth {d}" for d in depths)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["round"]), row["teacher"], *(_fmt(row[k]) for k, _ in COLUMNS)]
        lines.append("| " + " | ".join(cells + [_fmt(row["by_depth"][d]) for d in depths]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """One panel per curve, round on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label in COLUMNS if rows[0][k] is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
    rounds = [row["round"] for row in rows]
    for ax, (key, label) in zip(axes, keys, strict=True):
        ax.plot(rounds, [row[key] for row in rows], marker="o")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
