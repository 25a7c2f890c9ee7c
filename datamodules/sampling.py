"""Epoch-aware, rank-aware index sampler.

Yields ``(index, epoch)`` pairs so that every sample's augmentation can be seeded from
(seed, epoch, index): results then do not depend on the number of workers, persistent workers,
or where a resumed run restarts (a per-worker RNG would repeat or shift the random draws in each
of these cases). It also does the DDP split itself (Lightning's ``use_distributed_sampler`` is off):
training pads ranks to equal length (DDP needs the same number of steps on every rank); evaluation
never pads, so no sample is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = False) -> None:
        if size <= 0:
            raise ValueError("EpochSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size % self.world_size:
            extra = self.world_size - self.size % self.world_size
            order += order[:extra]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self._order()])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))
