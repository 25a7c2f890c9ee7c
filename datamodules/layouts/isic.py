"""ISIC skin-lesion Task 1 layouts (2016, 2017, 2018) and the generic ``images/`` + ``masks/`` layout.

Official trees, as the ISIC challenge archives extract (one dataset root holds the folders of ONE year)::

    <root>/ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg          split train
    <root>/ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png   (capital S)
    <root>/ISBI2016_ISIC_Part1_Test_Data/ + ISBI2016_ISIC_Part1_Test_GroundTruth/   split test

    <root>/ISIC-2017_Training_Data/ISIC_0000000.jpg                      split train
    <root>/ISIC-2017_Training_Data/ISIC_0000000_superpixels.png          decoy, NOT a mask
    <root>/ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv  decoy, NOT a mask
    <root>/ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png      (lowercase s)
    <root>/ISIC-2017_Validation_Data/ + ISIC-2017_Validation_Part1_GroundTruth/    split val
    <root>/ISIC-2017_Test_v2_Data/ + ISIC-2017_Test_v2_Part1_GroundTruth/          split test

    <root>/ISIC2018_Task1-2_Training_Input/ + ISIC2018_Task1_Training_GroundTruth/      train
    <root>/ISIC2018_Task1-2_Validation_Input/ + ISIC2018_Task1_Validation_GroundTruth/  val
    <root>/ISIC2018_Task1-2_Test_Input/ + ISIC2018_Task1_Test_GroundTruth/              test

Any of these folders may instead hold a nested folder of the same name (how the zips
extract); both levels are searched. Rules: images are ``ISIC_*.jpg`` only (so superpixel
PNGs and CSVs are never read), the id is the file stem, the mask is matched by id with a
case-insensitive ``_segmentation.png`` suffix, everything is sorted, and unmatched ids
(image without mask, mask without image) are reported as problems.

Generic layout (any dataset, also used by ``discover_glaucoma``)::

    <root>/images/<stem>.{jpg,jpeg,png}     <root>/masks/<stem>[_mask|_segmentation].png

or the same pair of folders under ``<root>/{train,val,test}/`` (recorded as the split;
``valid``/``validation`` count as ``val``).
"""

from __future__ import annotations

from pathlib import Path

from lightning_seg.config import DataConfig

from .records import DataError, DataProblem, Discovery, PairRecord, dedupe_keys, format_problems

#: year layout -> [(split, image folder, mask folder)]
ISIC_FOLDERS: dict[str, list[tuple[str, str, str]]] = {
    "isic2016": [
        ("train", "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        ("test", "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    ],
    "isic2017": [
        ("train", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        ("val", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        ("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    ],
    "isic2018": [
        ("train", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        ("val", "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        ("test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    ],
}
ISIC_MASK_SUFFIX = "_segmentation.png"  # compared lower-case: 2016 ships "_Segmentation.png"

GENERIC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GENERIC_MASK_SUFFIXES = ("_mask", "_segmentation")  # optional, on the mask stem
GENERIC_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def check_root(root: str | Path) -> Path:
    """Resolve a dataset root; missing, non-directory or empty roots raise DataError."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset root {path} does not exist; fix data.root (or download/extract the dataset there)")
    if not path.is_dir():
        raise DataError(f"dataset root {path} is not a directory; point data.root at the extracted dataset folder")
    if not any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise DataError(f"dataset root {path} is empty; extract the dataset into it or fix data.root")
    return path


def dir_levels(root: Path, name: str) -> list[Path]:
    """``root/name`` plus ``root/name/name`` when a zip extracted into a nested folder of the same name."""
    top = root / name
    if not top.is_dir():
        return []
    nested = top / name
    return [top, nested] if nested.is_dir() else [top]


def files_in(dirs: list[Path]) -> list[Path]:
    """Sorted visible regular files directly inside ``dirs`` (no recursion)."""
    out = [p for d in dirs for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(out)


def top_entries(root: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def finish(layout: str, root: Path, records: list[PairRecord], problems: list[DataProblem]) -> Discovery:
    """Sort, enforce unique keys, and refuse a root where nothing could be paired."""
    order = {"train": 0, "val": 1, "test": 2}  # official split order, then key
    records = dedupe_keys(sorted(records, key=lambda r: (order.get(r.split or "", 3), r.key)), problems)
    problems.sort(key=lambda p: (str(p.path), p.key))
    if not records:
        if problems:
            detail = "\n" + format_problems(problems, root=root)
        else:
            detail = " The image folders are empty; extract the dataset there or fix data.root."
        raise DataError(f"no usable image/mask pairs found under {root} (layout {layout!r}).{detail}", problems)
    return Discovery(layout=layout, records=records, problems=problems, root=root)


# ---------------------------------------------------------------------------------------
# ISIC 2016 / 2017 / 2018
# ---------------------------------------------------------------------------------------


def _isic_present(root: Path, layout: str) -> bool:
    return any(dir_levels(root, name) for _, img, msk in ISIC_FOLDERS[layout] for name in (img, msk))


def _isic_masks(dirs: list[Path], problems: list[DataProblem]) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for p in files_in(dirs):
        if not p.name.lower().endswith(ISIC_MASK_SUFFIX):
            continue  # e.g. a stray README or a CSV in the ground-truth folder
        key = p.name[: -len(ISIC_MASK_SUFFIX)]
        if key in masks:
            problems.append(DataProblem(p, key, f"second mask for {key} (also {masks[key]}); keep one"))
            continue
        masks[key] = p
    return masks


def _discover_isic_year(root: Path, layout: str) -> Discovery:
    records: list[PairRecord] = []
    problems: list[DataProblem] = []
    for split, img_name, mask_name in ISIC_FOLDERS[layout]:
        img_dirs = dir_levels(root, img_name)
        if not img_dirs:
            continue  # split not downloaded: fine (e.g. only the training set)
        mask_dirs = dir_levels(root, mask_name)
        masks = _isic_masks(mask_dirs, problems)
        images = [
            p for p in files_in(img_dirs) if p.name.startswith("ISIC_") and p.suffix.lower() == ".jpg"
        ]
        used: set[str] = set()
        for img in images:
            key = img.stem
            mask = masks.get(key)
            if mask is None:
                where = mask_name if mask_dirs else f"{mask_name} (folder missing)"
                problems.append(DataProblem(img, key, f"missing mask: expected {where}/{key}{ISIC_MASK_SUFFIX}"))
                continue
            used.add(key)
            records.append(PairRecord(key, img, {"mask": mask}, layout, split))
        for key in sorted(set(masks) - used):
            problems.append(DataProblem(masks[key], key, f"mask without image: expected {img_name}/{key}.jpg"))
    return finish(layout, root, records, problems)


# ---------------------------------------------------------------------------------------
# Generic images/ + masks/
# ---------------------------------------------------------------------------------------


def generic_split_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """(split, folder holding images/ and masks/) pairs of the generic layout, or []."""
    if (root / "images").is_dir():
        return [(None, root)]
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        split = GENERIC_SPLITS.get(sub.name.lower())
        if split is not None and (sub / "images").is_dir():
            out.append((split, sub))
    return out


def _mask_base(name: str) -> str:
    stem = name[: -len(".png")]
    low = stem.lower()
    for suffix in GENERIC_MASK_SUFFIXES:
        if low.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def discover_generic(root: str | Path) -> Discovery:
    """Generic layout: ``images/<stem>.{jpg,jpeg,png}`` paired with ``masks/<stem>[_mask|_segmentation].png``."""
    root = check_root(root)
    parts = generic_split_dirs(root)
    if not parts:
        raise DataError(
            f"{root} has no images/ folder for the generic layout (found: {top_entries(root)}); "
            "expected images/ + masks/ (optionally under train/ val/ test/)"
        )
    records: list[PairRecord] = []
    problems: list[DataProblem] = []
    for split, base in parts:
        masks: dict[str, Path] = {}
        mask_dir = base / "masks"
        if mask_dir.is_dir():
            for p in files_in([mask_dir]):
                if p.suffix.lower() != ".png":
                    continue
                key = _mask_base(p.name).lower()
                if key in masks:
                    other = masks[key].name
                    problems.append(DataProblem(p, key, f"two masks for the same image (also {other}); keep one"))
                    continue
                masks[key] = p
        used: set[str] = set()
        for img in files_in([base / "images"]):
            if img.suffix.lower() not in GENERIC_IMAGE_SUFFIXES:
                continue
            mask = masks.get(img.stem.lower())
            if mask is None:
                problems.append(
                    DataProblem(img, img.stem, f"missing mask: expected masks/{img.stem}.png (or {img.stem}_mask.png)")
                )
                continue
            used.add(img.stem.lower())
            records.append(PairRecord(img.stem, img, {"mask": mask}, "generic", split))
        for key in sorted(set(masks) - used):
            problems.append(DataProblem(masks[key], key, "mask without image: no images/<stem>.{jpg,png} for it"))
    return finish("generic", root, records, problems)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def discover_isic(root: str | Path, layout: str = DataConfig.layout) -> Discovery:
    """Find ISIC image/mask pairs under ``root``.

    ``layout``: "auto" (detect), "isic2016", "isic2017", "isic2018" or "generic"; a named
    layout is enforced (its folders must exist). Raises :class:`DataError` for a missing
    or empty root, an unrecognised or ambiguous layout, or a root without any usable pair;
    unpaired files are returned in ``Discovery.problems``.
    """
    valid = ("auto", *ISIC_FOLDERS, "generic")
    if layout not in valid:
        raise DataError(f"unknown ISIC layout {layout!r}; use one of {', '.join(valid)}")
    root = check_root(root)
    if layout == "generic":
        return discover_generic(root)
    if layout != "auto":
        if not _isic_present(root, layout):
            expected = ", ".join(img for _, img, _ in ISIC_FOLDERS[layout])
            raise DataError(
                f"{root} does not hold the {layout} layout: none of its folders ({expected}) exist "
                f"(found: {top_entries(root)}); fix data.root or use layout='auto'"
            )
        return _discover_isic_year(root, layout)
    found = [name for name in ISIC_FOLDERS if _isic_present(root, name)]
    if len(found) > 1:
        raise DataError(
            f"{root} holds folders of several ISIC years ({', '.join(found)}); pass layout= one of them "
            "or give each year its own root"
        )
    if found:
        return _discover_isic_year(root, found[0])
    if generic_split_dirs(root):
        return discover_generic(root)
    known = "; ".join(f"{k}: {v[0][1]}/" for k, v in ISIC_FOLDERS.items())
    raise DataError(
        f"unrecognised ISIC layout under {root} (found: {top_entries(root)}). Expected the official folders "
        f"({known} ...) or a generic images/ + masks/ layout; fix data.root or set the layout explicitly"
    )
