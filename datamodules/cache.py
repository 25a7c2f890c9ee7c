"""Decode cache of folder data (``data.cache``): every pair is decoded once and kept already resized for the pipeline.

A 2124 x 2056 REFUGE photograph takes about 100 ms to decode, and without a cache every epoch decodes every file again
for a 96-px input. The setup check (``layouts.check_records``) decodes every pair anyway: the cache keeps that decode,
passed through the pipeline's first step (``transforms.resize_step``: the ``stretch`` resize, or the longest side to
``image_size`` for ``pad``). That step is deterministic, and on an array already at its target size albumentations
returns the array unchanged, so a cached sample is bit-identical to an uncached one (augmentations, padding and the
``valid`` map included); the original (H, W) is stored with it for ``orig_size``.

* ``memory`` (default): ``{key: (image, mask, original size)}`` in the process that set the data up, 4 bytes per
  input pixel (3 image + 1 mask: 36 KiB per pair at 96 px, 256 KiB at 256 px; ``pad`` stores only the image region).
  The arrays are read-only; DataLoader workers forked from that process read them copy-on-write, without copying.
  A pickled cache (DDP spawn) leaves its entries behind and the spawned process refills it in ``setup``. Above a
  quarter of the physical memory the datamodule warns and runs without a cache.
* ``disk``: one ``.npz`` per pair under ``<cache_dir>/<settings>/``; the settings folder names the task, resize mode,
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
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

CACHE_MODES = ("none", "memory", "disk")
#: Bumped when the entry format changes (part of the settings folder's hash).
FORMAT = 1
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
    """Pairs kept in this process's memory, by record key."""

    mode = "memory"

    def __init__(self) -> None:
        self.entries: dict[str, Decoded] = {}
        self.restored = False  # unpickled (DDP spawn): empty until ``setup`` refills it

    def pending(self, records: Iterable[Any]) -> list[Any]:
        """The records not cached yet (all of them at first setup)."""
        return [r for r in records if r.key not in self.entries]

    def get(self, record: Any) -> Decoded | None:
        return self.entries.get(record.key)

    def put(self, record: Any, decoded: Decoded) -> None:
        self.entries[record.key] = decoded

    @property
    def nbytes(self) -> int:
        return sum(d.image.nbytes + d.mask.nbytes for d in self.entries.values())

    def __getstate__(self) -> dict[str, Any]:
        # a spawned process refills in setup instead of receiving a copy of every array through a pipe
        return {"entries": {}, "restored": True}


class DiskCache:
    """Pairs stored as ``<folder>/<paths hash>-<file stats hash>.npz`` (see the module docstring)."""

    mode = "disk"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.names: dict[str, str] = {}  # record key -> entry file name, computed at setup
        self.stale: dict[str, list[str]] = {}  # record key -> entries of older versions of its files
        self.writable = True
        self.restored = False  # never needs a refill: the names travel with it, the entries stay on disk

    def pending(self, records: Sequence[Any]) -> list[Any]:
        """The records without a valid entry: their files are new or changed since the entry was written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        by_prefix: dict[str, list[str]] = {}
        for name in os.listdir(self.folder):
            if name.endswith(".npz"):
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

    def get(self, record: Any) -> Decoded | None:
        name = self.names.get(record.key)
        if name is None:
            return None
        try:
            with np.load(self.folder / name) as z:
                image, mask, orig = z["image"], z["mask"], z["orig_size"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # removed or damaged: decode again
            return None
        image.flags.writeable = mask.flags.writeable = False
        return Decoded(image, mask, (int(orig[0]), int(orig[1])))

    def put(self, record: Any, decoded: Decoded) -> None:
        if not self.writable:
            return
        try:
            name = self.names.get(record.key) or entry_name(record)
            self.names[record.key] = name
            tmp = self.folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, image=decoded.image, mask=decoded.mask, orig_size=np.asarray(decoded.orig_size, np.int64))
            os.replace(tmp, self.folder / name)  # atomic: concurrent ranks writing the same entry are safe
            for old in self.stale.pop(record.key, []):
                (self.folder / old).unlink(missing_ok=True)
        except OSError as err:  # disk full, read-only folder: keep going without writing
            self.writable = False
            warnings.warn(f"data.cache=disk: cannot write to {self.folder} ({err}); continuing without writing "
                          "cache entries (set data.cache_dir to a writable folder)", stacklevel=2)


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def entry_name(record: Any) -> str:
    """``<hash of the layout, key and file paths>-<hash of the files' size, mtime, ctime and inode>.npz``."""
    files = [("image", record.image), *sorted(record.masks.items())]
    where = json.dumps([record.layout, record.key, [(role, os.path.abspath(p)) for role, p in files]])
    stats = json.dumps([_stat(Path(p)) for _, p in files])
    return f"{hashlib.sha1(where.encode()).hexdigest()[:24]}-{hashlib.sha1(stats.encode()).hexdigest()[:16]}.npz"


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
