"""Decode one :class:`PairRecord` into ``(image uint8 HxWx3 RGB, mask uint8 HxW class indices)``.

Class maps (binding project convention):

* task ``lesion`` (ISIC): 0 background, 1 lesion.
* task ``disc``: 0 background, 1 optic disc.
* task ``disc_cup``: 0 background, 1 rim, 2 cup (disc = mask >= 1, cup = mask == 2).

Mask rules per layout (the mask formats the data sets document):

* ISIC 2016/2017/2018 and generic ``lesion`` masks: lesion = grey > 127. Anti-aliased
  boundary greys are normal; 8-bit RGB masks are accepted when all channels are equal
  (as in the FR repo samples). A mask whose values are all in {0, 1} is read as an index
  map (1 = lesion) so that 0/1 PNGs are not silently turned into empty masks. A "binary"
  mask is rejected when more than ``ANTIALIAS_TOLERANCE`` of its pixels are neither 0
  nor 255 (a photo, a soft map or a multi-class index map, not a binary mask).
* REFUGE ``.bmp``: grey 0 = cup, 128 = rim, 255 = background; disc = value <= 150,
  cup = value <= 100 (bob.ip.binseg thresholds). Rejected when more than
  ``ANTIALIAS_TOLERANCE`` of the pixels are not one of 0/128/255.
* Drishti-GS1 soft maps (pixel = expert agreement): ``soft_threshold`` "majority"
  (>= 0.5*255, i.e. >= 128), "all" (> 254), "any" (> 0).
* RIM-ONE r3 / RIM-ONE DL separate binary disc and cup files: > 127, same tolerance as ISIC.
  RIM-ONE r3 images are stereo pairs: the LEFT half is used; a mask as wide as the full
  stereo image is cropped to its left half too, a mask half as wide is used as is.
* ORIGA ``.mat`` variable ``mask`` in {0 background, 1 disc, 2 cup}; other values are rejected.
* generic glaucoma ``masks/`` PNGs, decided per file:
  (a) all values <= 2  -> index map {0 bg, 1 rim/disc, 2 cup};
  (b) else, exact grey 128 on >= 1 % of the pixels -> REFUGE grey code (0 cup, 128 rim, 255 bg);
  (c) else -> binary disc mask (disc = grey > 127); it has no cup, so task ``disc_cup`` rejects it.

Cup outside disc (``disc_cup`` with separate disc/cup files): if more than
``CUP_OUTSIDE_TOLERANCE`` of the cup pixels lie outside the disc the pair is reported as
bad; otherwise the few stray pixels are dropped (cup := cup & disc) so that cup is
always inside disc. Grey-coded and index layouts guarantee cup inside disc by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lightning_seg.config import DataConfig

from .records import DataError, DataProblem, PairRecord, check_soft_threshold, check_task

#: Largest fraction of pixels allowed outside the expected grey levels of a binary/grey-coded mask.
ANTIALIAS_TOLERANCE = 0.10
#: Largest fraction of cup pixels allowed outside the disc before the pair is reported.
CUP_OUTSIDE_TOLERANCE = 0.05
#: Fraction of exact-128 pixels that marks a generic glaucoma mask as REFUGE grey-coded.
GREY_CODE_MIN_FRACTION = 0.01

SOFT_CUTS = {"majority": 128, "all": 255, "any": 1}  # value >= cut counts as foreground


class BadFile(Exception):
    """Internal: a decoding failure for one file; wrapped into DataError by ``load_pair``."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(problem)
        self.path = Path(path)
        self.problem = problem


# ---------------------------------------------------------------------------------------
# File readers
# ---------------------------------------------------------------------------------------


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise BadFile(path, "file is missing")
    img = None
    try:
        img = Image.open(path)
        img.load()  # force a full decode: truncated JPEG/PNG fails here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if img is not None:
            img.close()  # PIL closes the file after a successful load(), not after a failed one
        raise BadFile(path, f"cannot decode image file ({type(err).__name__}: {err})") from None
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB (grey and palette images are expanded)."""
    path = Path(path)
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise BadFile(path, f"image is {img.mode} (16-bit/float); expected an 8-bit RGB image")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_grey(path: str | Path) -> np.ndarray:
    """Read a mask as uint8 HxW.

    RGB(A) and palette masks are accepted only when their colour channels are equal
    (grey stored as RGB); a real colour image is reported instead of being averaged.
    """
    path = Path(path)
    img = _open(path)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8) * 255
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise BadFile(path, "mask is 16-bit with values above 255; save it as an 8-bit PNG")
        return arr.astype(np.uint8)
    if img.mode in ("L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise BadFile(path, "mask is a colour image (RGB channels differ); expected a single-channel grey mask")
    return rgb[..., 0].copy()


def read_mat_mask(path: str | Path) -> np.ndarray:
    """Read ORIGA ``.mat`` variable ``mask`` ({0,1,2}) as uint8 HxW; scipy is imported lazily."""
    path = Path(path)
    try:
        from scipy.io import loadmat
    except ImportError:  # optional extra: only ORIGA needs scipy
        raise DataError(
            "ORIGA .mat annotations need scipy, which is not installed; "
            "install it with: pip install 'lightning_seg[origa]'"
        ) from None
    if not path.is_file():
        raise BadFile(path, "file is missing")
    try:
        mat = loadmat(path)
    except NotImplementedError:
        raise BadFile(path, "MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7') or convert to PNG") from None
    except Exception as err:  # scipy raises several types for garbage input
        raise BadFile(path, f"cannot read .mat file ({type(err).__name__}: {err})") from None
    if "mask" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise BadFile(path, f"no variable 'mask' in .mat file (found {found}); expected ORIGA's 'mask'")
    arr = np.asarray(mat["mask"])
    if arr.ndim != 2:
        raise BadFile(path, f"'mask' has shape {arr.shape}; expected a 2-D HxW array")
    if not np.issubdtype(arr.dtype, np.number) or arr.size == 0:
        raise BadFile(path, f"'mask' has dtype {arr.dtype}; expected integer class indices")
    if not np.array_equal(arr, np.round(arr)) or arr.min() < 0 or arr.max() > 2:
        raise BadFile(path, f"'mask' values {_values(arr)} are outside ORIGA's {{0 background, 1 disc, 2 cup}}")
    return arr.astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Mask value rules
# ---------------------------------------------------------------------------------------


def _values(arr: np.ndarray, limit: int = 8) -> str:
    vals = np.unique(arr)
    shown = ", ".join(str(v) for v in vals[:limit].tolist())
    return "{" + shown + (f", ... ({len(vals)} distinct)" if len(vals) > limit else "") + "}"


def _off_levels(grey: np.ndarray, levels: tuple[int, ...]) -> float:
    return float(1.0 - np.isin(grey, levels).mean()) if grey.size else 0.0


def _check_binary(grey: np.ndarray, path: Path, message: Callable[[float], str]) -> None:
    """Fail with ``message(share of off-level pixels)`` when more than the anti-aliasing tolerance of the pixels are
    neither 0 nor 255."""
    off = _off_levels(grey, (0, 255))
    if off > ANTIALIAS_TOLERANCE:
        raise BadFile(path, message(off))


def binary_foreground(grey: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Binary mask -> bool foreground (> 127); {0,1} masks are index maps; rejects non-binary content."""
    if grey.size and grey.max() <= 1:
        return grey == 1
    _check_binary(grey, path, lambda off: (
        f"{what} should be binary 0/255 (anti-aliased edges allowed) but {off:.0%} of pixels are other "
        f"values {_values(grey)}; is this an image, a soft map or a multi-class mask?"))
    return grey > 127


def refuge_classes(grey: np.ndarray, path: Path) -> np.ndarray:
    """REFUGE grey code (0 cup, 128 rim, 255 bg) -> index {0 bg, 1 rim, 2 cup}."""
    off = _off_levels(grey, (0, 128, 255))
    if off > ANTIALIAS_TOLERANCE:
        raise BadFile(
            path,
            f"REFUGE mask should hold grey levels 0 (cup) / 128 (rim) / 255 (background) but {off:.0%} of "
            f"pixels are other values {_values(grey)}",
        )
    out = np.zeros(grey.shape, np.uint8)
    out[grey <= 150] = 1
    out[grey <= 100] = 2
    return out


def soft_foreground(grey: np.ndarray, soft_threshold: str) -> np.ndarray:
    """Drishti-GS1 soft map (expert agreement 0..255) -> bool foreground."""
    return grey >= SOFT_CUTS[soft_threshold]


def combine_disc_cup(disc: np.ndarray, cup: np.ndarray, cup_path: Path) -> np.ndarray:
    """Separate bool disc/cup -> index {0,1,2}; stray cup pixels outside the disc are dropped
    (up to CUP_OUTSIDE_TOLERANCE of the cup), more than that is reported."""
    n_cup = int(cup.sum())
    outside = int((cup & ~disc).sum())
    if n_cup and outside / n_cup > CUP_OUTSIDE_TOLERANCE:
        raise BadFile(
            cup_path,
            f"{outside / n_cup:.0%} of the cup pixels ({outside}) lie outside the disc; the cup must be inside "
            "the disc (wrong cup/disc file or swapped masks?)",
        )
    out = disc.astype(np.uint8)
    out[cup & disc] = 2
    return out


def generic_glaucoma_classes(grey: np.ndarray, path: Path, task: str) -> np.ndarray:
    """Generic glaucoma mask -> index {0,1,2}; see the module docstring for the rule (a)/(b)/(c)."""
    if grey.size == 0 or grey.max() <= 2:
        return grey.astype(np.uint8)  # (a) index map
    if (grey == 128).mean() >= GREY_CODE_MIN_FRACTION:
        return refuge_classes(grey, path)  # (b) REFUGE grey code
    if task == "disc_cup":
        raise BadFile(
            path,
            f"mask looks like a binary disc mask (values {_values(grey)}) and has no cup; for task 'disc_cup' "
            "use an index map {0 bg, 1 rim, 2 cup} or REFUGE grey codes 0/128/255, or use task 'disc'",
        )
    _check_binary(grey, path, lambda off: (
        f"mask values {_values(grey)} are neither an index map {{0,1,2}}, nor REFUGE grey codes 0/128/255, "
        f"nor a binary 0/255 disc mask ({off:.0%} of pixels are other values)"))
    return (grey > 127).astype(np.uint8)  # (c) binary disc


# ---------------------------------------------------------------------------------------
# Per-layout decoding
# ---------------------------------------------------------------------------------------


def _mask_path(record: PairRecord, role: str) -> Path:
    try:
        return record.masks[role]
    except KeyError:
        raise BadFile(record.image, f"no {role!r} mask file recorded for this image (missing mask)") from None


def _same_size(mask: np.ndarray, image: np.ndarray, path: Path) -> None:
    if mask.shape != image.shape[:2]:
        raise BadFile(
            path,
            f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its image "
            f"{image.shape[1]}x{image.shape[0]}",
        )


def _left_half_mask(mask: np.ndarray, full_width: int, path: Path) -> np.ndarray:
    """RIM-ONE r3: crop a full-width stereo mask like its image; a half-width mask is used as is."""
    half = full_width // 2
    if mask.shape[1] == full_width:
        return mask[:, :half]
    if mask.shape[1] == half:
        return mask
    raise BadFile(
        path,
        f"mask width {mask.shape[1]} matches neither the stereo image width {full_width} nor its left half {half}",
    )


#: (grey mask, its path, role "disc"|"cup") -> bool foreground
Foreground = Callable[[np.ndarray, Path, str], np.ndarray]


def _disc_cup_from_files(
    record: PairRecord, image_full_w: int, image: np.ndarray, task: str, fg: Foreground
) -> np.ndarray:
    """Shared path for layouts with separate disc and cup files (Drishti, RIM-ONE r3, RIM-ONE DL)."""
    stereo = record.layout == "rimone_r3"

    def load(role: str) -> np.ndarray:
        path = _mask_path(record, role)
        grey = read_grey(path)
        if stereo:
            grey = _left_half_mask(grey, image_full_w, path)
        _same_size(grey, image, path)
        return fg(grey, path, role)

    disc = load("disc")
    if task == "disc":
        return disc.astype(np.uint8)
    cup = load("cup")
    return combine_disc_cup(disc, cup, _mask_path(record, "cup"))


def _decode(record: PairRecord, task: str, soft_threshold: str) -> tuple[np.ndarray, np.ndarray]:
    layout = record.layout
    image = read_rgb(record.image)
    full_w = image.shape[1]
    if layout == "rimone_r3":
        image = np.ascontiguousarray(image[:, : full_w // 2])  # stereo pair: left half only

    if layout.startswith("isic") or (layout == "generic" and task == "lesion"):
        path = _mask_path(record, "mask")
        grey = read_grey(path)
        _same_size(grey, image, path)
        return image, binary_foreground(grey, path, "lesion mask").astype(np.uint8)

    if layout == "refuge" or layout == "generic":
        path = _mask_path(record, "mask")
        grey = read_grey(path)
        _same_size(grey, image, path)
        idx = refuge_classes(grey, path) if layout == "refuge" else generic_glaucoma_classes(grey, path, task)
    elif layout == "origa":
        path = _mask_path(record, "mat")
        idx = read_mat_mask(path)
        _same_size(idx, image, path)
    elif layout == "drishti":
        idx = _disc_cup_from_files(record, full_w, image, task, lambda g, p, r: soft_foreground(g, soft_threshold))
    elif layout in ("rimone_r3", "rimone_dl"):
        idx = _disc_cup_from_files(
            record, full_w, image, task, lambda g, p, r: binary_foreground(g, p, f"{r} mask")
        )
    else:
        raise DataError(f"unknown layout {layout!r} in record {record.key!r}")

    if task == "disc":
        idx = (idx >= 1).astype(np.uint8)
    return image, idx


def load_pair(
    record: PairRecord, task: str, *, soft_threshold: str = DataConfig.soft_threshold
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair -> (image uint8 HxWx3 RGB, mask uint8 HxW class indices).

    ``task``: "lesion" (ISIC, {0,1}), "disc" ({0,1}) or "disc_cup" ({0 bg, 1 rim, 2 cup}).
    ``soft_threshold`` only matters for Drishti-GS1 soft maps. Raises :class:`DataError`
    naming the file and the problem (unreadable image, missing mask, size mismatch,
    unexpected mask values, cup outside disc).
    """
    check_task(task, record.layout)
    check_soft_threshold(soft_threshold)
    try:
        return _decode(record, task, soft_threshold)
    except BadFile as bad:
        raise DataError.from_problems([DataProblem(bad.path, record.key, bad.problem)]) from None
