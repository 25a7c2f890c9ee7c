"""Glaucoma optic disc / cup layouts: REFUGE, Drishti-GS1, RIM-ONE r3, RIM-ONE DL, ORIGA, generic.

Trees, as the data sets' archives extract. Every top folder may also hold a nested folder of the same name
(zip extraction); both levels are searched. Keys are file stems and must be unique.

REFUGE (grey-coded ``.bmp`` masks: 0 cup, 128 rim, 255 background)::

    Training400/{Glaucoma,Non-Glaucoma}/{g,n}NNNN.jpg                          split train
    Annotation-Training400/Disc_Cup_Masks/{Glaucoma,Non-Glaucoma}/{g,n}NNNN.bmp
    REFUGE-Validation400/VNNNN.jpg                                             split val
    REFUGE-Validation400-GT/Disc_Cup_Masks/VNNNN.bmp
    Test400/TNNNN.jpg                                                          split test
    REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/TNNNN.bmp

    meta["glaucoma"] from the Glaucoma/Non-Glaucoma folder (train) or the G/N mask folder (test).

Drishti-GS1 (soft maps, binarised by ``soft_threshold`` at load time)::

    [Drishti-GS1_files/]Training/Images/drishtiGS_NNN.png                      split train
    [Drishti-GS1_files/]Training/GT/drishtiGS_NNN/SoftMap/drishtiGS_NNN_ODsegSoftmap.png
                                                   .../drishtiGS_NNN_cupsegSoftmap.png
    [Drishti-GS1_files/]Test/Images/drishtiGS_NNN.png                          split test
    [Drishti-GS1_files/]Test/Test_GT/drishtiGS_NNN/SoftMap/...   (absent in some releases:
                                                  those images are reported as missing masks)

RIM-ONE r3 (stereo images; the LEFT half is used, meta["stereo_half"] = "left")::

    [RIM-ONE r3/]Healthy/Stereo Images/N-<id>-<L|R>.jpg
    [RIM-ONE r3/]Glaucoma and suspects/Stereo Images/{G,S}-<id>-<L|R>.jpg
    masks in <category>/<Expert>_masks/ or [RIM-ONE r3/]<Expert>_masks/ :
        Average_masks/<stem>-Disc-Avg.png, <stem>-Cup-Avg.png            (default)
        Expert1_masks/<stem>-1-Disc-exp1.png, <stem>-1-Cup-exp1.png      (rimone_masks="Expert1")
        Expert2_masks/<stem>-1-Disc-exp2.png, ...                         (rimone_masks="Expert2")

    No official split (split None); meta["diagnosis"] normal / glaucoma / suspect.

RIM-ONE DL (separate binary disc/cup PNGs)::

    RIM-ONE_DL_images/partitioned_by_hospital/{training_set,test_set}/{normal,glaucoma}/<stem>.png
    RIM-ONE_DL_images/partitioned_randomly/...          (rimone_dl_partition="random")
    RIM-ONE_DL_reference_segmentations/{normal,glaucoma}/<stem>-<k>-Disc-T.png, <stem>-<k>-Cup-T.png

    split train/test from training_set/test_set.

ORIGA (``.mat`` variable ``mask`` in {0 bg, 1 disc, 2 cup}; needs scipy, imported lazily)::

    [ORIGA/]Images/NNN.jpg          [ORIGA/]Semi-automatic-annotations/NNN.mat

    No official split (the usual Set A/B lives in a CSV that is not parsed here).

Generic: ``images/`` + ``masks/`` (see ``isic.py``); mask values are decided per file by the
rule in ``reading.py`` (index map {0,1,2}, REFUGE grey codes, or binary disc 0/255).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from lightning_seg.config import DataConfig

from .isic import check_root, dir_levels, discover_generic, finish, generic_split_dirs, top_entries
from .records import DataError, DataProblem, Discovery, PairRecord

RIMONE_MASK_SETS = ("Average", "Expert1", "Expert2")
RIMONE_DL_PARTITIONS = {"hospital": "partitioned_by_hospital", "random": "partitioned_randomly"}
_SKIP_PARTS = ("__MACOSX",)


def _visible(p: Path) -> bool:
    return not any(part.startswith(".") or part in _SKIP_PARTS for part in p.parts)


def _rglob(dirs: list[Path], suffix: str) -> list[Path]:
    """Sorted visible files with ``suffix`` (case-insensitive) anywhere below ``dirs``, deduplicated
    (``dirs`` may list a folder and its nested zip copy)."""
    found = {
        p
        for d in dirs
        for p in d.rglob("*")
        if p.is_file() and p.suffix.lower() == suffix and _visible(p.relative_to(d))
    }
    return sorted(found)


def _listed(dirs: list[Path], suffix: str) -> list[Path]:
    """Sorted visible files with ``suffix`` (case-insensitive) directly inside ``dirs``."""
    return sorted(p for d in dirs for p in d.iterdir() if p.suffix.lower() == suffix and not p.name.startswith("."))


def _first_nested(root: Path, name: str) -> list[Path]:
    """Candidate bases: ``root`` itself, then ``root/name`` (and ``root/name/name``)."""
    return [root, *dir_levels(root, name)]


# ---------------------------------------------------------------------------------------
# REFUGE
# ---------------------------------------------------------------------------------------

REFUGE_SPLITS = [
    ("train", "Training400", "Annotation-Training400"),
    ("val", "REFUGE-Validation400", "REFUGE-Validation400-GT"),
    ("test", "Test400", "REFUGE-Test-GT"),
]
_REFUGE_LABEL = {"glaucoma": True, "g": True, "non-glaucoma": False, "n": False}


def _refuge_present(root: Path) -> bool:
    return any(dir_levels(root, name) for _, img, gt in REFUGE_SPLITS for name in (img, gt))


def _discover_refuge(root: Path) -> Discovery:
    records: list[PairRecord] = []
    problems: list[DataProblem] = []
    for split, img_name, gt_name in REFUGE_SPLITS:
        img_dirs = dir_levels(root, img_name)
        if not img_dirs:
            continue
        masks: dict[str, Path] = {}
        for p in _rglob(dir_levels(root, gt_name), ".bmp"):
            if p.stem in masks:
                problems.append(DataProblem(p, p.stem, f"second mask for {p.stem} (also {masks[p.stem]}); keep one"))
            else:
                masks[p.stem] = p
        pairs = _pair_by_stem(_rglob(img_dirs, ".jpg"), masks, problems,
                              f"{gt_name}/Disc_Cup_Masks/.../{{}}.bmp", f"{img_name}/.../{{}}.jpg")
        for key, img, mask in pairs:
            meta = {}
            # train: Glaucoma/Non-Glaucoma image folder; test: G/N mask folder
            for folder in (img.parent.name.lower(), mask.parent.name.lower()):
                if folder in _REFUGE_LABEL:
                    meta["glaucoma"] = _REFUGE_LABEL[folder]
                    break
            records.append(PairRecord(key, img, {"mask": mask}, "refuge", split, meta))
    return finish("refuge", root, records, problems)


def _pair_by_stem(images: Iterable[Path], masks: dict[str, Path], problems: list[DataProblem], mask_pattern: str,
                  image_pattern: str) -> list[tuple[str, Path, Path]]:
    """(key, image, mask) for every image whose stem has a mask; a missing mask and a mask without an image each become a
    problem naming the expected path (``mask_pattern`` / ``image_pattern`` with ``{}`` for the key)."""
    pairs = []
    for img in images:
        mask = masks.get(img.stem)
        if mask is None:
            problems.append(DataProblem(img, img.stem, f"missing mask: expected {mask_pattern.format(img.stem)}"))
        else:
            pairs.append((img.stem, img, mask))
    for key in sorted(set(masks) - {k for k, _, _ in pairs}):
        problems.append(DataProblem(masks[key], key, f"mask without image: expected {image_pattern.format(key)}"))
    return pairs


# ---------------------------------------------------------------------------------------
# Drishti-GS1
# ---------------------------------------------------------------------------------------

DRISHTI_SPLITS = [("train", "Training", ("GT",)), ("test", "Test", ("Test_GT", "GT"))]


def _drishti_base(root: Path) -> Path | None:
    for base in _first_nested(root, "Drishti-GS1_files"):
        for _, folder, _ in DRISHTI_SPLITS:
            images = base / folder / "Images"
            if images.is_dir() and any(images.glob("drishtiGS_*.png")):
                return base
    return None


def _discover_drishti(root: Path) -> Discovery:
    base = _drishti_base(root)
    assert base is not None
    records: list[PairRecord] = []
    problems: list[DataProblem] = []
    for split, folder, gt_names in DRISHTI_SPLITS:
        images = sorted((base / folder / "Images").glob("drishtiGS_*.png")) if (base / folder).is_dir() else []
        for img in images:
            key = img.stem
            found: dict[str, Path] = {}
            for gt in gt_names:
                soft = base / folder / gt / key / "SoftMap"
                od, cup = soft / f"{key}_ODsegSoftmap.png", soft / f"{key}_cupsegSoftmap.png"
                if od.is_file() and cup.is_file():
                    found = {"disc": od, "cup": cup}
                    break
            if not found:
                expected = f"{folder}/{gt_names[0]}/{key}/SoftMap/{key}_ODsegSoftmap.png and _cupsegSoftmap.png"
                problems.append(
                    DataProblem(img, key, f"missing mask: expected {expected} (some releases lack the test GT)")
                )
                continue
            records.append(PairRecord(key, img, found, "drishti", split))
    return finish("drishti", root, records, problems)


# ---------------------------------------------------------------------------------------
# RIM-ONE r3
# ---------------------------------------------------------------------------------------

RIMONE_CATEGORIES = ("Healthy", "Glaucoma and suspects")
_RIMONE_DIAGNOSIS = {"n": ("normal", False), "g": ("glaucoma", True), "s": ("suspect", None)}


def _rimone_r3_bases(root: Path) -> list[Path]:
    bases = _first_nested(root, "RIM-ONE r3")
    return [b for b in bases if any((b / c / "Stereo Images").is_dir() for c in RIMONE_CATEGORIES)]


def _rimone_mask_pattern(stem: str, role: str, masks: str) -> re.Pattern[str]:
    if masks == "Average":
        return re.compile(rf"{re.escape(stem)}-{role}-avg\.png", re.IGNORECASE)
    k = masks[-1]
    return re.compile(rf"{re.escape(stem)}(-\d+)?-{role}-exp{k}\.png", re.IGNORECASE)


def _discover_rimone_r3(root: Path, masks: str) -> Discovery:
    base = _rimone_r3_bases(root)[0]
    records: list[PairRecord] = []
    problems: list[DataProblem] = []
    mask_folder = f"{masks}_masks"
    for cat in RIMONE_CATEGORIES:
        img_dir = base / cat / "Stereo Images"
        if not img_dir.is_dir():
            continue
        mask_dirs = [d for d in (base / cat / mask_folder, base / mask_folder) if d.is_dir()]
        mask_files = sorted(p for d in mask_dirs for p in d.iterdir() if p.is_file())
        for img in _listed([img_dir], ".jpg"):
            key = img.stem
            found: dict[str, Path] = {}
            for role in ("disc", "cup"):
                pat = _rimone_mask_pattern(key, role, masks)
                hits = [p for p in mask_files if pat.fullmatch(p.name)]
                if hits:
                    found[role] = hits[0]
            if len(found) < 2:
                missing = " and ".join(r for r in ("disc", "cup") if r not in found)
                problems.append(DataProblem(img, key, f"missing mask: no {missing} file for {key} in {mask_folder}/"))
                continue
            diagnosis, glaucoma = _RIMONE_DIAGNOSIS.get(key[:1].lower(), ("unknown", None))
            meta = {"diagnosis": diagnosis, "glaucoma": glaucoma, "stereo_half": "left", "masks": masks}
            records.append(PairRecord(key, img, found, "rimone_r3", None, meta))
    return finish("rimone_r3", root, records, problems)


# ---------------------------------------------------------------------------------------
# RIM-ONE DL
# ---------------------------------------------------------------------------------------

RIMONE_DL_SETS = {"training_set": "train", "test_set": "test"}
RIMONE_DL_CLASSES = {"normal": False, "glaucoma": True}


def _rimone_dl_present(root: Path) -> bool:
    return bool(dir_levels(root, "RIM-ONE_DL_images"))


def _rimone_dl_pair(
    img: Path, cls: str, seg_files: list[Path], problems: list[DataProblem]
) -> dict[str, Path] | None:
    """Find ``<stem>-<k>-Disc-T.png`` and ``-Cup-T.png`` for one image; None (and a problem) if missing."""
    key = img.stem
    found: dict[str, Path] = {}
    for role, tag in (("disc", "Disc"), ("cup", "Cup")):
        pat = re.compile(rf"{re.escape(key)}(-\d+)?-{tag}-T\.png", re.IGNORECASE)
        hits = [p for p in seg_files if pat.fullmatch(p.name)]
        if len(hits) > 1:
            problems.append(DataProblem(hits[1], key, f"several {role} masks for {key}: {[h.name for h in hits]}"))
        if hits:
            found[role] = hits[0]
    if len(found) == 2:
        return found
    missing = " and ".join(r for r in ("disc", "cup") if r not in found)
    expected = f"RIM-ONE_DL_reference_segmentations/{cls}/{key}-<k>-{{Disc,Cup}}-T.png"
    problems.append(DataProblem(img, key, f"missing mask: no {missing} file ({expected})"))
    return None


def _discover_rimone_dl(root: Path, partition: str) -> Discovery:
    part_name = RIMONE_DL_PARTITIONS[partition]
    part_dirs = [d / part_name for d in dir_levels(root, "RIM-ONE_DL_images") if (d / part_name).is_dir()]
    if not part_dirs:
        raise DataError(
            f"{root}/RIM-ONE_DL_images has no {part_name}/ folder; check the extraction or rimone_dl_partition"
        )
    seg_dirs = dir_levels(root, "RIM-ONE_DL_reference_segmentations")
    records: list[PairRecord] = []
    problems: list[DataProblem] = []
    for cls, glaucoma in RIMONE_DL_CLASSES.items():
        seg_files = sorted(p for d in seg_dirs if (d / cls).is_dir() for p in (d / cls).iterdir() if p.is_file())
        for set_name, split in RIMONE_DL_SETS.items():
            img_dirs = [part / set_name / cls for part in part_dirs if (part / set_name / cls).is_dir()]
            for img in _listed(img_dirs, ".png"):
                masks = _rimone_dl_pair(img, cls, seg_files, problems)
                if masks is not None:
                    records.append(PairRecord(img.stem, img, masks, "rimone_dl", split, {"glaucoma": glaucoma}))
    return finish("rimone_dl", root, records, problems)


# ---------------------------------------------------------------------------------------
# ORIGA
# ---------------------------------------------------------------------------------------


def _origa_base(root: Path) -> Path | None:
    for base in _first_nested(root, "ORIGA"):
        if (base / "Images").is_dir() and (base / "Semi-automatic-annotations").is_dir():
            return base
    return None


def _discover_origa(root: Path) -> Discovery:
    base = _origa_base(root)
    assert base is not None
    ann = base / "Semi-automatic-annotations"
    mats = {p.stem: p for p in _listed([ann], ".mat")}
    problems: list[DataProblem] = []
    pairs = _pair_by_stem(_listed([base / "Images"], ".jpg"), mats, problems, "Semi-automatic-annotations/{}.mat",
                          "Images/{}.jpg")
    records = [PairRecord(key, img, {"mat": mat}, "origa", None) for key, img, mat in pairs]
    return finish("origa", root, records, problems)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------

_MARKERS = {
    "refuge": "Training400/, REFUGE-Validation400/ or Test400/",
    "drishti": "[Drishti-GS1_files/]Training/Images/drishtiGS_*.png",
    "rimone_r3": "Healthy/Stereo Images/ or 'Glaucoma and suspects/Stereo Images/'",
    "rimone_dl": "RIM-ONE_DL_images/",
    "origa": "[ORIGA/]Images/ + Semi-automatic-annotations/",
    "generic": "images/ + masks/",
}


def _present(root: Path) -> dict[str, bool]:
    return {
        "refuge": _refuge_present(root),
        "drishti": _drishti_base(root) is not None,
        "rimone_r3": bool(_rimone_r3_bases(root)),
        "rimone_dl": _rimone_dl_present(root),
        "origa": _origa_base(root) is not None,
        "generic": bool(generic_split_dirs(root)),
    }


def discover_glaucoma(
    root: str | Path,
    layout: str = DataConfig.layout,
    *,
    rimone_masks: str = "Average",
    rimone_dl_partition: str = "hospital",
) -> Discovery:
    """Find optic disc/cup image/mask pairs under ``root``.

    ``layout``: "auto" (detect), "refuge", "drishti", "rimone_r3", "rimone_dl", "origa" or
    "generic"; a named layout is enforced. ``rimone_masks``: RIM-ONE r3 annotation set
    ("Average", "Expert1", "Expert2"). ``rimone_dl_partition``: "hospital" or "random".
    Raises :class:`DataError` for a missing/empty root, an unrecognised or ambiguous
    layout, or no usable pair; unpaired files are returned in ``Discovery.problems``.
    """
    valid = ("auto", *_MARKERS)
    if layout not in valid:
        raise DataError(f"unknown glaucoma layout {layout!r}; use one of {', '.join(valid)}")
    if rimone_masks not in RIMONE_MASK_SETS:
        raise DataError(f"unknown rimone_masks {rimone_masks!r}; use one of {', '.join(RIMONE_MASK_SETS)}")
    if rimone_dl_partition not in RIMONE_DL_PARTITIONS:
        raise DataError(f"unknown rimone_dl_partition {rimone_dl_partition!r}; use 'hospital' or 'random'")
    root = check_root(root)
    present = _present(root)
    if layout == "auto":
        found = [name for name, ok in present.items() if ok]
        if len(found) > 1:
            raise DataError(
                f"{root} matches several glaucoma layouts ({', '.join(found)}); pass layout= one of them "
                "or give each dataset its own root"
            )
        if not found:
            expected = "; ".join(f"{k}: {v}" for k, v in _MARKERS.items())
            raise DataError(
                f"unrecognised glaucoma layout under {root} (found: {top_entries(root)}). Expected one of "
                f"{expected}; fix data.root or set the layout explicitly"
            )
        layout = found[0]
    elif not present[layout]:
        raise DataError(
            f"{root} does not hold the {layout} layout (expected {_MARKERS[layout]}; found: {top_entries(root)}); "
            "fix data.root or use layout='auto'"
        )
    if layout == "refuge":
        return _discover_refuge(root)
    if layout == "drishti":
        return _discover_drishti(root)
    if layout == "rimone_r3":
        return _discover_rimone_r3(root, rimone_masks)
    if layout == "rimone_dl":
        return _discover_rimone_dl(root, rimone_dl_partition)
    if layout == "origa":
        return _discover_origa(root)
    return discover_generic(root)
