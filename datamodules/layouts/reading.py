"""Decode one :class:`PairRecord` into ``(image uint8 HxWx3 RGB, mask uint8 HxW class indices)``.

Class maps (binding project convention):

* task ``lesion`` (ISIC): 0 background, 1 lesion.
* task ``disc``: 0 background, 1 optic disc.
* task ``disc_cup``: 0 background, 1 rim, 2 cup (disc = mask >= 1, cup = mask == 2).

Mask rules per layout (the mask formats the data sets document). No mask is silently decoded as
something else: values that do not fit the layout's levels are reported with the file and the
values found. Greys other than the levels are accepted only as anti-aliasing, i.e. along the
edges between classes (resampled, upscaled or compressed masks included); an off-level grey that
fills regions away from the edges (more than ``LABEL_LEVEL_MIN_FRACTION`` of the pixels, see
:func:`label_levels`) is a label and is rejected, and so is a mask with non-background values
whose foreground would vanish under the rule (e.g. {0, 2}: nothing above 127).

* ISIC 2016/2017/2018 and generic ``lesion`` masks: lesion = grey > 127. Anti-aliased
  boundary greys are normal; 8-bit RGB masks are accepted when all channels are equal
  (as in the FR repo samples). A mask whose values are all in {0, 1} is read as an index
  map (1 = lesion) so that 0/1 PNGs are not silently turned into empty masks. A "binary"
  mask is rejected when more than ``ANTIALIAS_TOLERANCE`` of its pixels are neither 0
  nor 255 (a photo, a soft map or a multi-class index map, not a binary mask), when it has
  non-zero values but none above 127 ({0, 2}, {0, 1, 2}, {0, 100}), or when an off-level
  grey is a label level (REFUGE's rim 128, a region of 1s in a 0/255 mask). An all-zero
  mask is an empty mask.
* REFUGE ``.bmp``: grey 0 = cup, 128 = rim, 255 = background; disc = value <= 150,
  cup = value <= 100 (bob.ip.binseg thresholds). Rejected when more than
  ``ANTIALIAS_TOLERANCE`` of the pixels are not one of 0/128/255, when non-background values
  leave no disc pixel, or when another grey is a label level.
* Drishti-GS1 soft maps (pixel = expert agreement): ``soft_threshold`` "majority"
  (>= 0.5*255, i.e. >= 128), "all" (> 254), "any" (> 0). A map with non-zero values none of
  which reaches the threshold is rejected (the structure would vanish), naming the option.
* RIM-ONE r3 / RIM-ONE DL separate binary disc and cup files: > 127, same rules as ISIC.
  RIM-ONE r3 images are stereo pairs: the LEFT half is used; a mask as wide as the full
  stereo image is cropped to its left half too, a mask half as wide is used as is.
* ORIGA ``.mat`` variable ``mask`` in {0 background, 1 disc, 2 cup}; other values are rejected.
* generic glaucoma ``masks/`` PNGs, decided per file:
  (a) all values <= 2  -> index map {0 bg, 1 rim/disc, 2 cup};
  (b) else, grey 128 is a level (exact 128 on >= 1 % of the pixels, or flat 128 regions on
      more than ``LABEL_LEVEL_MIN_FRACTION``) -> REFUGE grey code (0 cup, 128 rim, 255 bg);
  (c) else -> binary disc mask (disc = grey > 127, the binary rules above); it has no cup, so
      task ``disc_cup`` rejects it.
  For task ``disc_cup`` an (a) or (b) mask with a disc but no cup is rejected too (a {0, 1}
  disc-only mask would otherwise train an empty cup).

Cup outside disc (``disc_cup`` with separate disc/cup files): if more than
``CUP_OUTSIDE_TOLERANCE`` of the cup pixels lie outside the disc the pair is reported as
bad; otherwise the few stray pixels are dropped (cup := cup & disc) so that cup is
always inside disc. Grey-coded and index layouts guarantee cup inside disc by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
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
#: Share of the pixels above which an off-level grey filling regions (not edges) is a label level (see label_levels).
LABEL_LEVEL_MIN_FRACTION = 0.001
#: Pixels within this distance of a class edge may hold any grey (anti-aliasing, resampling, compression).
EDGE_RADIUS = 4

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
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)  # convert() would copy


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
        return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
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
    return float(1.0 - _on_levels(grey, levels).mean()) if grey.size else 0.0


def _on_levels(grey: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """``np.isin(grey, levels)``; for uint8 masks a 256-entry lookup table (``cv2.LUT``: 10x faster than ``np.isin``
    on a 2124 x 2056 REFUGE mask)."""
    if grey.dtype != np.uint8:
        return np.isin(grey, levels)
    lut = np.zeros(256, np.uint8)
    lut[list(levels)] = 1
    return cv2.LUT(np.ascontiguousarray(grey), lut).view(bool)


def label_levels(grey: np.ndarray, classes: np.ndarray, levels: tuple[int, ...]) -> dict[int, float]:
    """Greys other than ``levels`` that fill regions instead of lining edges: ``{grey: share of the pixels}``.

    Anti-aliasing, resampling and compression leave off-level greys along the edges between classes (or, after nearest
    upscaling, small scattered flat patches); a label stored with another value (a {0, 2} mask, REFUGE's rim 128 in a
    binary mask) fills a region. A pixel counts when its 3x3 neighbourhood holds only its own grey and no class edge of
    ``classes`` (the decoded mask) lies within ``EDGE_RADIUS`` pixels; a grey whose such pixels cover more than
    ``LABEL_LEVEL_MIN_FRACTION`` of the mask is a label level."""
    off = ~_on_levels(grey, levels)
    if not off.any():
        return {}
    grey = np.ascontiguousarray(grey)
    k3 = np.ones((3, 3), np.uint8)
    flat = cv2.erode(grey, k3) == cv2.dilate(grey, k3)
    classes = np.ascontiguousarray(classes, dtype=np.uint8)
    kr = np.ones((2 * EDGE_RADIUS + 1, 2 * EDGE_RADIUS + 1), np.uint8)
    near_edge = cv2.dilate(classes, kr) != cv2.erode(classes, kr)
    share = np.bincount(grey[off & flat & ~near_edge], minlength=256) / grey.size
    return {int(v): float(share[v]) for v in np.flatnonzero(share > LABEL_LEVEL_MIN_FRACTION)}


def _shares(levels: dict[int, float]) -> str:
    return ", ".join(f"{v} ({s:.1%} of the pixels)" for v, s in levels.items())


BINARY_EXPECTED = "expected 0 (background) and 255 ({fg}), with anti-aliased edge greys, or a 0/1 index map"


def binary_foreground(grey: np.ndarray, path: Path, what: str, foreground: str = "foreground") -> np.ndarray:
    """Binary mask -> bool foreground (> 127); {0,1} masks are index maps. Rejected (never decoded as something else,
    in particular never as an empty mask): more than ``ANTIALIAS_TOLERANCE`` of the pixels off 0/255; non-zero values
    of which none is above 127 (a {0, 2} or {0, 1, 2} mask: the foreground would vanish); an off-level grey that fills
    regions (:func:`label_levels`), i.e. a label, not anti-aliasing."""
    if grey.size == 0 or grey.max() <= 1:
        return grey == 1
    expected = BINARY_EXPECTED.format(fg=foreground)
    fg = grey > 127
    if not fg.any():
        raise BadFile(path, f"{what} values {_values(grey)} have no pixel above 127, so the {foreground} would decode "
                            f"as empty (foreground = grey > 127); {expected}")
    off = _off_levels(grey, (0, 255))
    if off > ANTIALIAS_TOLERANCE:
        raise BadFile(path, f"{what} should be binary 0/255 (anti-aliased edges allowed) but {off:.0%} of pixels are "
                            f"other values {_values(grey)}; is this an image, a soft map or a multi-class mask?")
    labels = label_levels(grey, fg, (0, 255))
    if labels:
        raise BadFile(path, f"{what} values {_values(grey)}: grey {_shares(labels)} fills regions away from the "
                            f"{foreground} edge, so it is a label, not anti-aliasing; {expected}")
    return fg


REFUGE_EXPECTED = "expected grey levels 0 (cup) / 128 (rim) / 255 (background)"


def refuge_classes(grey: np.ndarray, path: Path, what: str = "REFUGE mask") -> np.ndarray:
    """REFUGE grey code (0 cup, 128 rim, 255 bg) -> index {0 bg, 1 rim, 2 cup}; the same rejections as
    :func:`binary_foreground` for the levels 0/128/255 (a mask with non-background values but no disc pixel)."""
    off = _off_levels(grey, (0, 128, 255))
    if off > ANTIALIAS_TOLERANCE:
        raise BadFile(
            path,
            f"{what} should hold grey levels 0 (cup) / 128 (rim) / 255 (background) but {off:.0%} of "
            f"pixels are other values {_values(grey)}",
        )
    out = np.zeros(grey.shape, np.uint8)
    out[grey <= 150] = 1
    out[grey <= 100] = 2
    if not out.any() and (grey != 255).any():
        raise BadFile(path, f"{what} values {_values(grey)} have no pixel <= 150, so the disc would decode as empty "
                            f"(disc = grey <= 150, cup = grey <= 100); {REFUGE_EXPECTED}")
    labels = label_levels(grey, out, (0, 128, 255))
    if labels:
        raise BadFile(path, f"{what} values {_values(grey)}: grey {_shares(labels)} fills regions away from the "
                            f"disc and cup edges, so it is a label, not anti-aliasing; {REFUGE_EXPECTED}")
    return out


def soft_foreground(
    grey: np.ndarray, soft_threshold: str, path: Path | None = None, what: str = "soft map"
) -> np.ndarray:
    """Drishti-GS1 soft map (expert agreement 0..255) -> bool foreground. A map with non-zero values of which none
    reaches the threshold is rejected (the structure would vanish), naming the option that changes the threshold."""
    cut = SOFT_CUTS[soft_threshold]
    fg = grey >= cut
    if path is not None and grey.any() and not fg.any():
        raise BadFile(path, f"{what} values {_values(grey)} have no pixel >= {cut}, so with data.soft_threshold="
                            f"{soft_threshold} it would decode as empty; expected an expert-agreement map 0..255 "
                            "(use data.soft_threshold=any for faint maps)")
    return fg


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


GENERIC_GLAUCOMA_EXPECTED = ("an index map {0 bg, 1 rim, 2 cup}, REFUGE grey codes 0 (cup) / 128 (rim) / 255 "
                             "(background), or a binary 0/255 disc mask (task 'disc' only)")


def _is_grey_coded(grey: np.ndarray) -> bool:
    """Grey 128 is a level of the mask (REFUGE's rim), not an anti-aliased edge grey of a binary mask."""
    at128 = grey == 128
    if at128.mean() >= GREY_CODE_MIN_FRACTION:
        return True
    grey, k3 = np.ascontiguousarray(grey), np.ones((3, 3), np.uint8)
    flat128 = at128 & (cv2.erode(grey, k3) == 128) & (cv2.dilate(grey, k3) == 128)
    return flat128.mean() > LABEL_LEVEL_MIN_FRACTION


def generic_glaucoma_classes(grey: np.ndarray, path: Path, task: str) -> np.ndarray:
    """Generic glaucoma mask -> index {0,1,2}; see the module docstring for the rule (a)/(b)/(c)."""
    if grey.size == 0 or grey.max() <= 2:
        idx = grey.astype(np.uint8)  # (a) index map
    elif _is_grey_coded(grey):
        idx = refuge_classes(grey, path, "grey-coded mask")  # (b) REFUGE grey code
    elif task == "disc_cup":
        raise BadFile(
            path,
            f"mask looks like a binary disc mask (values {_values(grey)}) and has no cup; for task 'disc_cup' "
            "use an index map {0 bg, 1 rim, 2 cup} or REFUGE grey codes 0/128/255, or use task 'disc'",
        )
    else:
        try:
            return binary_foreground(grey, path, "disc mask", "disc").astype(np.uint8)  # (c) binary disc
        except BadFile as bad:
            hint = f"; a generic glaucoma mask may also be {GENERIC_GLAUCOMA_EXPECTED}"
            raise BadFile(path, bad.problem + hint) from None
    if task == "disc_cup" and idx.any() and not (idx == 2).any():
        raise BadFile(path, f"mask values {_values(grey)} hold a disc but no cup (decoded {_values(idx)}), so the "
                            f"cup would be empty; for task 'disc_cup' use {GENERIC_GLAUCOMA_EXPECTED}")
    return idx


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
        return image, binary_foreground(grey, path, "lesion mask", "lesion").astype(np.uint8)

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
        idx = _disc_cup_from_files(
            record, full_w, image, task, lambda g, p, r: soft_foreground(g, soft_threshold, p, f"{r} soft map")
        )
    elif layout in ("rimone_r3", "rimone_dl"):
        idx = _disc_cup_from_files(
            record, full_w, image, task, lambda g, p, r: binary_foreground(g, p, f"{r} mask", r)
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
