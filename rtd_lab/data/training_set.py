"""The data a run trains and evaluates on, built in one step before any DataModule exists.

    benchmark splits → training traces (gold, or given) → subset → boundaries → encoded splits

``build_splits`` does the whole step; the DataModule (``rtd_lab.data.datamodule``) only batches what
it returns. Training traces other than the benchmark's own (the teacher's, a SAMPLE/FILTER dataset)
are produced by the train task and handed in; learned boundaries replace a split's with
``with_boundaries`` (the classifier needs the encoded split to run the teacher on).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rtd_lab.data.batch import Encoded, encode_example
from rtd_lab.data.example import ReasoningExample
from rtd_lab.data.segmenters import RULES, rule_boundaries

TRACE_SOURCES = ("gold", "teacher", "rft")
BOUNDARIES = ("gold", "learned", "learned_online", *RULES)

Splits = dict[str, list[Encoded]]


@dataclass(frozen=True)
class DataSettings:
    """The config's ``data:`` block; conf/data/*.yaml hold the defaults and say what each field does."""

    benchmark: Any  # the benchmark object (SyntheticBenchmark, GSM8KBenchmark, ...)
    batch_size: int  # global training batch
    eval_batch_size: int
    num_workers: int
    bucket_by_length: bool  # training batches of similar length
    seed: int  # the batch order's seed (the run's)
    order_family: int  # another family of batch orders for the same seeds
    answer_only: bool  # supervise "question → #### answer" with no trace (train and val)
    trace_source: str  # gold | teacher | rft | the folder of a SAMPLE/FILTER dataset
    max_train_examples: int | None  # a fixed-seed subset of the training split; None: all of it
    train_max_depth: int | None  # train and validate on chains of at most this depth (test keeps all)
    boundaries: str  # gold | learned | a rule segmenter (rtd_lab.data.segmenters)

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """The range checks below, before the benchmark is built (``rtd_lab.tasks.preflight``)."""
        cls(**settings)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.trace_source not in TRACE_SOURCES and not Path(self.trace_source).expanduser().is_dir():
            raise ValueError(
                f"data.trace_source must be one of {list(TRACE_SOURCES)} or the folder of a SAMPLE/FILTER "
                f"dataset, got {self.trace_source!r}"
            )
        if self.boundaries not in BOUNDARIES:
            raise ValueError(f"data.boundaries must be one of {list(BOUNDARIES)}, got {self.boundaries!r}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"data.max_train_examples must be >= 1 or null, got {self.max_train_examples}")
        if self.train_max_depth is not None and self.train_max_depth < 1:
            raise ValueError(f"data.train_max_depth must be >= 1 or null, got {self.train_max_depth}")
        shallowest = _shallowest(self.benchmark)
        if self.train_max_depth is not None and shallowest is not None and self.train_max_depth < shallowest:
            raise ValueError(
                f"data.train_max_depth={self.train_max_depth} is below the benchmark's shallowest chains "
                f"(depth {shallowest}): nothing to train on"
            )
        if not isinstance(self.order_family, int) or self.order_family < 0:
            raise ValueError(f"data.order_family must be an integer >= 0, got {self.order_family!r}")


def _shallowest(benchmark) -> int | None:
    """The benchmark's smallest depth: from its settings (before it is built) or the built object."""
    if isinstance(benchmark, Mapping):
        return benchmark.get("min_depth", 1 if "max_depth" in benchmark else None)
    depths = getattr(benchmark, "depths", None)
    return min(depths) if depths else None


def subset(examples: list[ReasoningExample], n: int, source: str = "gold") -> list[ReasoningExample]:
    """``n`` of ``examples``, drawn with a fixed seed (not the run's, so every run of a sweep sees the
    same ones) and kept in their order: the RFT paper compares training sets at equal size."""
    if n > len(examples):
        raise ValueError(
            f"data.max_train_examples={n}, but data.trace_source={source} gives only {len(examples)} training "
            "examples; lower it, or sample more questions (sample.max_questions, sample.n_samples)"
        )
    keep = sorted(random.Random(0).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def encode_splits(
    splits: dict[str, list[ReasoningExample]], tokenizer, fmt, *, answer_only: bool, boundaries: str
) -> Splits:
    """Each split's examples encoded (``rtd_lab.data.batch.encode_example``), rows numbered.

    ``answer_only``: train/val targets without the trace (test prompts are the same either way, and
    scoring always uses the gold steps). ``boundaries``: a rule segmenter's name places the train/val
    boundaries; "gold", "learned" and "learned_online" keep the benchmark's (the learned ones replace
    them later, or per batch).
    """
    segmenter = None
    if boundaries in RULES:

        def segmenter(text: str) -> list[int]:
            return rule_boundaries(boundaries, text, fmt)

    return {
        split: [
            replace(encode_example(ex, tokenizer, fmt, not answer_only, segmenter if split != "test" else None), row=i)
            for i, ex in enumerate(examples)
        ]
        for split, examples in splits.items()
    }


def build_splits(data: DataSettings, tokenizer, train_examples: list[ReasoningExample] | None = None) -> Splits:
    """The encoded train / val / test splits of ``data``.

    ``train_examples``: the training traces when ``data.trace_source`` is not "gold" (same questions,
    other traces; validation and test keep the gold steps). ``data.train_max_depth`` keeps the
    training and validation chains up to that depth (length generalisation: the test split keeps every
    depth), then ``data.max_train_examples`` subsets the training ones.
    """
    benchmark = data.benchmark
    splits = dict(benchmark.splits())
    if data.trace_source != "gold":
        if train_examples is None:
            raise ValueError(f"data.trace_source={data.trace_source}: build_splits needs its training examples")
        splits["train"] = train_examples
    if data.train_max_depth is not None:
        for name in ("train", "val"):
            splits[name] = [ex for ex in splits.get(name, []) if ex.depth <= data.train_max_depth]
    if data.max_train_examples is not None:
        splits["train"] = subset(splits["train"], data.max_train_examples, data.trace_source)
    for name in ("train", "test"):  # an empty split would "succeed" with 0.000 over 0 questions
        if not splits.get(name):
            raise ValueError(f"the {name} split of data.benchmark is empty: nothing to {name} on")
    return encode_splits(splits, tokenizer, benchmark.format, answer_only=data.answer_only, boundaries=data.boundaries)


def with_boundaries(splits: Splits, split: str, positions: list[list[int]]) -> Splits:
    """``splits`` with the boundary token positions of one split replaced (the learned segmenter's)."""
    if len(positions) != len(splits[split]):
        raise ValueError(f"{len(positions)} boundary lists for {len(splits[split])} {split} examples")
    new = [replace(x, boundary_pos=list(p)) for x, p in zip(splits[split], positions, strict=True)]
    return {**splits, split: new}
