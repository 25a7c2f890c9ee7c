"""LightningDataModule shared by the ISIC and glaucoma data sets.

A *source* turns an integer id into an (image uint8 HxWx3, mask uint8 HxW class-index) pair: either
the embedded procedural generator (default, offline) or a folder of real data read through
``datamodules.layouts`` (every pair is decoded and checked in ``setup``, before training starts, so
a bad file never crashes a dataloader worker). Splits are deterministic by ``data_seed``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from lightning_seg.datamodules.sampling import EpochSampler
from lightning_seg.datamodules.transforms import build_transform
from torch.utils.data import DataLoader, Dataset

from lightning_seg.config import DataConfig, RootConfig
from lightning_seg.tasks import get_task

Pair = tuple[np.ndarray, np.ndarray]
# The one set of data defaults is the CLI's schema (lightning_seg.config.DataConfig): building a datamodule in Python
# with no arguments gives the data that `python -m lightning_seg fit data=<name>` trains on.
_DEFAULTS = DataConfig()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of one sample in one epoch: independent of workers, ranks and resumption."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def worker_init_fn(worker_id: int) -> None:
    """Per-worker, per-rank seeding of the global RNGs (the scheme of Lightning's ``pl_worker_init_function``): forked
    workers would otherwise share the parent's numpy / torch RNG state and draw identical random numbers."""
    rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))
    ss = np.random.SeedSequence([torch.initial_seed() % 2**32, worker_id, rank])
    np.random.seed(ss.generate_state(1)[0])
    torch.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0]) % 2**63)
    cv2.setNumThreads(0)  # cv2's own thread pool oversubscribes cores inside workers


@dataclass(frozen=True)
class Source:
    """A list of samples addressable by position: ``keys[i]`` names sample i, ``load(i)`` decodes it."""

    keys: Sequence[str]
    load: Callable[[int], Pair]
    splits: Sequence[str | None] | None = None  # official split per sample, when the layout defines one

    def __len__(self) -> int:
        return len(self.keys)


class PairDataset(Dataset):
    def __init__(self, source: Source, ids: Sequence[int], image_size: int, *, train: bool, augment: bool, seed: int) -> None:
        self.source, self.ids, self.seed = source, list(ids), seed
        self.transform = build_transform(image_size, train=train, augment=augment)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        position, epoch = item if isinstance(item, tuple) else (item, 0)
        sid = self.ids[position]
        image, mask = self.source.load(sid)
        self.transform.set_random_seed(sample_seed(self.seed, epoch, sid))
        out = self.transform(image=image, mask=mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
            "key": self.source.keys[sid],
        }


class SegmentationDataModule(pl.LightningDataModule):
    """Base class; subclasses set ``tasks`` (the first is the default) and implement ``synthetic_pair`` and
    ``discover``.

    Every keyword argument is a ``data.*`` key of the config (``seed`` is the root ``seed``); the defaults are those of
    :class:`lightning_seg.config.DataConfig`."""

    name = "base"
    tasks: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        source: str = _DEFAULTS.source,
        root: str | None = _DEFAULTS.root,
        layout: str = _DEFAULTS.layout,
        task: str | None = None,  # None: the data set's default task, tasks[0]
        image_size: int = _DEFAULTS.image_size,
        num_train: int = _DEFAULTS.num_train,
        num_val: int = _DEFAULTS.num_val,
        num_test: int = _DEFAULTS.num_test,
        data_seed: int = _DEFAULTS.data_seed,
        split: str = _DEFAULTS.split,
        val_fraction: float = _DEFAULTS.val_fraction,
        test_fraction: float = _DEFAULTS.test_fraction,
        batch_size: int = _DEFAULTS.batch_size,
        eval_batch_size: int = _DEFAULTS.eval_batch_size,
        num_workers: int = _DEFAULTS.num_workers,
        augment: bool = _DEFAULTS.augment,
        skip_bad: bool = _DEFAULTS.skip_bad,
        soft_threshold: str = _DEFAULTS.soft_threshold,
        options: dict[str, Any] | None = None,  # None: no options (DataConfig's empty mapping)
        seed: int = RootConfig.seed,
        name: str | None = None,  # the config's data.name; the registry already picked this class by it
    ) -> None:
        super().__init__()
        task = task or self.tasks[0]
        if task not in self.tasks:
            raise ValueError(f"data.task={task!r} is not a {self.name} task; choose one of: {', '.join(self.tasks)}")
        if source not in ("synthetic", "folder"):
            raise ValueError(f"data.source={source!r}: use 'synthetic' (embedded data) or 'folder' (with data.root)")
        if source == "folder" and not root:
            raise ValueError(f"data.source=folder needs data.root=/path/to/{self.name} data")
        if split not in ("random", "official"):
            raise ValueError(f"data.split={split!r}: use 'random' or 'official'")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1) and sum to less than 1")
        self.source_kind, self.root, self.layout, self.task = source, root, layout, get_task(task)
        self.image_size, self.data_seed, self.seed = image_size, data_seed, seed
        self.counts = (num_train, num_val, num_test)
        self.split_mode, self.fractions = split, (val_fraction, test_fraction)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment, self.skip_bad, self.soft_threshold = augment, skip_bad, soft_threshold
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.synthetic_options)) if source == "synthetic" else []
        if unknown:
            allowed = ", ".join(self.synthetic_options) or "none"
            raise ValueError(f"data.options {unknown} are not options of the synthetic {self.name} generator (allowed: {allowed})")
        self.source: Source | None = None
        self.split_ids: dict[str, list[int]] = {}

    # -- to implement in subclasses -------------------------------------------------------------
    synthetic_options: tuple[str, ...] = ()  # data.options keys the synthetic generator accepts

    def synthetic_pair(self, index: int) -> Pair:
        raise NotImplementedError

    def discover(self, root: Path):  # -> datamodules.layouts.Discovery
        raise NotImplementedError

    # -- setup --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.source is not None:  # Lightning may call setup once per stage
            return
        if self.source_kind == "synthetic":
            total = sum(self.counts)
            self.source = Source([f"synthetic_{self.name}_{i:05d}" for i in range(total)], self.synthetic_pair)
            n_train, n_val, _ = self.counts
            ids = list(range(total))
            self.split_ids = {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}
        else:
            self.source = self._folder_source()
            self.split_ids = self._split_folder(self.source)
        for split, ids in self.split_ids.items():
            if not ids and split != "test":
                raise ValueError(f"The {split} split of {self.name} is empty: use more data or change data.val_fraction/num_*")

    def _folder_source(self) -> Source:
        from lightning_seg.datamodules.layouts import DataError, check_records, format_problems, load_pair

        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        found = self.discover(root)
        problems = list(found.problems)
        problems += check_records(found.records, self.task.name, soft_threshold=self.soft_threshold)
        bad = {p.key for p in problems}
        if problems:
            message = format_problems(problems, root=root)
            if not self.skip_bad:
                raise DataError(message)  # the message names every bad file and the data.skip_bad option
            warnings.warn(f"Skipping {len(bad)} bad pair(s) (data.skip_bad=true):\n{message}", stacklevel=2)
        records = [r for r in found.records if r.key not in bad]
        if not records:
            raise DataError(f"No usable image/mask pairs under {root} (layout {found.layout}).")
        task, threshold = self.task.name, self.soft_threshold
        return Source(
            [r.key for r in records],
            lambda i: load_pair(records[i], task, soft_threshold=threshold),
            [r.split for r in records],
        )

    def _split_folder(self, source: Source) -> dict[str, list[int]]:
        ids = list(range(len(source)))
        official = source.splits if self.split_mode == "official" else None
        if official is not None and all(s is None for s in official):
            raise ValueError(f"data.split=official, but the layout under {self.root} defines no official splits: use data.split=random")
        rng = np.random.default_rng(self.data_seed)
        if official is None:
            perm = rng.permutation(len(ids)).tolist()
            n_val, n_test = (round(f * len(ids)) for f in self.fractions)
            return {"test": sorted(perm[:n_test]), "val": sorted(perm[n_test : n_test + n_val]), "train": sorted(perm[n_test + n_val :])}
        out = {s: [i for i in ids if official[i] == s] for s in ("train", "val", "test")}
        if not out["val"]:  # e.g. ISIC 2016 has no validation split: carve it from train
            perm = rng.permutation(out["train"]).tolist()
            n_val = max(1, round(self.fractions[0] * len(perm)))
            out["val"], out["train"] = sorted(perm[:n_val]), sorted(perm[n_val:])
        return out

    # -- loaders ------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def dataset(self, split: str) -> PairDataset:
        if self.source is None:
            self.setup()
        assert self.source is not None
        return PairDataset(self.source, self.split_ids[split], self.image_size, train=split == "train", augment=self.augment, seed=self.seed)

    def _loader(self, split: str) -> DataLoader:
        rank, world = self._world()
        train = split == "train"
        batch = self.batch_size if train else self.eval_batch_size
        if batch % world:
            raise ValueError(f"data.{'batch_size' if train else 'eval_batch_size'}={batch} is not divisible by {world} processes")
        dataset = self.dataset(split)
        sampler = EpochSampler(len(dataset), shuffle=train, seed=self.seed, rank=rank, world_size=world, pad=train)
        return DataLoader(
            dataset,
            batch_size=batch // world,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=worker_init_fn,
            drop_last=train and len(sampler) >= 2 * (batch // world),  # no tiny last batch for BatchNorm
            persistent_workers=False,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
