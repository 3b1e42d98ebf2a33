"""Temperature sampling over several data sets, as JMP's ``MTSampledDataset`` does it.

JMP (``modules/dataset/concat_dataset.py``) gives data set i the ratio
``p_i ∝ (|D_i| / Σ_j |D_j|)^(1/T)``, *expands* every data set to a length proportional
to its ratio (the data set with the smallest expansion keeps its size, the others repeat
their items cyclically, ``index % |D_i|``), concatenates the expanded sets and shuffles the
result with a ``DistributedSampler`` (seed + epoch). Batches are consecutive chunks of that
permutation, so **one batch mixes data sets**; the loss picks each structure's own head.
With several processes JMP's ``BalancedBatchSampler`` gathers the global batch of all ranks
and re-partitions it greedily by atom count; here every rank computes the same global
permutation itself, so the same partition needs no communication.

:class:`TemperatureBatchSampler` yields lists of ``(task, index, seed)``: the data set, the
item inside it and a per-item seed (for edge dropout), all a pure function of
``(seed, epoch, position)``. It resumes mid-epoch from :meth:`state_dict`.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def temperature_probabilities(sizes: Sequence[int], temperature: float = 2.0) -> np.ndarray:
    """``p_i ∝ (n_i / Σ n_j)^(1/T)``, normalised (T=1: proportional, T→∞: uniform)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1 or sizes.size == 0 or np.any(sizes <= 0):
        raise ValueError(f"data set sizes must be positive, got {sizes.tolist()}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    ratios = (sizes / sizes.sum()) ** (1.0 / temperature)
    return ratios / ratios.sum()


def expanded_sizes(sizes: Sequence[int], probabilities: Sequence[float]) -> list[int]:
    """Items per epoch of each data set (JMP's ``merged_dataset``): proportional to
    ``probabilities``, none below its own size."""
    sizes = np.asarray(sizes, dtype=np.float64)
    probs = np.asarray(probabilities, dtype=np.float64)
    factors = sizes.sum() / probs.sum() * probs / sizes
    factors = factors / factors.min()
    return [int(n) for n in np.ceil(sizes * factors).astype(np.int64)]


def balanced_partition(sizes: np.ndarray, num_parts: int) -> list[list[int]]:
    """JMP's greedy partition: largest item first into the part with the fewest atoms.

    Ties are broken by part number, so every process computes the same partition.
    """
    order = np.argsort(-np.asarray(sizes), kind="stable")
    heap = [(int(sizes[i]), part, [int(i)]) for part, i in enumerate(order[:num_parts])]
    heapq.heapify(heap)
    for i in order[num_parts:]:
        total, part, members = heapq.heappop(heap)
        heapq.heappush(heap, (total + int(sizes[i]), part, members + [int(i)]))
    return [members for _, _, members in sorted(heap, key=lambda h: h[1])]


def _item_seed(seed: int, epoch: int, position: int) -> int:
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, position]).generate_state(2, np.uint32)
    return int(mixed[0]) << 31 | int(mixed[1]) >> 1


class TemperatureBatchSampler(Sampler):
    """Mixed batches of ``(task, index, seed)`` drawn by temperature sampling.

    sizes: items in each data set; batch_size: structures per batch *per process*;
    temperature: T of ``p_i ∝ (n_i/N)^(1/T)``; seed: base seed (the epoch is added);
    num_replicas / rank: the process group (default: torch.distributed if initialised, else 1/0);
    natoms: optional per-data-set atom counts (sequences) used to balance atoms across
    processes as JMP does; shuffle: False keeps the concatenation order (evaluation);
    drop_last: drop a final incomplete batch; expand: False uses every item exactly once
    (evaluation, no temperature re-weighting).

    Every process sees ``len(self)`` batches per epoch and disjoint items; the per-epoch
    permutation depends only on ``seed`` and the epoch.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, temperature: float = 2.0, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None,
                 natoms: Sequence[Sequence[int]] | None = None, shuffle: bool = True,
                 drop_last: bool = False, expand: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_replicas is None or rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = torch.distributed.get_world_size() if dist else 1
            rank = torch.distributed.get_rank() if dist else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.sizes = [int(n) for n in sizes]
        self.probabilities = temperature_probabilities(self.sizes, temperature)
        self.epoch_sizes = expanded_sizes(self.sizes, self.probabilities) if expand else list(self.sizes)
        self.batch_size, self.seed, self.shuffle, self.drop_last = int(batch_size), int(seed), shuffle, drop_last
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.natoms = None if natoms is None else [np.asarray(n, dtype=np.int64) for n in natoms]
        if self.natoms is not None and [len(n) for n in self.natoms] != self.sizes:
            raise ValueError("natoms must give one atom count per item of every data set")
        self.epoch = 0  # epoch of the next pass
        self.start_batch = 0  # batches of that epoch already consumed (resume)
        self._iter_epoch: int | None = None  # epoch of the iteration in progress (or last finished)
        total = sum(self.epoch_sizes)
        self.per_replica = math.ceil(total / self.num_replicas)
        global_batch = self.batch_size * self.num_replicas
        padded = self.per_replica * self.num_replicas
        self._num_batches = padded // global_batch if drop_last else math.ceil(padded / global_batch)

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration; a new epoch starts at its first batch.

        (Lightning calls ``set_epoch`` only on a loader's ``sampler``, not on a batch sampler:
        this sampler moves to the next epoch by itself whenever a pass starts.)"""
        if int(epoch) != self.epoch:
            self.start_batch = 0
        self.epoch = int(epoch)

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Position to resume from, ``batches_done`` batches into the epoch being iterated
        (or last iterated); default: where the next iteration would start."""
        if batches_done is None or self._iter_epoch is None:
            epoch, done = self.epoch, self.start_batch
        else:
            epoch, done = self._iter_epoch, int(batches_done)
        if done >= len(self):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "start_batch": done, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"the checkpoint's sampler seed {state['seed']} differs from this run's {self.seed}")
        self.epoch, self.start_batch, self._iter_epoch = int(state["epoch"]), int(state["start_batch"]), None

    def _order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of the concatenated expanded data sets (8 bytes per item)."""
        total = sum(self.epoch_sizes)
        if not self.shuffle:
            return np.arange(total, dtype=np.int64)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(total, generator=g).numpy()

    def _items(self, order: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rows ``(task, index, position)`` of the padded global order at ``positions`` (JMP's
        DistributedSampler pads by repeating the start of the permutation)."""
        flat = order[positions % len(order)]
        starts = np.concatenate([[0], np.cumsum(self.epoch_sizes)]).astype(np.int64)
        tasks = np.searchsorted(starts, flat, side="right") - 1
        index = (flat - starts[tasks]) % np.asarray(self.sizes, dtype=np.int64)[tasks]
        return np.stack([tasks, index, positions], axis=1)

    def epoch_items(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's global order: (M, 3) int64 rows ``(task, index, position)``, padded to
        a multiple of the number of processes (JMP's DistributedSampler repeats the start).
        Iteration computes these rows batch by batch instead of holding them all."""
        epoch = self.epoch if epoch is None else int(epoch)
        return self._items(self._order(epoch), np.arange(self.per_replica * self.num_replicas, dtype=np.int64))

    def _rank_batch(self, order: np.ndarray, b: int) -> np.ndarray:
        global_batch = self.batch_size * self.num_replicas
        end = min((b + 1) * global_batch, self.per_replica * self.num_replicas)
        chunk = self._items(order, np.arange(b * global_batch, end, dtype=np.int64))
        if self.num_replicas == 1:
            return chunk
        if self.natoms is not None:
            sizes = np.array([self.natoms[t][i] for t, i, _ in chunk])
            return chunk[balanced_partition(sizes, self.num_replicas)[self.rank]]
        return chunk[self.rank::self.num_replicas]  # DistributedSampler's strided share, then consecutive batches

    def __iter__(self):
        # Every pass is one epoch and the next pass is the next epoch: Lightning stops reading a
        # sized loader after len() batches, so the end of a pass cannot be relied upon.
        epoch, start = self.epoch, self.start_batch
        self._iter_epoch, self.epoch, self.start_batch = epoch, epoch + 1, 0
        order = self._order(epoch)
        for b in range(start, len(self)):
            yield [(int(t), int(i), _item_seed(self.seed, epoch, int(p))) for t, i, p in self._rank_batch(order, b)]


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose position Lightning saves in its checkpoints (``_Stateful``).

    ``progress`` (set by the training module) returns how many batches of the current epoch
    the trainer has consumed; prefetched batches do not count, so a resumed run continues
    with the first batch that did not reach an optimiser step.
    """

    progress = None

    def state_dict(self) -> dict:
        done = self.progress() if self.progress is not None else None
        return self.batch_sampler.state_dict(done)

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)
