"""Decode cache of folder data (``data.cache``): every pair is decoded once and kept already resized for the pipeline.

A 2124 x 2056 REFUGE photograph takes about 100 ms to decode, and without a cache every epoch decodes every file again
for a 96-px input. The setup check (``layouts.check_records``) decodes every pair anyway: the cache keeps that decode,
passed through the pipeline's first step (``transforms.resize_step``: the ``stretch`` resize, or the longest side to
``image_size`` for ``pad``). That step is deterministic, and on an array already at its target size albumentations
returns the array unchanged, so a cached sample is bit-identical to an uncached one (augmentations, padding and the
``valid`` map included); the original (H, W) is stored with it for ``orig_size``.

* ``memory`` (default): every pair in one flat uint8 tensor of the process that set the data up, 4 bytes per input
  pixel (3 image + 1 mask: 36 KiB per pair at 96 px, 256 KiB at 256 px; ``pad`` stores only the image region).
  Forked DataLoader workers read it copy-on-write; spawned processes (DDP spawn, spawn / forkserver workers) get it
  through shared memory (:class:`MemoryCache`). The arrays handed out are read-only views. Above a quarter of the
  physical memory the datamodule warns and runs without a cache.
* ``disk``: one ``.pair`` file per pair under ``<cache_dir>/<settings>/`` (a 24-byte header, then the raw image and
  mask bytes: read with one ``read``, no decoding); the settings folder names the task, resize mode,
  image size and soft threshold and hashes the decoding code (``layouts/reading.py``, ``transforms.py``, this file)
  and the decoder versions; the file name hashes the pair's paths and each file's (size, mtime, ctime, inode), so a
  changed file misses and is decoded, checked and written again (its stale entry is removed). An entry is written only
  after its pair passed the check, so a hit skips the setup decode too: a second run starts without decoding.
* ``none``: every access decodes the full file (setup still decodes every pair once for the check).

A cache is a snapshot taken at setup: a file changed during a run is picked up by the next ``setup``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

CACHE_MODES = ("none", "memory", "disk")
#: Bumped when the entry format changes (part of the settings folder's hash).
FORMAT = 1
#: Disk entries: magic, then 4 int32, then the bytes.
MAGIC = b"LSPAIR1\0"
HEADER = len(MAGIC) + 16
#: Share of the physical memory above which ``memory`` falls back to no cache (with a warning).
MEMORY_LIMIT_FRACTION = 0.25


class Decoded(NamedTuple):
    """One cached pair: image uint8 h x w x 3 and mask uint8 h x w after ``resize_step``, and the decoded (H, W)."""

    image: np.ndarray
    mask: np.ndarray
    orig_size: tuple[int, int]


_local = threading.local()  # one resize pipeline per thread (the setup check fills the cache from a thread pool)


def _step(image_size: int, resize: str):
    import albumentations as A
    from lightning_seg.datamodules.transforms import resize_step

    steps = _local.__dict__.setdefault("steps", {})
    if (image_size, resize) not in steps:
        steps[image_size, resize] = A.Compose([resize_step(image_size, resize)], strict=True)
    return steps[image_size, resize]


def reduce_pair(image: np.ndarray, mask: np.ndarray, image_size: int, resize: str) -> Decoded:
    """A decoded pair passed through the pipeline's first step (``transforms.resize_step``); arrays made read-only."""
    out = _step(image_size, resize)(image=image, mask=mask)
    small, small_mask = np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])
    small.flags.writeable = small_mask.flags.writeable = False  # shared by every epoch and worker: never modified
    return Decoded(small, small_mask, (int(image.shape[0]), int(image.shape[1])))


def pair_bytes(image_size: int) -> int:
    """Upper bound of the memory of one cached pair (``stretch``; ``pad`` stores less): 3 + 1 bytes per pixel."""
    return 4 * image_size * image_size


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_seg" / "decoded"


class MemoryCache:
    """Pairs kept in this process's memory. The setup check fills ``entries``; :meth:`freeze` then moves them into one
    flat uint8 tensor (``block``) and an index, which every kind of worker process shares instead of copying:

    * forked DataLoader workers (Linux's default) read it copy-on-write (one object, no per-array refcount pages);
    * processes started by ``spawn`` / ``forkserver`` (DDP spawn ranks, their DataLoader workers, macOS, Python >= 3.14)
      receive the datamodule through ``multiprocessing``'s pickler, which moves the tensor into shared memory once and
      sends a handle: no copy of the arrays through the pipe and no second decode. (A plain ``pickle.dumps`` copies.)
    """

    mode = "memory"

    def __init__(self) -> None:
        self.entries: dict[str, Decoded] = {}  # before freeze(), and pairs loaded later in this process
        self.block: torch.Tensor | None = None  # uint8: image (h*w*3) then mask (h*w) of every pair, back to back
        self.index: dict[str, tuple[int, int, int, int, int]] = {}  # key -> (offset, h, w, original H, original W)

    def pending(self, records: Iterable[Any]) -> list[Any]:
        """The records not cached yet (all of them at setup)."""
        return [r for r in records if r.key not in self.entries and r.key not in self.index]

    def get(self, record: Any) -> Decoded | None:
        slot = self.index.get(record.key)
        if slot is None:
            return self.entries.get(record.key)
        offset, h, w, orig_h, orig_w = slot
        # a fresh view every time (1 us): multiprocessing's pickler moves the block into shared memory on its first
        # trip to a spawned process, which frees the old buffer, so a view kept from before would dangle
        flat = self.block.numpy()  # type: ignore[union-attr]
        n = h * w * 3
        image = flat[offset : offset + n].reshape(h, w, 3)
        mask = flat[offset + n : offset + n + h * w].reshape(h, w)
        image.flags.writeable = mask.flags.writeable = False
        return Decoded(image, mask, (orig_h, orig_w))

    def put(self, record: Any, decoded: Decoded) -> None:
        self.entries[record.key] = decoded

    def freeze(self, keys: Iterable[str]) -> None:
        """Move the entries of ``keys`` (the pairs that passed the check) into ``block``; drop the others."""
        keep = [(k, self.entries[k]) for k in keys if k in self.entries]
        total = sum(d.image.nbytes + d.mask.nbytes for _, d in keep)
        block = torch.empty(total, dtype=torch.uint8)
        flat, offset = block.numpy(), 0
        for key, d in keep:
            h, w = d.mask.shape
            flat[offset : offset + h * w * 3] = d.image.reshape(-1)
            flat[offset + h * w * 3 : offset + h * w * 4] = d.mask.reshape(-1)
            self.index[key] = (offset, h, w, *d.orig_size)
            offset += h * w * 4
        self.block, self.entries = block, {}

    @property
    def nbytes(self) -> int:
        return (self.block.numel() if self.block is not None else 0) + sum(
            d.image.nbytes + d.mask.nbytes for d in self.entries.values())


class DiskCache:
    """Pairs stored as ``<folder>/<paths hash>-<file stats hash>.pair`` (see the module docstring): ``MAGIC``, then
    (h, w, original H, original W) as little-endian int32, then the image (h*w*3) and mask (h*w) bytes."""

    mode = "disk"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.names: dict[str, str] = {}  # record key -> entry file name, computed at setup
        self.stale: dict[str, list[str]] = {}  # record key -> entries of older versions of its files
        self.writable = True

    def pending(self, records: Sequence[Any]) -> list[Any]:
        """The records without a valid entry: their files are new or changed since the entry was written."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            present = os.listdir(self.folder)
        except OSError as err:
            self._unwritable(err)
            return list(records)
        by_prefix: dict[str, list[str]] = {}
        for name in present:
            if name.endswith(".pair"):
                by_prefix.setdefault(name.split("-", 1)[0], []).append(name)
        out = []
        for r in records:
            try:
                name = entry_name(r)
            except OSError:  # a file vanished since discovery: the check reports it
                out.append(r)
                continue
            self.names[r.key] = name
            others = by_prefix.get(name.split("-", 1)[0], [])
            self.stale[r.key] = [n for n in others if n != name]
            if name not in others:
                out.append(r)
        return out

    def freeze(self, keys: Iterable[str]) -> None:
        """Nothing to do: the entries are files (the names travel with a pickled cache)."""

    def get(self, record: Any) -> Decoded | None:
        name = self.names.get(record.key)
        if name is None:
            return None
        try:
            data = (self.folder / name).read_bytes()
        except OSError:  # removed since setup: decode again
            return None
        if len(data) < HEADER or data[: len(MAGIC)] != MAGIC:
            return None  # damaged: decode again
        h, w, orig_h, orig_w = (int(v) for v in np.frombuffer(data, "<i4", 4, len(MAGIC)))
        if len(data) != HEADER + 4 * h * w:
            return None
        image = np.frombuffer(data, np.uint8, 3 * h * w, HEADER).reshape(h, w, 3)  # read-only views of the bytes
        mask = np.frombuffer(data, np.uint8, h * w, HEADER + 3 * h * w).reshape(h, w)
        return Decoded(image, mask, (orig_h, orig_w))

    def put(self, record: Any, decoded: Decoded) -> None:
        if not self.writable:
            return
        tmp = None
        try:
            name = self.names.get(record.key) or entry_name(record)
            self.names[record.key] = name
            tmp = self.folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
            h, w = decoded.mask.shape
            header = MAGIC + np.asarray([h, w, *decoded.orig_size], "<i4").tobytes()
            with open(tmp, "wb") as f:
                f.write(header + decoded.image.tobytes() + decoded.mask.tobytes())
            os.replace(tmp, self.folder / name)  # atomic: concurrent ranks writing the same entry are safe
            for old in self.stale.pop(record.key, []):
                (self.folder / old).unlink(missing_ok=True)
        except OSError as err:  # disk full, read-only folder: keep going without writing
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self._unwritable(err)

    def _unwritable(self, err: OSError) -> None:
        if self.writable:
            warnings.warn(f"data.cache=disk: cannot write to {self.folder} ({err}); continuing without writing "
                          "cache entries (set data.cache_dir to a writable folder)", stacklevel=3)
        self.writable = False


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def entry_name(record: Any) -> str:
    """``<hash of the layout, key and file paths>-<hash of the files' size, mtime, ctime and inode>.pair``."""
    files = [("image", record.image), *sorted(record.masks.items())]
    where = json.dumps([record.layout, record.key, [(role, os.path.abspath(p)) for role, p in files]])
    stats = json.dumps([_stat(Path(p)) for _, p in files])
    return f"{hashlib.sha1(where.encode()).hexdigest()[:24]}-{hashlib.sha1(stats.encode()).hexdigest()[:16]}.pair"


def code_version() -> str:
    """Hash of what makes an entry: the decoding and resizing code, the entry format and the decoder versions."""
    import albumentations
    import cv2
    import PIL

    here = Path(__file__).resolve().parent
    h = hashlib.sha1(json.dumps([FORMAT, PIL.__version__, cv2.__version__, albumentations.__version__,
                                 np.__version__]).encode())
    for source in (here / "layouts" / "reading.py", here / "transforms.py", Path(__file__).resolve()):
        h.update(source.read_bytes())
    return h.hexdigest()[:12]


def settings_folder(root: str | Path | None, *, task: str, resize: str, image_size: int, soft_threshold: str) -> Path:
    """``<root>/<task>-<resize><image_size>-<soft_threshold>-<code version>``: one folder per decode setting."""
    base = Path(root).expanduser() if root else default_cache_dir()
    return base / f"{task}-{resize}{image_size}-{soft_threshold}-{code_version()}"
