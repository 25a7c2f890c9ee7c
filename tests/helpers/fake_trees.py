"""Tiny fake dataset trees with the exact real naming, for tests (no real data set is needed).

Each ``make_*_tree`` writes a few small files (about 32x48 px, sizes differ per file as
in the real sets) under ``root`` and returns a :class:`FakeTree` listing the expected
keys, official splits and decoded image sizes. The ground truth is analytic, so tests
can compare a decoded mask with :func:`fake_lesion` / :func:`fake_disc_cup` exactly:

* lesion: ellipse around the image centre; written as 0/255 with anti-aliased greys
  (200 just inside, 60 just outside the edge, so ``> 127`` recovers the ellipse);
* disc/cup: index map {0 bg, 1 rim, 2 cup}; the centre pixel is cup, ``rim_pixel`` is rim,
  the corner (0, 0) is background.

``size=`` writes real-size trees instead (``ISIC2018_SIZE``, ``REFUGE_SIZE``): photograph-like JPEG content
(:func:`fake_photo`; noise would compress and decode unlike a photograph) and lesion masks anti-aliased on 1-pixel
rings (:func:`fake_lesion_ring_grey`; the relative bands above would be wide enough at 1000 px to read as a label).

``corrupt_*`` / ``write_*`` helpers inject each kind of bad file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lightning_seg.datamodules.layouts.isic import ISIC_FOLDERS
from PIL import Image


@dataclass
class FakeTree:
    """What a fake tree holds: key -> official split, key -> decoded (H, W), key -> image/mask files."""

    root: Path
    layout: str
    splits: dict[str, str | None] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, dict[str, Path]] = field(default_factory=dict)
    meta: dict[str, dict] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return sorted(self.splits)

    def add(self, key: str, split: str | None, size: tuple[int, int], image: Path, masks: dict[str, Path], **meta) -> None:
        self.splits[key], self.sizes[key], self.images[key], self.masks[key] = split, size, image, masks
        self.meta[key] = meta


# ---------------------------------------------------------------------------------------
# Analytic content
# ---------------------------------------------------------------------------------------


def fake_size(i: int) -> tuple[int, int]:
    """(H, W) of the i-th fake image: about 32x48, different for neighbouring files."""
    return 32 + 2 * (i % 4), 48 + 4 * (i % 3)


#: (H, W) about that of ISIC 2018 Task 1 photographs (1022 x 767 and similar; the real sizes vary per file).
ISIC2018_SIZE = (750, 1000)
#: (H, W) of the REFUGE training photographs (Zeiss, 2124 x 2056 W x H): large and non-square.
REFUGE_SIZE = (2056, 2124)

#: ``size=`` of the writers: one (H, W) for every file, or a function of the file's index.
Size = tuple[int, int] | Callable[[int], tuple[int, int]] | None


def _size_of(size: Size, i: int) -> tuple[int, int]:
    if size is None:
        return fake_size(i)
    return tuple(size(i)) if callable(size) else tuple(size)  # type: ignore[return-value]


def fake_photo(h: int, w: int, seed: int) -> np.ndarray:
    """Photograph-like uint8 HxWx3 content for real-size files: smooth colour variations plus mild grain (a JPEG of it
    has the size and decoding cost of a photograph, unlike uniform noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 210, size=(max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    grain = rng.integers(-6, 7, size=(h, w, 1), dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def fake_lesion_ring_grey(h: int, w: int) -> np.ndarray:
    """The written ISIC mask of a real-size tree: 0/255 with a 1-pixel anti-aliased ring on each side of the edge
    (200 inside, 60 outside), so that ``> 127`` recovers :func:`fake_lesion` exactly."""
    import cv2

    inside = fake_lesion(h, w)
    k3 = np.ones((3, 3), np.uint8)
    out = np.where(inside == 1, 255, 0).astype(np.uint8)
    out[(inside == 1) & (cv2.erode(inside, k3) == 0)] = 200
    out[(inside == 0) & (cv2.dilate(inside, k3) == 1)] = 60
    return out


def _ellipse_d(h: int, w: int, ry: float, rx: float, dy: float = 0.0, dx: float = 0.0) -> np.ndarray:
    """Normalised squared distance to an ellipse centred at the image centre (+ offset)."""
    y, x = np.ogrid[0:h, 0:w]  # broadcast: the values of a full grid, at a fraction of the cost on real-size images
    cy, cx = (h - 1) / 2 + dy, (w - 1) / 2 + dx
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2


def _lesion_d(h: int, w: int) -> np.ndarray:
    return _ellipse_d(h, w, 0.32 * h, 0.3 * w, dy=1.0)


def fake_lesion(h: int, w: int) -> np.ndarray:
    """Ground-truth lesion {0,1} of an HxW fake ISIC image."""
    return (_lesion_d(h, w) <= 1.0).astype(np.uint8)


def fake_lesion_grey(h: int, w: int) -> np.ndarray:
    """The written ISIC mask: 0/255 plus anti-aliased greys that binarise (> 127) to ``fake_lesion``."""
    d = _lesion_d(h, w)
    out = np.where(d <= 1.0, 255, 0).astype(np.uint8)
    out[(d > 0.93) & (d <= 1.0)] = 200
    out[(d > 1.0) & (d <= 1.07)] = 60
    return out


def _disc_d(h: int, w: int) -> np.ndarray:
    return _ellipse_d(h, w, 0.36 * h, 0.34 * h)


def _cup_d(h: int, w: int) -> np.ndarray:
    return _ellipse_d(h, w, 0.18 * h, 0.16 * h)


def fake_disc_cup(h: int, w: int) -> np.ndarray:
    """Ground-truth index map {0 bg, 1 rim, 2 cup} of an HxW fake fundus image."""
    out = (_disc_d(h, w) <= 1.0).astype(np.uint8)
    out[_cup_d(h, w) <= 1.0] = 2
    return out


def rim_pixel(h: int, w: int) -> tuple[int, int]:
    """A pixel that is rim (disc but not cup) in ``fake_disc_cup(h, w)``."""
    return h // 2, int((w - 1) / 2 + 0.34 * h) - 1


def refuge_grey(index: np.ndarray) -> np.ndarray:
    """Index {0,1,2} -> REFUGE grey code (0 cup, 128 rim, 255 background)."""
    return np.array([255, 128, 0], np.uint8)[index]


def soft_map(d: np.ndarray) -> np.ndarray:
    """Drishti-style soft map of the ellipse ``d <= 1``: 255 deep inside, 140 on the inner edge
    (majority yes, all no), 40 just outside (any yes, majority no)."""
    out = np.zeros(d.shape, np.uint8)
    out[d <= 1.0] = 140
    out[d <= 0.75] = 255
    out[(d > 1.0) & (d <= 1.3)] = 40
    return out


def fake_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    """Write an image/mask (format from the suffix); creates parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, quality=95)
    else:
        Image.fromarray(array).save(path)
    return path


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def make_isic_tree(
    root: str | Path,
    year: int | str,
    *,
    n_per_split: int = 2,
    splits: Iterable[str] | None = None,
    nested: bool = False,
    start: int = 0,
    size: Size = None,
) -> FakeTree:
    """Official ISIC 2016/2017/2018 Task 1 tree. ``nested`` writes every folder as
    ``<name>/<name>/`` (zip extraction). 2017 image folders get ``_superpixels.png`` decoys
    and a metadata CSV; every other mask is stored as 8-bit RGB with equal channels.
    ``size``: (H, W) of every file (e.g. ``ISIC2018_SIZE``) or a function of the file index; default ``fake_size``."""
    root = Path(root)
    layout = f"isic{year}"
    suffix = "_Segmentation.png" if layout == "isic2016" else "_segmentation.png"
    tree = FakeTree(root, layout)
    i = start
    for split, img_name, mask_name in ISIC_FOLDERS[layout]:
        if splits is not None and split not in splits:
            continue
        img_dir = root / img_name / img_name if nested else root / img_name
        mask_dir = root / mask_name / mask_name if nested else root / mask_name
        for _ in range(n_per_split):
            key = f"ISIC_{i:07d}"
            h, w = _size_of(size, i)
            image = save(img_dir / f"{key}.jpg", fake_image(h, w, i) if size is None else fake_photo(h, w, i))
            grey = fake_lesion_grey(h, w) if size is None else fake_lesion_ring_grey(h, w)
            mask = save(mask_dir / f"{key}{suffix}", _rgb(grey) if i % 2 else grey)
            if layout == "isic2017":  # decoy: a PNG with the image id that is NOT a mask
                save(img_dir / f"{key}_superpixels.png", fake_image(h, w, 1000 + i))
            tree.add(key, split, (h, w), image, {"mask": mask})
            i += 1
        if layout == "isic2017":
            (img_dir / f"{img_name}_metadata.csv").write_text("image_id,age_approximate,sex\nISIC_0000000,55,female\n")
    return tree


def make_generic_tree(
    root: str | Path,
    *,
    n: int = 3,
    kind: str = "lesion",
    image_ext: str = "jpg",
    mask_suffix: str = "",
    splits: Iterable[str] | None = None,
) -> FakeTree:
    """Generic ``images/`` + ``masks/`` tree (under ``<split>/`` when ``splits`` is given).

    ``kind``: "lesion" (0/255 anti-aliased), "index" ({0,1,2}), "refuge" (grey 0/128/255)
    or "binary_disc" (0/255 disc only)."""
    root = Path(root)
    tree = FakeTree(root, "generic")
    i = 0
    for split in list(splits) if splits is not None else [None]:
        base = root / split if split else root
        for _ in range(n):
            key = f"img{i:03d}"
            h, w = fake_size(i)
            image = save(base / "images" / f"{key}.{image_ext}", fake_image(h, w, i))
            index = fake_disc_cup(h, w)
            content = {
                "lesion": fake_lesion_grey(h, w),
                "index": index,
                "refuge": refuge_grey(index),
                "binary_disc": np.where(index >= 1, 255, 0).astype(np.uint8),
            }[kind]
            mask = save(base / "masks" / f"{key}{mask_suffix}.png", content)
            tree.add(key, split, (h, w), image, {"mask": mask})
            i += 1
    return tree


def make_refuge_tree(root: str | Path, *, n_per_group: int = 1, size: Size = None) -> FakeTree:
    """REFUGE tree: train g/n images in Glaucoma/Non-Glaucoma, validation V, test T with G/N mask folders.
    ``size``: (H, W) of every file (e.g. ``REFUGE_SIZE``) or a function of the file index; default ``fake_size``."""
    root = Path(root)
    tree = FakeTree(root, "refuge")
    i = 0

    def one(key: str, split: str, img_path: Path, mask_path: Path, glaucoma: bool | None) -> None:
        nonlocal i
        h, w = _size_of(size, i)
        image = save(img_path, fake_image(h, w, i) if size is None else fake_photo(h, w, i))
        mask = save(mask_path, refuge_grey(fake_disc_cup(h, w)))
        meta = {} if glaucoma is None else {"glaucoma": glaucoma}
        tree.add(key, split, (h, w), image, {"mask": mask}, **meta)
        i += 1

    for k in range(1, n_per_group + 1):
        for prefix, folder, glaucoma in (("g", "Glaucoma", True), ("n", "Non-Glaucoma", False)):
            key = f"{prefix}{k:04d}"
            one(key, "train", root / "Training400" / folder / f"{key}.jpg",
                root / "Annotation-Training400" / "Disc_Cup_Masks" / folder / f"{key}.bmp", glaucoma)
    for k in range(1, 2 * n_per_group + 1):
        key = f"V{k:04d}"
        one(key, "val", root / "REFUGE-Validation400" / f"{key}.jpg",
            root / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / f"{key}.bmp", None)
    for k in range(1, 2 * n_per_group + 1):
        key, group = f"T{k:04d}", "G" if k % 2 else "N"
        one(key, "test", root / "Test400" / f"{key}.jpg",
            root / "REFUGE-Test-GT" / "Disc_Cup_Masks" / group / f"{key}.bmp", group == "G")
    return tree


def make_drishti_tree(root: str | Path, *, n_train: int = 2, n_test: int = 2, test_gt: bool = True) -> FakeTree:
    """Drishti-GS1 tree under ``Drishti-GS1_files/`` with OD and cup soft maps (see ``soft_map``).
    ``test_gt=False`` mimics releases without test ground truth (those keys are not in the tree's pairs)."""
    root = Path(root)
    base = root / "Drishti-GS1_files"
    tree = FakeTree(root, "drishti")
    i = 0
    for split, folder, gt, n in (("train", "Training", "GT", n_train), ("test", "Test", "Test_GT", n_test)):
        for _ in range(n):
            key = f"drishtiGS_{i + 1:03d}"
            h, w = fake_size(i)
            image = save(base / folder / "Images" / f"{key}.png", fake_image(h, w, i))
            if split == "train" or test_gt:
                soft = base / folder / gt / key / "SoftMap"
                od = save(soft / f"{key}_ODsegSoftmap.png", soft_map(_disc_d(h, w)))
                cup = save(soft / f"{key}_cupsegSoftmap.png", soft_map(_cup_d(h, w)))
                tree.add(key, split, (h, w), image, {"disc": od, "cup": cup})
            i += 1
    (base / "Training" / "GT").mkdir(parents=True, exist_ok=True)
    return tree


def stereo_image(h: int, w: int, seed: int) -> np.ndarray:
    """Stereo pair 2W wide: left half red-dominant, right half blue-dominant (so tests see which half)."""
    left, right = fake_image(h, w, seed), fake_image(h, w, seed + 1)
    left[..., 0], left[..., 2] = 220, 20
    right[..., 0], right[..., 2] = 20, 220
    return np.concatenate([left, right], axis=1)


def make_rimone_r3_tree(root: str | Path, *, mask_width: str = "full", n_per_group: int = 1) -> FakeTree:
    """RIM-ONE r3 tree (stereo images, masks per category folder). ``mask_width``: "full" masks
    are as wide as the stereo image (annotation in the left half), "half" masks as the left half.
    Average masks hold ``fake_disc_cup``; Expert1/Expert2 masks hold a disc-only variant whose
    cup is the same but whose disc is the whole left half (so the chosen set is visible)."""
    root = Path(root)
    tree = FakeTree(root, "rimone_r3")
    i = 0
    for cat, prefixes in (("Healthy", ("N",)), ("Glaucoma and suspects", ("G", "S"))):
        for prefix in prefixes:
            for k in range(1, n_per_group + 1):
                key = f"{prefix}-{k + i}-L"
                h, w = fake_size(i)
                image = save(root / cat / "Stereo Images" / f"{key}.jpg", stereo_image(h, w, i))
                index = fake_disc_cup(h, w)
                variants = {"Average": index, "Expert1": np.maximum(index, 1), "Expert2": np.maximum(index, 1)}
                paths: dict[str, dict[str, Path]] = {}
                for name, idx in variants.items():
                    disc = np.where(idx >= 1, 255, 0).astype(np.uint8)
                    cup = np.where(idx == 2, 255, 0).astype(np.uint8)
                    if mask_width == "full":
                        pad = np.zeros_like(disc)
                        disc, cup = np.concatenate([disc, pad], 1), np.concatenate([cup, pad], 1)
                    if name == "Average":
                        names = (f"{key}-Disc-Avg.png", f"{key}-Cup-Avg.png")
                    else:
                        e = name[-1]
                        names = (f"{key}-1-Disc-exp{e}.png", f"{key}-1-Cup-exp{e}.png")
                    folder = root / cat / f"{name}_masks"
                    paths[name] = {"disc": save(folder / names[0], disc), "cup": save(folder / names[1], cup)}
                tree.add(key, None, (h, w), image, paths["Average"], diagnosis=prefix)
                i += 1
    return tree


def make_rimone_dl_tree(root: str | Path, *, n_per_group: int = 1) -> FakeTree:
    """RIM-ONE DL tree: partitioned_by_hospital (+ partitioned_randomly) images, separate -Disc-T/-Cup-T masks."""
    root = Path(root)
    tree = FakeTree(root, "rimone_dl")
    images_root = root / "RIM-ONE_DL_images"
    seg_root = root / "RIM-ONE_DL_reference_segmentations"
    i = 0
    for set_name, split in (("training_set", "train"), ("test_set", "test")):
        for cls in ("normal", "glaucoma"):
            for _ in range(n_per_group):
                key = f"r{1 + i % 3}_Im{i + 1:03d}"
                h, w = fake_size(i)
                img = fake_image(h, w, i)
                image = save(images_root / "partitioned_by_hospital" / set_name / cls / f"{key}.png", img)
                # the random partition holds the same images with swapped sets
                other = "test_set" if set_name == "training_set" else "training_set"
                save(images_root / "partitioned_randomly" / other / cls / f"{key}.png", img)
                index = fake_disc_cup(h, w)
                disc = save(seg_root / cls / f"{key}-1-Disc-T.png", np.where(index >= 1, 255, 0).astype(np.uint8))
                cup = save(seg_root / cls / f"{key}-1-Cup-T.png", np.where(index == 2, 255, 0).astype(np.uint8))
                tree.add(key, split, (h, w), image, {"disc": disc, "cup": cup}, glaucoma=cls == "glaucoma")
                i += 1
    return tree


def make_origa_tree(root: str | Path, *, n: int = 3, wrapper: bool = True) -> FakeTree:
    """ORIGA tree: ``ORIGA/Images/NNN.jpg`` + ``ORIGA/Semi-automatic-annotations/NNN.mat`` (``mask`` {0,1,2})."""
    from scipy.io import savemat  # test-only dependency of this generator (the [origa] extra)

    root = Path(root)
    base = root / "ORIGA" if wrapper else root
    tree = FakeTree(root, "origa")
    for i in range(n):
        key = f"{i + 1:03d}"
        h, w = fake_size(i)
        image = save(base / "Images" / f"{key}.jpg", fake_image(h, w, i))
        mat = base / "Semi-automatic-annotations" / f"{key}.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"mask": fake_disc_cup(h, w)})
        tree.add(key, None, (h, w), image, {"mat": mat})
    return tree


# ---------------------------------------------------------------------------------------
# Bad-file injectors
# ---------------------------------------------------------------------------------------


def corrupt_truncate(path: Path, keep: float = 0.4) -> Path:
    """Cut a file to ``keep`` of its bytes (a truncated download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(16, int(len(data) * keep))])
    return Path(path)


def corrupt_random_bytes(path: Path, n: int = 2048, seed: int = 0) -> Path:
    """Replace a file by random bytes (keeps its name and suffix)."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return Path(path)


def read_array(path: Path) -> np.ndarray:
    """A written file as a numpy array (file closed at once)."""
    with Image.open(path) as img:
        return np.array(img)


def remove_file(path: Path) -> Path:
    Path(path).unlink()
    return Path(path)


def write_resized(path: Path, dh: int = 3, dw: int = 5) -> Path:
    """Rewrite an image/mask with a different size (content nearest-resized)."""
    with Image.open(path) as img:
        resized = img.resize((img.width + dw, img.height + dh), Image.NEAREST)
    resized.save(path)
    return Path(path)


def write_noise_mask(path: Path, seed: int = 0) -> Path:
    """Rewrite a mask with uniform random greys (not a binary / grey-coded mask)."""
    with Image.open(path) as img:
        shape = (img.height, img.width)
    save(Path(path), np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return Path(path)


def write_colour_mask(path: Path) -> Path:
    """Rewrite a mask as a colour RGB image (channels differ)."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"))
    save(Path(path), np.stack([grey, 255 - grey, grey // 2], axis=2))
    return Path(path)


def write_mat_values(path: Path, value: int = 3) -> Path:
    """Put an out-of-range class index into an ORIGA ``.mat`` mask."""
    from scipy.io import loadmat, savemat

    mask = loadmat(path)["mask"].copy()
    mask[0, 0] = value
    savemat(path, {"mask": mask})
    return Path(path)


def write_cup_shifted(cup_path: Path, shape: tuple[int, int], *, width: int, shift: int) -> Path:
    """Rewrite a separate binary cup file (``width`` px wide) with the analytic cup moved
    ``shift`` px right; a large shift puts cup pixels outside the disc."""
    h, w = shape
    cup = np.zeros((h, width), np.uint8)
    base = (_cup_d(h, w) <= 1.0).astype(np.uint8) * 255
    shifted = np.zeros_like(base)
    shifted[:, shift:] = base[:, : w - shift] if shift else base
    cup[:, :w] = shifted
    save(Path(cup_path), cup)
    return Path(cup_path)


def write_label_mask(path: Path, value: int = 2, fraction: float = 0.05) -> Path:
    """Rewrite a mask as {0, ``value``}: a centred square of ``value`` on about ``fraction`` of the pixels (a label
    map saved with another foreground value; the binary rule ``> 127`` would decode it as an empty mask)."""
    with Image.open(path) as img:
        h, w = img.height, img.width
    side = max(1, round((fraction * h * w) ** 0.5))
    out = np.zeros((h, w), np.uint8)
    top, left = (h - side) // 2, (w - side) // 2
    out[top : top + side, left : left + side] = value
    save(Path(path), out)
    return Path(path)

