"""DistributedSampler: each rank's share of a dataset, as torch.utils.data.DistributedSampler."""
from __future__ import annotations

import math

import numpy as np

from .. import checks


class DistributedSampler:
    """The indices of `dataset` that rank `rank` of `num_replicas` reads in an
    epoch: the epoch's order (a permutation drawn from seed + epoch when
    shuffle, else 0..n-1), padded by repeating its start until it divides
    evenly (or, with drop_last, cut to the largest even part), then every
    num_replicas-th index from position `rank`. Every rank gets the same
    number of samples, so every rank makes the same number of steps.

    num_replicas, rank: default to the process group's world size and rank.
    Pass it to gpunet.data.DataLoader(sampler=...); the loader tells it each
    epoch's number (set_epoch), as PyTorch users do by hand.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            from .group import get_rank, get_world_size
            num_replicas = get_world_size() if num_replicas is None else num_replicas
            rank = get_rank() if rank is None else rank
        self.num_replicas = checks.positive_int(num_replicas, "num_replicas")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank: expected an integer in [0, {self.num_replicas}), got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self.dataset = dataset
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas:
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int):
        """The epoch whose order the next iteration gives (same on every rank)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        n = len(self.dataset)
        order = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[:self.total_size]
        elif self.total_size > n:
            order = np.resize(order, self.total_size)  # repeats the order from its start
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples
