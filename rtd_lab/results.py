"""A run's provenance and printed summaries: the environment, what the student was trained on, the
depth table. ``results.json`` itself is assembled by ``rtd_lab.tasks.train``."""

from __future__ import annotations

from typing import Any


def environment() -> dict[str, str]:
    """The versions results depend on (a new transformers release once changed ours), and the CPU
    threads the run had (a sweep's parallel jobs get a share each: hydra.launcher.n_jobs)."""
    import platform
    from importlib.metadata import version

    import torch

    packages = ("torch", "transformers", "lightning", "torchmetrics", "tokenizers", "numpy")
    versions = {p: version(p) for p in packages}
    return {"python": platform.python_version(), **versions, "torch_threads": str(torch.get_num_threads())}


def train_set_stats(train: list, benchmark, answer_only: bool) -> dict:
    """What the student was trained on: examples, distinct questions, and (where one correct path
    exists per question) how many traces differ from it in some step: the RFT table compares these."""
    examples = [x.example for x in train]
    stats: dict[str, Any] = {
        "examples": len(examples),
        "questions": len({ex.uid.split("#")[0] for ex in examples}),  # a trace row is "<question uid>#<row>"
        "wrong_steps": None,
    }
    if answer_only:
        return stats
    gold = {ex.uid: ex for split in benchmark.splits().values() for ex in split}
    if getattr(benchmark, "unique_paths", False):

        def words(ex) -> list[str]:
            return [" ".join(s.text.split()) for s in ex.steps]

        stats["wrong_steps"] = sum(words(ex) != words(gold[ex.uid.split("#")[0]]) for ex in examples)
    elif hasattr(benchmark, "valid_path"):  # several valid paths: a trace is wrong when it is none of them
        render, valid = benchmark.format.render, benchmark.valid_path
        stats["wrong_steps"] = sum(not valid(gold[ex.uid.split("#")[0]], render(ex)[1]) for ex in examples)
    return stats


def depth_table(depths: list[int], columns: dict[str, dict[str, float]], metric: str = "chain_acc") -> str:
    """Markdown table: one row per depth plus an overall row, one column per model."""
    names = list(columns)
    lines = ["| depth | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in [(f"{metric}/depth_{d}", str(d)) for d in depths] + [(metric, "all")]:
        lines.append(f"| {label} | " + " | ".join(f"{columns[n].get(key, float('nan')):.3f}" for n in names) + " |")
    return "\n".join(lines)
