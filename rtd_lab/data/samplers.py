"""Training batch samplers: global batches, split across DDP ranks, resumable mid-epoch.

Every training loader of rtd_lab draws its batches here, for three reasons:

* **Distributed.** ``data.batch_size`` is the *global* batch. Each sampler draws the same global
  batch on every rank (same seed, no communication) and hands rank r the members ``r::world_size``,
  so 2 processes see exactly the batches 1 process sees, split in two. Lightning's own
  DistributedSampler injection is turned off (``trainer.use_distributed_sampler: false`` in the DDP
  configs): it shards an index stream, which cannot follow a curriculum that changes mid-epoch.
* **Resume.** A sampler's ``state_dict(consumed)`` holds where the epoch stands (the epoch, the
  cursor after the last batch handed out, and the batches handed out but not yet trained on:
  Lightning fetches one batch ahead). ``ResumableLoader`` exposes it to Lightning, which stores it in
  every checkpoint and loads it on resume, so a resumed run trains on exactly the batches the
  uninterrupted run would have.
* **The curriculum** reads its stage before every batch (``StagedBatchSampler``).

Subclasses define one epoch as a cursor (plain lists and ints, so it checkpoints) and a step
function ``_next(cursor)`` returning the next global batch, or None when the epoch is over.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(
                f"data.batch_size={batch_size} is the global batch and must divide evenly over the "
                f"{world_size} processes (trainer.devices x trainer.num_nodes)"
            )
        self.batch_size = batch_size  # global
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # the next epoch to start
        self._resume: dict | None = None
        self._cursor: dict | None = None
        self._handed: list[list[int]] = []  # global batches handed out this epoch, from _offset on
        self._offset = 0
        self._current_epoch = 0
        self._finished = False

    # ---- what a subclass defines --------------------------------------------------------------
    def _start_epoch(self, epoch: int) -> dict:
        raise NotImplementedError

    def _next(self, cursor: dict) -> list[int] | None:
        raise NotImplementedError

    def _cursor_state(self, cursor: dict) -> dict:
        return dict(cursor)

    def _load_cursor(self, state: dict) -> dict:
        return dict(state)

    # ---- iteration ----------------------------------------------------------------------------
    def _share(self, batch: list[int]) -> list[int]:
        return batch[self.rank :: self.world_size]

    def __iter__(self):
        state, self._resume = self._resume, None
        if state is not None and not state["finished"]:
            self._current_epoch = state["epoch"]
            self._cursor = self._load_cursor(state["cursor"])
            pending, self._offset = [list(b) for b in state["pending"]], state["consumed"]
        else:
            if state is not None:  # the checkpoint fell at an epoch's end: the next one starts afresh
                self.epoch = state["epoch"]
            self._current_epoch = self.epoch
            self._cursor = self._start_epoch(self.epoch)
            pending, self._offset = [], 0
        self.epoch = self._current_epoch + 1
        self._handed, self._finished = [], False
        for batch in pending:
            self._handed.append(batch)
            yield self._share(batch)
        while (batch := self._next(self._cursor)) is not None:
            if len(batch) < self.world_size:  # too small to give every rank a share: DDP would hang
                continue
            self._handed.append(batch)
            yield self._share(batch)
        self._finished = True

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self, consumed: int) -> dict[str, Any]:
        """Where the epoch stands after ``consumed`` of its batches were trained on."""
        if self._cursor is None or (self._finished and consumed - self._offset >= len(self._handed)):
            return {"epoch": self.epoch, "finished": True}
        return {
            "epoch": self._current_epoch,
            "finished": False,
            "consumed": consumed,
            "pending": self._handed[consumed - self._offset :],
            "cursor": self._cursor_state(self._cursor),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state


class ShuffledBatchSampler(ResumableBatchSampler):
    """A fresh permutation each epoch (seeded by ``seed + epoch``), cut into consecutive batches.

    Not ``DataLoader(shuffle=True)``, which draws each epoch's seed from the global RNG: then
    anything that used the RNG before training (sampling traces, fitting a boundary classifier or
    a PRM, the DDP set-up) changed the batch order, and two ranks could disagree on it.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(batch_size, seed, rank, world_size)
        self.n = n

    def _start_epoch(self, epoch: int) -> dict:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        return {"order": order, "pos": 0}

    def _next(self, cursor: dict) -> list[int] | None:
        if cursor["pos"] >= len(cursor["order"]):
            return None
        batch = cursor["order"][cursor["pos"] : cursor["pos"] + self.batch_size]
        cursor["pos"] += self.batch_size
        return batch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class LengthBucketBatchSampler(ResumableBatchSampler):
    """Shuffled batches of similar length: pad less, train faster, same examples per epoch.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort each
    pool by length, cut it into batches, shuffle the batch order. On the synthetic benchmark a
    batch then holds one or two depths instead of all of them (about 20 % fewer padded tokens).
    """

    def __init__(
        self, lengths: list[int], batch_size: int, seed: int = 0, pool_batches: int = 16, rank=0, world_size=1
    ):
        super().__init__(batch_size, seed, rank, world_size)
        self.lengths = lengths
        self.pool = batch_size * pool_batches

    def _start_epoch(self, epoch: int) -> dict:
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        batches = []
        for start in range(0, len(order), self.pool):
            pool = sorted(order[start : start + self.pool], key=self.lengths.__getitem__)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        return {"batches": [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()], "pos": 0}

    def _next(self, cursor: dict) -> list[int] | None:
        if cursor["pos"] >= len(cursor["batches"]):
            return None
        cursor["pos"] += 1
        return cursor["batches"][cursor["pos"] - 1]

    def __len__(self) -> int:
        pools, rest = divmod(len(self.lengths), self.pool)
        return pools * -(-self.pool // self.batch_size) + -(-rest // self.batch_size)


class StagedBatchSampler(ShuffledBatchSampler):
    """``ShuffledBatchSampler``'s stream of examples, drawn only from those the current curriculum stage
    allows.

    The stream is the permutations of the whole training set (``seed + k`` for k = 0, 1, ...) one
    after the other, each ending in its partial batch, exactly as ``ShuffledBatchSampler`` deals
    them; the curriculum walks it in order and skips the examples deeper than the stage. So the
    curriculum changes the batch order in no other way than by its stage filter: with every depth
    allowed the batches are the plain shuffle's (the no-curriculum ablation trains on that stream
    from the first step); during a stage the skipped examples are simply missing from it, and
    batches are full (a permutation's remainder is completed from the next). An epoch is as many
    batches as the full training set makes, whatever the stage.
    ``max_depth_fn()`` is read before every batch, so a stage that ends mid-epoch takes effect at once,
    up to prefetching (Lightning fetches one batch ahead, each DataLoader worker a few more).
    """

    def __init__(self, depths: list[int], batch_size: int, max_depth_fn, seed: int = 0, rank=0, world_size=1):
        super().__init__(len(depths), batch_size, seed, rank, world_size)
        self.depths = depths
        self.max_depth_fn = max_depth_fn
        self._stream = {"k": 0, "order": None, "pos": 0}  # the permutation being dealt, across epochs

    def _start_epoch(self, epoch: int) -> dict:
        return {"left": len(self), "stream": self._stream}

    def _next(self, cursor: dict) -> list[int] | None:
        if cursor["left"] == 0:
            return None
        max_depth = self.max_depth_fn()
        if not any(d <= max_depth for d in self.depths):
            raise ValueError(f"no training example has depth <= {max_depth} (curriculum.stages)")
        # Unfiltered, a permutation ends in its partial batch (as the plain shuffle deals it); during a
        # stage, batches stay full and run on into the next permutation: no batch of a single example,
        # which could not be shared over DDP ranks.
        filtered = max_depth < max(self.depths)
        stream, batch = cursor["stream"], []
        while len(batch) < self.batch_size:
            if stream["order"] is None or stream["pos"] >= len(stream["order"]):
                if batch and not filtered:
                    break
                gen = torch.Generator().manual_seed(self.seed + stream["k"])
                stream["order"], stream["pos"] = torch.randperm(self.n, generator=gen).tolist(), 0
                stream["k"] += 1
            order = stream["order"]
            while stream["pos"] < len(order) and len(batch) < self.batch_size:
                if self.depths[order[stream["pos"]]] <= max_depth:
                    batch.append(order[stream["pos"]])
                stream["pos"] += 1
        cursor["left"] -= 1
        return batch

    def _cursor_state(self, cursor: dict) -> dict:
        return {"left": cursor["left"], "stream": dict(self._stream)}

    def _load_cursor(self, state: dict) -> dict:
        self._stream = dict(state["stream"])
        return {"left": state["left"], "stream": self._stream}

    def state_dict(self, consumed: int) -> dict:
        # The stream outlives epochs: a checkpoint at an epoch's end must keep its place in it too.
        state = super().state_dict(consumed)
        if state["finished"]:
            state["stream"] = dict(self._stream)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state["finished"] and "stream" in state:
            self._stream = dict(state["stream"])


class ResumableLoader(DataLoader):
    """A DataLoader Lightning checkpoints: it stores its batch sampler's place in the epoch.

    ``consumed_fn()`` says how many of this epoch's batches the trainer has trained on (the sampler
    itself has already handed out one more, the one Lightning prefetched).
    """

    def __init__(self, *args, consumed_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.consumed_fn = consumed_fn

    def state_dict(self) -> dict:
        consumed = self.consumed_fn() if self.consumed_fn else 0
        return {"batch_sampler": self.batch_sampler.state_dict(consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state["batch_sampler"])
