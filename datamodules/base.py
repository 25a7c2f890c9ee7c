"""LightningDataModule shared by the ISIC and glaucoma data sets.

A *source* turns an integer id into an (image uint8 HxWx3, mask uint8 HxW class-index) pair: either
the embedded procedural generator (default, offline) or a folder of real data read through
``datamodules.layouts`` (every pair is decoded and checked in ``setup``, before training starts, so
a bad file never crashes a dataloader worker). That decode is kept, already resized for the pipeline, in the decode
cache (``data.cache``, ``datamodules/cache.py``), so a full-size photograph is not decoded again every epoch. Splits are
deterministic by ``data_seed``.
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
from lightning_seg.datamodules.cache import CACHE_MODES, Decoded, reduce_pair
from lightning_seg.datamodules.sampling import EpochSampler
from lightning_seg.datamodules.transforms import RESIZE_MODES, build_transform
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
    """A list of samples addressable by position: ``keys[i]`` names sample i, ``load(i)`` decodes it: ``(image,
    mask)``, or ``(image, mask, (H, W))`` when the arrays were already resized from a decoded H x W image."""

    keys: Sequence[str]
    load: Callable[[int], Pair]
    splits: Sequence[str | None] | None = None  # official split per sample, when the layout defines one

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class RecordLoader:
    """``Source.load`` of folder data: record ``i`` from the decode cache, or decoded and passed through the
    pipeline's first step (``reduce_pair``; the same arrays either way) and cached. Plain data: a set-up datamodule
    pickles for DDP spawn (a memory cache through shared memory, see ``datamodules/cache.py``)."""

    records: Sequence[Any]  # datamodules.layouts.PairRecord
    task: str
    soft_threshold: str
    image_size: int = _DEFAULTS.image_size
    resize: str = _DEFAULTS.resize
    cache: Any = None  # datamodules.cache.MemoryCache | DiskCache | None (data.cache=none)

    def __call__(self, index: int) -> Decoded:
        from lightning_seg.datamodules.layouts import load_pair

        record = self.records[index]
        if self.cache is not None and (hit := self.cache.get(record)) is not None:
            return hit
        decoded = self.reduce(*load_pair(record, self.task, soft_threshold=self.soft_threshold))
        if self.cache is not None:
            self.cache.put(record, decoded)
        return decoded

    def reduce(self, image: np.ndarray, mask: np.ndarray) -> Decoded:
        return reduce_pair(image, mask, self.image_size, self.resize)

    def keep(self, record: Any, image: np.ndarray, mask: np.ndarray) -> None:
        """``check_records``' ``keep``: the setup check's decode fills the cache."""
        self.cache.put(record, self.reduce(image, mask))


#: The splits each Lightning stage reads (``fit`` validates too, unless ``trainer.limit_val_batches=0``).
STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
SPLITS = ("train", "val", "test")


class PairDataset(Dataset):
    """Samples ``{"image": float [3,S,S] in [0,1], "mask": long [S,S], "valid": bool [S,S], "orig_size": long [2],
    "key": str}``: ``valid`` marks image pixels (False on the padding of ``resize="pad"``, all True for ``stretch``),
    ``orig_size`` is the (H, W) of the decoded image before resizing (clinical read-outs use it to measure masks in the
    original aspect ratio; a cached pair carries it)."""

    def __init__(self, source: Source, ids: Sequence[int], image_size: int, *, train: bool, augment: bool, seed: int,
                 resize: str = "stretch") -> None:
        self.source, self.ids, self.seed = source, list(ids), seed
        self.transform = build_transform(image_size, train=train, augment=augment, resize=resize)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        position, epoch = item if isinstance(item, tuple) else (item, 0)
        sid = self.ids[position]
        loaded = self.source.load(sid)
        image, mask = loaded[0], loaded[1]
        orig_size = loaded[2] if len(loaded) > 2 else image.shape[:2]
        self.transform.set_random_seed(sample_seed(self.seed, epoch, sid))
        out = self.transform(image=image, mask=mask, valid=np.ones(image.shape[:2], dtype=np.uint8))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "mask": torch.from_numpy(out["mask"].astype(np.int64)),  # a copy: the cached mask itself is read-only
            "valid": torch.from_numpy(np.ascontiguousarray(out["valid"])).bool(),
            "orig_size": torch.tensor(tuple(orig_size), dtype=torch.long),
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
        resize: str = _DEFAULTS.resize,
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
        cache: str = _DEFAULTS.cache,
        cache_dir: str | None = _DEFAULTS.cache_dir,
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
        if resize not in RESIZE_MODES:
            raise ValueError(f"data.resize={resize!r}: use one of {', '.join(RESIZE_MODES)}")
        self.resize = resize
        if cache not in CACHE_MODES:
            raise ValueError(f"data.cache={cache!r}: use one of {', '.join(CACHE_MODES)}")
        self.cache_mode, self.cache_dir = cache, cache_dir
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
        self.found_layout: str | None = None  # the layout detected under root (folder data)
        self.skipped: list[str] = []  # keys of the bad pairs dropped by data.skip_bad
        self._required: dict[str, tuple[str, str | None]] = {}  # split -> (who needs it, option that picks another)

    # -- to implement in subclasses -------------------------------------------------------------
    synthetic_options: tuple[str, ...] = ()  # data.options keys the synthetic generator accepts

    def synthetic_pair(self, index: int) -> Pair:
        raise NotImplementedError

    def discover(self, root: Path):  # -> datamodules.layouts.Discovery
        raise NotImplementedError

    # -- setup --------------------------------------------------------------------------------
    def require(self, split: str, reason: str, alternative: str | None = None) -> None:
        """Declare that ``split`` must hold images: :meth:`setup` fails (before any training or run folder) when it
        is empty. ``reason`` names who needs it (``"attack_eval.split=val"``); ``alternative``, an option that picks
        another split (``"attack_eval.split"``), is offered in the message with the splits that do hold images."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self._required.setdefault(split, (reason, alternative))

    def setup(self, stage: str | None = None) -> None:
        """Build the source and the splits once (Lightning may call this once per stage), print them (rank 0), then
        check that every split this stage reads (``STAGE_SPLITS``) or :meth:`require` declared holds images; a split
        nobody uses may be empty."""
        stage = getattr(stage, "value", stage)  # Lightning passes TrainerFn members ("fit", "validate", ...)
        if self.source is None:
            self._build()
            self._announce()
        needed = dict(self._required)
        for split in STAGE_SPLITS.get(stage or "", ()):
            if split == "val" and stage == "fit" and getattr(self.trainer, "limit_val_batches", None) == 0:
                continue  # validation switched off: fit reads train only
            needed.setdefault(split, (stage or "", None))
        for split, (reason, alternative) in needed.items():
            if not self.split_ids[split]:
                raise self.empty_split_error(split, reason, alternative)

    def _build(self) -> None:
        if self.source_kind == "synthetic":
            total = sum(self.counts)
            self.source = Source([f"synthetic_{self.name}_{i:05d}" for i in range(total)], self.synthetic_pair)
            n_train, n_val, _ = self.counts
            ids = list(range(total))
            self.split_ids = {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}
        else:
            source = self._folder_source()
            self.split_ids = self._split_folder(source)
            self.source = source

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0)  # set from the launcher's environment (torchrun, SLURM)

    def _announce(self) -> None:
        if self._rank() == 0:
            print(f"data: {self.summary()}", flush=True)

    def summary(self) -> str:
        """One line: what was found and how it was split, e.g. ``isic2018 layout under /x, task lesion, split random
        (data_seed 0): train 3, val 1, test 1``."""
        d = self.describe()
        counts = ", ".join(f"{s} {n}" for s, n in d["counts"].items())
        skipped = f"; {d['skipped']} bad pair(s) skipped (data.skip_bad=true)" if d["skipped"] else ""
        if d["source"] == "synthetic":
            return f"synthetic {self.name}, task {d['task']} (data_seed {d['data_seed']}): {counts}"
        how = f"random (data_seed {d['data_seed']})" if d["split"] == "random" else "official"
        return f"{d['layout']} layout under {d['root']}, task {d['task']}, split {how}: {counts}{skipped}"

    def describe(self) -> dict[str, Any]:
        """What the data are, for ``results.json``: source, root, detected layout, task, split mode, seed, fractions,
        pairs per split and the bad pairs skipped. Sets the data up if that has not happened in this process."""
        if self.source is None:
            self._build()
        folder = self.source_kind == "folder"
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source_kind,
            "root": str(Path(self.root).expanduser()) if folder and self.root else None,
            "layout": self.found_layout if folder else None,
            "task": self.task.name,
            "split": self.split_mode if folder else "synthetic",
            "data_seed": self.data_seed,
            "counts": {s: len(self.split_ids[s]) for s in SPLITS},
            "skipped": len(self.skipped),
            "skipped_keys": list(self.skipped),
            "cache": self._cache_in_use() if folder else None,
        }
        if folder and self.split_mode == "random":
            out["val_fraction"], out["test_fraction"] = self.fractions
        return out

    def empty_split_error(self, split: str, reason: str, alternative: str | None = None) -> Exception:
        """The one-line error for an empty ``split`` that ``reason`` needs: all split counts and the options that
        change them."""
        from lightning_seg.datamodules.layouts import DataError

        d = self.describe()
        counts = ", ".join(f"{s} {n}" for s, n in d["counts"].items())
        if d["source"] == "synthetic":
            where, fix = f"synthetic {self.name} data", f"use data.num_{split} >= 1"
        else:
            where = f"{d['layout']} layout under {d['root']}, data.split={d['split']}"
            total = sum(d["counts"].values())
            if self.split_mode == "official":
                fix = (f"the layout has no {split} pairs there: add them, or use data.split=random "
                       "(data.val_fraction / data.test_fraction)")
            elif split != "train" and self.fractions[split == "test"] == 0:
                fix = f"set data.{split}_fraction > 0"
            else:
                fix = (f"{total} usable pair{'s are' if total != 1 else ' is'} too few: add pairs (a random split "
                       "keeps one for train first, then one for val and one for test)")
        if alternative:
            others = [s for s in SPLITS if s != split and d["counts"][s]]
            if others:
                fix += f", or use {alternative}={'|'.join(others)}"
        who = reason or "this command"
        return DataError(f"{who} needs the {split} split of {self.name}, but it is empty ({where}: {counts}); {fix}")

    def _folder_source(self) -> Source:
        from lightning_seg.datamodules.layouts import DataError, check_records, format_problems

        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        found = self.discover(root)
        problems = list(found.problems)
        loader = RecordLoader(found.records, self.task.name, self.soft_threshold, self.image_size, self.resize,
                              self._new_cache(len(found.records)))
        # one decode per pair: the check's decode fills the cache; a valid disk entry was checked when it was written
        todo = loader.cache.pending(found.records) if loader.cache is not None else found.records
        problems += check_records(todo, self.task.name, soft_threshold=self.soft_threshold,
                                  keep=loader.keep if loader.cache is not None else None)
        bad = {p.key for p in problems}
        if problems:
            message = format_problems(problems, root=root)
            if not self.skip_bad:
                raise DataError(message)  # the message names every bad file and the data.skip_bad option
            warnings.warn(f"Skipping {len(bad)} bad pair(s) (data.skip_bad=true):\n{message}", stacklevel=2)
        records = [r for r in found.records if r.key not in bad]
        if not records:
            raise DataError(f"No usable image/mask pairs under {root} (layout {found.layout}).")
        self.found_layout, self.skipped = found.layout, sorted(bad)
        loader = RecordLoader(records, self.task.name, self.soft_threshold, self.image_size, self.resize, loader.cache)
        if loader.cache is not None:
            loader.cache.freeze([r.key for r in records])
        return Source([r.key for r in records], loader, [r.split for r in records])

    def _new_cache(self, n_pairs: int) -> Any:
        from lightning_seg.datamodules.cache import (
            MEMORY_LIMIT_FRACTION,
            DiskCache,
            MemoryCache,
            pair_bytes,
            physical_memory,
            settings_folder,
        )

        if self.cache_mode == "disk":
            return DiskCache(settings_folder(self.cache_dir, task=self.task.name, resize=self.resize,
                                             image_size=self.image_size, soft_threshold=self.soft_threshold))
        if self.cache_mode == "memory":
            need, have = n_pairs * pair_bytes(self.image_size), physical_memory()
            if have and need > MEMORY_LIMIT_FRACTION * have:
                warnings.warn(f"data.cache=memory would hold up to {need / 2**20:,.1f} MiB ({n_pairs} pairs at "
                              f"{self.image_size} px), more than {MEMORY_LIMIT_FRACTION:.0%} of this machine's "
                              f"{have / 2**20:,.0f} MiB: running without a decode cache (every epoch decodes every "
                              "file); use data.cache=disk", stacklevel=3)
                return None
            return MemoryCache()
        return None

    def _cache_in_use(self) -> str:
        cache = getattr(self.source.load, "cache", None) if self.source is not None else None
        return cache.mode if cache is not None else "none"

    def _split_folder(self, source: Source) -> dict[str, list[int]]:
        """Random split: ``round(fraction * n)`` pairs for val and test, but at least one each (fraction > 0) while
        train keeps one: 1 pair -> 1/0/0, 2 -> 1/1/0, 3 -> 1/1/1, 5 -> 3/1/1 at the default 0.15 / 0.15. Official
        split: the layout's folders; no validation folder -> val is carved from train the same way."""
        from lightning_seg.datamodules.layouts import DataError

        ids = list(range(len(source)))
        official = source.splits if self.split_mode == "official" else None
        if official is not None and all(s is None for s in official):
            raise DataError(f"data.split=official, but the {self.found_layout} layout under {self.root} defines no "
                            "official splits: use data.split=random")
        rng = np.random.default_rng(self.data_seed)
        if official is None:
            perm = rng.permutation(len(ids)).tolist()
            n_val, n_test = _held_out(len(ids), *self.fractions)
            return {"train": sorted(perm[n_test + n_val :]), "val": sorted(perm[n_test : n_test + n_val]),
                    "test": sorted(perm[:n_test])}
        out = {s: [i for i in ids if official[i] == s] for s in SPLITS}
        if not out["val"] and self.fractions[0] > 0:  # e.g. ISIC 2016 has no validation split: carve it from train
            perm = rng.permutation(out["train"]).tolist()
            n_val, _ = _held_out(len(perm), self.fractions[0], 0.0)
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
        return PairDataset(self.source, self.split_ids[split], self.image_size, train=split == "train", augment=self.augment, seed=self.seed,
                           resize=self.resize)

    def _loader(self, split: str) -> DataLoader:
        rank, world = self._world()
        train = split == "train"
        batch = self.batch_size if train else self.eval_batch_size
        if batch % world:
            raise ValueError(f"data.{'batch_size' if train else 'eval_batch_size'}={batch} is not divisible by {world} processes")
        if self.source is None:
            self.setup()
        if not self.split_ids[split]:  # a split nobody declared (stage None): one clear line, not the sampler's error
            raise self.empty_split_error(split, f"the {split} dataloader")
        dataset = self.dataset(split)
        if not train and len(dataset) < world:  # evaluation is not padded: a rank would get no image at all
            from lightning_seg.datamodules.layouts import DataError

            n = len(dataset)
            raise DataError(f"the {split} split of {self.name} holds {n} image{'' if n == 1 else 's'}, fewer than the "
                            f"{world} processes that share it: add images or use trainer.devices=1")
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


def _held_out(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) sizes of a random split of ``n`` pairs: ``round(fraction * n)``, at least 1 for a fraction > 0,
    train keeping at least one pair (val is served before test)."""
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = min(n_val, max(0, n - 1))
    n_test = min(n_test, max(0, n - 1 - n_val))
    return n_val, n_test
