"""Tokenisation with step boundaries, and the one DataModule every method shares.

The batch it yields is described in ``rtd_lab.data.batch``.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from rtd_lab.data.batch import Collator, Encoded, encode_example, move_batch
from rtd_lab.data.example import ReasoningExample
from rtd_lab.data.samplers import (
    LengthBucketBatchSampler,
    ResumableLoader,
    ShuffledBatchSampler,
    StagedBatchSampler,
)
from rtd_lab.data.segmenters import RULES, rule_boundaries

TRACE_SOURCES = ("gold", "teacher", "rft")
ORDER_FAMILY_STRIDE = 1_000_003  # far beyond any seed range, so two families never share an order


def subset(examples: list[ReasoningExample], n: int, source: str = "gold") -> list[ReasoningExample]:
    """``n`` of ``examples``, drawn with a fixed seed and kept in their order (``data.max_train_examples``)."""
    if n > len(examples):
        raise ValueError(
            f"data.max_train_examples={n}, but data.trace_source={source} gives only {len(examples)} training "
            "examples; lower it, or sample more questions (sample.max_questions, sample.n_samples)"
        )
    keep = sorted(random.Random(0).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


class ReasoningDataModule(L.LightningDataModule):
    """One DataModule for every method. ``connect`` hands it the run-time tokenizer (litgpt style)."""

    def __init__(
        self,
        benchmark,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        bucket_by_length: bool = False,
        seed: int = 0,
        answer_only: bool = False,
        trace_source: str = "gold",
        boundaries: str = "gold",
        max_train_examples: int | None = None,
        order_family: int = 0,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1, got {eval_batch_size}")
        self.benchmark = benchmark
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.bucket_by_length = bucket_by_length
        # Train/val targets without the trace (SFT on gold answers). Test prompts are the same either
        # way, and scoring always uses the gold steps.
        self.answer_only = answer_only
        if trace_source not in TRACE_SOURCES and not Path(trace_source).expanduser().is_dir():
            raise ValueError(
                f"data.trace_source must be one of {list(TRACE_SOURCES)} or the folder of a SAMPLE/FILTER "
                f"dataset, got {trace_source!r}"
            )
        # Not "gold": training examples carry other traces (the teacher's, or a FILTER output), set
        # with use_train_traces() before setup; validation and test keep the gold steps.
        self.trace_source = trace_source
        self.train_override: list[ReasoningExample] | None = None
        if boundaries not in ("gold", "learned", *RULES):
            raise ValueError(f"data.boundaries must be gold, learned or one of {list(RULES)}, got {boundaries!r}")
        # Where the training steps conclude: the benchmark's own steps, a rule-based segmenter, or
        # the learned classifier (set with set_boundaries() by the train task). Test scoring never uses them.
        self.boundaries = boundaries
        if max_train_examples is not None and max_train_examples < 1:
            raise ValueError(f"data.max_train_examples must be >= 1 or null, got {max_train_examples}")
        # Compare training sets at equal size (the RFT paper's table): a subset of this many training
        # examples, drawn with a fixed seed (not the run's), so every run of a sweep sees the same one.
        self.max_train_examples = max_train_examples
        self.seed = seed
        if not isinstance(order_family, int) or order_family < 0:
            raise ValueError(f"data.order_family must be an integer >= 0, got {order_family!r}")
        # The family of batch orders: seed s shuffles by s + ORDER_FAMILY_STRIDE * order_family, so another
        # family gives every seed another order while keeping everything else the seed fixes.
        self.order_family = order_family
        self.tokenizer = None
        self.encoded: dict[str, list[Encoded]] = {}
        # Set by the depth curriculum (rtd_lab.curriculum): train on chains of depth <= this.
        # None: every depth, plain shuffled batches.
        self.max_train_depth: int | None = None

    def use_train_traces(self, examples: list[ReasoningExample]) -> None:
        """Train on these examples (same questions, other traces) instead of the benchmark's."""
        self.train_override = examples
        self.encoded = {}

    def connect(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.encoded = {}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("ReasoningDataModule.connect(tokenizer) must be called before setup()")
        if self.encoded:
            return
        fmt = self.benchmark.format
        splits = dict(self.benchmark.splits())
        if self.trace_source != "gold":
            if self.train_override is None:
                raise RuntimeError(
                    f"data.trace_source={self.trace_source}: use_train_traces() must come before setup()"
                )
            splits["train"] = self.train_override
        if self.max_train_examples is not None:
            splits["train"] = subset(splits["train"], self.max_train_examples, self.trace_source)
        for name in ("train", "test"):  # an empty split would "succeed" with 0.000 over 0 questions
            if not splits.get(name):
                raise ValueError(f"the {name} split of data.benchmark is empty: nothing to {name} on")
        segmenter = None
        if self.boundaries not in ("gold", "learned"):

            def segmenter(text: str) -> list[int]:
                return rule_boundaries(self.boundaries, text, fmt)

        self.encoded = {
            split: [
                replace(
                    encode_example(
                        ex, self.tokenizer, fmt, not self.answer_only, segmenter if split != "test" else None
                    ),
                    row=i,
                )
                for i, ex in enumerate(examples)
            ]
            for split, examples in splits.items()
        }

    def set_boundaries(self, split: str, positions: list[list[int]]) -> None:
        """Replace the boundary token positions of a split's examples (the learned segmenter's)."""
        self.setup()
        if len(positions) != len(self.encoded[split]):
            raise ValueError(f"{len(positions)} boundary lists for {len(self.encoded[split])} {split} examples")
        self.encoded[split] = [
            replace(x, boundary_pos=list(p)) for x, p in zip(self.encoded[split], positions, strict=True)
        ]

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        return move_batch(batch, device)

    def _eval_loader(self, split: str) -> DataLoader:
        """Validation or test batches, in order (training batches come from rtd_lab.data.samplers)."""
        self.setup()
        return DataLoader(
            self.encoded[split],
            batch_size=self.eval_batch_size,
            collate_fn=Collator(self.tokenizer.pad_token_id, split),
            num_workers=self.num_workers,
            drop_last=False,
        )

    def set_max_train_depth(self, depth: int | None) -> None:
        """Curriculum stage filtering: later training batches hold only chains of depth <= ``depth``."""
        self.max_train_depth = depth

    def stage_val_dataloader(self, max_depth: int) -> DataLoader:
        """The validation chains of one curriculum stage (depth <= ``max_depth``)."""
        self.setup()
        items = [x for x in self.encoded["val"] if x.example.depth <= max_depth]
        if not items:
            raise ValueError(f"no validation example has depth <= {max_depth} (curriculum.stages)")
        return DataLoader(
            items, batch_size=self.eval_batch_size, collate_fn=Collator(self.tokenizer.pad_token_id, "val")
        )

    def _distributed(self) -> tuple[int, int]:
        """(rank, world size) of the attached trainer; (0, 1) outside one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return 0, 1
        if getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError(
                "trainer.use_distributed_sampler must be false with several processes: rtd_lab's batch "
                "samplers split each global batch across ranks themselves (conf/trainer/ddp.yaml sets it)"
            )
        return trainer.global_rank, trainer.world_size

    def _consumed(self) -> int:
        """Batches of the current epoch the trainer has trained on (checkpoints store the rest)."""
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_idx + 1

    def train_dataloader(self) -> DataLoader:
        """Global batches of ``batch_size``, this rank's share of each, resumable (``rtd_lab.data.samplers``)."""
        self.setup()
        rank, world = self._distributed()
        train = self.encoded["train"]
        seed = self.seed + ORDER_FAMILY_STRIDE * self.order_family
        if self.max_train_depth is not None:
            if self.bucket_by_length:
                raise ValueError("data.bucket_by_length and a depth curriculum cannot be combined (yet)")
            depths = [x.example.depth for x in train]
            sampler = StagedBatchSampler(
                depths, self.batch_size, lambda: self.max_train_depth, seed, rank=rank, world_size=world
            )
        elif self.bucket_by_length:
            lengths = [len(x.input_ids) for x in train]
            sampler = LengthBucketBatchSampler(lengths, self.batch_size, seed=seed, rank=rank, world_size=world)
        else:
            sampler = ShuffledBatchSampler(len(train), self.batch_size, seed, rank=rank, world_size=world)
        return ResumableLoader(
            train,
            batch_sampler=sampler,
            collate_fn=Collator(self.tokenizer.pad_token_id, "train"),
            num_workers=self.num_workers,
            consumed_fn=self._consumed,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
