"""The one DataModule every method shares: it batches splits built before it
(``rtd_lab.data.training_set.build_splits``). The batch it yields is described in ``rtd_lab.data.batch``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from rtd_lab.data.batch import Collator, move_batch
from rtd_lab.data.samplers import (
    LengthBucketBatchSampler,
    ResumableLoader,
    ShuffledBatchSampler,
    StagedBatchSampler,
)
from rtd_lab.data.training_set import DataSettings, Splits, encode_splits

ORDER_FAMILY_STRIDE = 1_000_003  # far beyond any seed range, so two families never share an order


class ReasoningDataModule(L.LightningDataModule):
    """Batches of encoded ``splits`` ("train", "val", "test"): training batches shuffled by ``seed``
    (resumable mid-epoch, split across DDP ranks), evaluation batches in order."""

    def __init__(
        self,
        splits: Splits,
        pad_id: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        bucket_by_length: bool = False,
        seed: int = 0,
        order_family: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.encoded = splits
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.bucket_by_length = bucket_by_length
        self.seed = seed
        # The family of batch orders: seed s shuffles by s + ORDER_FAMILY_STRIDE * order_family, so another
        # family gives every seed another order while keeping everything else the seed fixes.
        self.order_family = order_family
        # Set by the depth curriculum (rtd_lab.curriculum): train on chains of depth <= this.
        # None: every depth, plain shuffled batches.
        self.max_train_depth: int | None = None

    @classmethod
    def from_settings(cls, data: DataSettings, splits: Splits, pad_id: int) -> ReasoningDataModule:
        return cls(
            splits,
            pad_id,
            data.batch_size,
            data.eval_batch_size,
            data.num_workers,
            data.bucket_by_length,
            data.seed,
            data.order_family,
        )

    @classmethod
    def gold(cls, benchmark, tokenizer, batch_size: int, eval_batch_size: int, **batching) -> ReasoningDataModule:
        """The benchmark's own splits with their gold traces and boundaries, batched."""
        splits = encode_splits(benchmark.splits(), tokenizer, benchmark.format, answer_only=False, boundaries="gold")
        return cls(splits, tokenizer.pad_token_id, batch_size, eval_batch_size, **batching)

    @property
    def train_depths(self) -> list[int]:
        """The chain depths of the training split, increasing."""
        return sorted({x.example.depth for x in self.encoded["train"]})

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        return move_batch(batch, device)

    def _eval_loader(self, split: str) -> DataLoader:
        """Validation or test batches, in order (training batches come from rtd_lab.data.samplers)."""
        return DataLoader(
            self.encoded[split],
            batch_size=self.eval_batch_size,
            collate_fn=Collator(self.pad_id, split),
            num_workers=self.num_workers,
            drop_last=False,
        )

    def set_max_train_depth(self, depth: int | None) -> None:
        """Curriculum stage filtering: later training batches hold only chains of depth <= ``depth``."""
        self.max_train_depth = depth

    def stage_val_dataloader(self, max_depth: int) -> DataLoader:
        """The validation chains of one curriculum stage (depth <= ``max_depth``)."""
        items = [x for x in self.encoded["val"] if x.example.depth <= max_depth]
        if not items:
            raise ValueError(f"no validation example has depth <= {max_depth} (curriculum.stages)")
        return DataLoader(items, batch_size=self.eval_batch_size, collate_fn=Collator(self.pad_id, "val"))

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
            collate_fn=Collator(self.pad_id, "train"),
            num_workers=self.num_workers,
            consumed_fn=self._consumed,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
