"""Fine-tuning data loaders: a resumable, seeded shuffle shared out over processes (training) and
a rank-strided split without repeats (evaluation, so metrics synced over processes are exact)."""
from __future__ import annotations

import math

import torch

from jmp_ase.training.data import collate
from jmp_ase.training.sampler import ResumableDataLoader, TemperatureBatchSampler


class _Keyed(torch.utils.data.Dataset):
    """One data set behind the sampler's ``(task, index, seed)`` keys."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key[1]]


def train_batches_per_epoch(n: int, batch_size: int, num_replicas: int = 1) -> int:
    """Batches per process and epoch of :func:`train_loader` (the last one may be short)."""
    return max(math.ceil(math.ceil(n / num_replicas) / batch_size), 1)


def train_loader(dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 num_workers: int = 0) -> ResumableDataLoader:
    """Shuffled batches, a pure function of (seed, epoch); its position is saved in checkpoints,
    so a run resumed mid-epoch continues with the next batch. With several processes every
    process gets the same number of batches (the permutation is padded by its start)."""
    sampler = TemperatureBatchSampler([len(dataset)], batch_size, 1.0, seed, num_replicas, rank, expand=False)
    return ResumableDataLoader(_Keyed(dataset), batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                               persistent_workers=num_workers > 0)


class ShardBatchSampler(torch.utils.data.Sampler):
    """Structures ``rank, rank + P, rank + 2P, ...`` in batches: every structure once over all processes."""

    def __init__(self, n: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, n, num_replicas))
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]


def eval_loader(dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, num_workers: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_sampler=ShardBatchSampler(len(dataset), batch_size, num_replicas,
                                                                                rank),
                                       collate_fn=collate, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
