"""Glaucoma layouts (REFUGE, Drishti-GS1, RIM-ONE r3, RIM-ONE DL, ORIGA, generic): detection,
pairing, official splits, class decoding {0 bg, 1 rim, 2 cup}."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from lightning_seg.datamodules.layouts import DataError, check_records, discover_glaucoma, load_pair

from tests.helpers.fake_trees import (
    fake_disc_cup,
    fake_image,
    make_drishti_tree,
    make_generic_tree,
    make_origa_tree,
    make_refuge_tree,
    make_rimone_dl_tree,
    make_rimone_r3_tree,
    read_array,
    rim_pixel,
    save,
    write_cup_shifted,
    write_resized,
)


def _check_tree(found, tree, task: str = "disc_cup") -> None:
    assert found.layout == tree.layout
    assert found.problems == []
    assert sorted(r.key for r in found.records) == tree.keys
    for r in found.records:
        assert r.split == tree.splits[r.key]
        assert dict(r.masks) == tree.masks[r.key]
        img, mask = load_pair(r, task)
        h, w = tree.sizes[r.key]
        assert img.shape == (h, w, 3) and img.dtype == np.uint8 and mask.dtype == np.uint8
        expected = fake_disc_cup(h, w)
        if task == "disc":
            expected = (expected >= 1).astype(np.uint8)
        np.testing.assert_array_equal(mask, expected)


TREES = {
    "refuge": make_refuge_tree,
    "drishti": make_drishti_tree,
    "rimone_r3": make_rimone_r3_tree,
    "rimone_dl": make_rimone_dl_tree,
    "origa": make_origa_tree,
}


@pytest.mark.parametrize("layout", sorted(TREES))
@pytest.mark.parametrize("task", ["disc_cup", "disc"])
def test_every_layout_detected_paired_and_decoded(tmp_path: Path, layout: str, task: str) -> None:
    tree = TREES[layout](tmp_path)
    found = discover_glaucoma(tmp_path)
    _check_tree(found, tree, task)
    assert discover_glaucoma(tmp_path, layout=layout).layout == layout
    assert check_records(found.records, task, workers=2) == []


def test_refuge_grey_codes_splits_and_labels(tmp_path: Path) -> None:
    tree = make_refuge_tree(tmp_path)
    found = discover_glaucoma(tmp_path)
    assert [(r.key, r.split) for r in found.records] == [
        ("g0001", "train"), ("n0001", "train"), ("V0001", "val"), ("V0002", "val"), ("T0001", "test"), ("T0002", "test"),
    ]
    meta = {r.key: r.meta.get("glaucoma") for r in found.records}
    assert meta == {"g0001": True, "n0001": False, "V0001": None, "V0002": None, "T0001": True, "T0002": False}
    rec = found.records[0]
    h, w = tree.sizes[rec.key]
    grey = read_array(rec.masks["mask"])
    assert rec.masks["mask"].suffix == ".bmp" and set(np.unique(grey).tolist()) == {0, 128, 255}
    _, mask = load_pair(rec, "disc_cup")
    # inverted grey code: centre is black (0) = cup, rim pixel 128 = rim, corner white (255) = background
    assert grey[h // 2, w // 2] == 0 and mask[h // 2, w // 2] == 2
    assert grey[rim_pixel(h, w)] == 128 and mask[rim_pixel(h, w)] == 1
    assert grey[0, 0] == 255 and mask[0, 0] == 0


def test_refuge_robust_thresholds(tmp_path: Path) -> None:
    """disc = grey <= 150, cup = grey <= 100 (a few resampled greys must land in the right class)."""
    tree = make_refuge_tree(tmp_path)
    rec = next(r for r in discover_glaucoma(tmp_path).records if r.key == "V0001")
    grey = read_array(rec.masks["mask"])
    grey[0, :4] = [100, 101, 150, 151]
    save(rec.masks["mask"], grey)
    _, mask = load_pair(rec, "disc_cup")
    assert mask[0, :4].tolist() == [2, 1, 1, 0]
    assert tree.splits["V0001"] == "val"


def test_drishti_soft_threshold_options(tmp_path: Path) -> None:
    tree = make_drishti_tree(tmp_path, n_train=1, n_test=0)
    rec = discover_glaucoma(tmp_path).records[0]
    h, w = tree.sizes[rec.key]
    masks = {t: load_pair(rec, "disc_cup", soft_threshold=t)[1] for t in ("majority", "all", "any")}
    np.testing.assert_array_equal(masks["majority"], fake_disc_cup(h, w))
    disc = {t: m >= 1 for t, m in masks.items()}
    cup = {t: m == 2 for t, m in masks.items()}
    for part in (disc, cup):
        assert (part["all"] <= part["majority"]).all() and (part["majority"] <= part["any"]).all()
        assert part["all"].sum() < part["majority"].sum() < part["any"].sum()
    with pytest.raises(DataError, match="soft_threshold"):
        load_pair(rec, "disc_cup", soft_threshold="half")


def test_drishti_test_without_ground_truth_reports_missing_masks(tmp_path: Path) -> None:
    make_drishti_tree(tmp_path, n_train=2, n_test=2, test_gt=False)
    found = discover_glaucoma(tmp_path)
    assert [r.split for r in found.records] == ["train", "train"]
    assert sorted(p.key for p in found.problems) == ["drishtiGS_003", "drishtiGS_004"]
    assert all("missing mask" in p.problem and p.path.suffix == ".png" for p in found.problems)


@pytest.mark.parametrize("mask_width", ["full", "half"])
def test_rimone_r3_left_half_and_mask_crop(tmp_path: Path, mask_width: str) -> None:
    tree = make_rimone_r3_tree(tmp_path, mask_width=mask_width)
    found = discover_glaucoma(tmp_path)
    _check_tree(found, tree)
    for r in found.records:
        img, _ = load_pair(r, "disc")
        assert img.shape[1] * 2 == read_array(r.image).shape[1]
        assert img[..., 0].mean() > 150 > img[..., 2].mean()  # left half is the red-dominant one
        assert r.meta["stereo_half"] == "left" and r.split is None
    diagnosis = {r.key[0]: r.meta["diagnosis"] for r in found.records}
    assert diagnosis == {"N": "normal", "G": "glaucoma", "S": "suspect"}


def test_rimone_r3_expert_option(tmp_path: Path) -> None:
    tree = make_rimone_r3_tree(tmp_path)
    found = discover_glaucoma(tmp_path, rimone_masks="Expert1")
    assert all("-1-Disc-exp1" in r.masks["disc"].name for r in found.records)
    rec = found.records[0]
    h, w = tree.sizes[rec.key]
    _, mask = load_pair(rec, "disc_cup")
    assert (mask >= 1).all() and (mask == 2).sum() == (fake_disc_cup(h, w) == 2).sum()  # expert mask, not Average
    with pytest.raises(DataError, match="rimone_masks"):
        discover_glaucoma(tmp_path, rimone_masks="Expert3")


def test_rimone_dl_partitions(tmp_path: Path) -> None:
    tree = make_rimone_dl_tree(tmp_path)
    by_hospital = discover_glaucoma(tmp_path)
    assert {r.key: r.split for r in by_hospital.records} == tree.splits
    assert {r.key: r.meta["glaucoma"] for r in by_hospital.records} == {k: m["glaucoma"] for k, m in tree.meta.items()}
    randomly = discover_glaucoma(tmp_path, rimone_dl_partition="random")
    flipped = {"train": "test", "test": "train"}
    assert {r.key: r.split for r in randomly.records} == {k: flipped[s] for k, s in tree.splits.items()}


def test_origa_without_scipy_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_origa_tree(tmp_path, n=1)
    rec = discover_glaucoma(tmp_path).records[0]
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes "from scipy.io import ..." fail
    with pytest.raises(DataError, match=r"pip install 'lightning_seg\[origa\]'"):
        load_pair(rec, "disc_cup")


@pytest.mark.parametrize("kind", ["index", "refuge"])
def test_generic_glaucoma_index_and_grey_coded(tmp_path: Path, kind: str) -> None:
    tree = make_generic_tree(tmp_path, kind=kind, image_ext="png")
    found = discover_glaucoma(tmp_path)
    _check_tree(found, tree)
    rec = found.records[1]
    h, w = tree.sizes[rec.key]
    np.testing.assert_array_equal(load_pair(rec, "disc_cup")[0], fake_image(h, w, 1))


def test_generic_binary_disc_mask_only_for_disc_task(tmp_path: Path) -> None:
    tree = make_generic_tree(tmp_path, kind="binary_disc")
    found = discover_glaucoma(tmp_path)
    _check_tree(found, tree, task="disc")
    with pytest.raises(DataError, match="no cup"):
        load_pair(found.records[0], "disc_cup")


def test_cup_outside_disc_small_is_clipped_large_is_reported(tmp_path: Path) -> None:
    tree = make_rimone_dl_tree(tmp_path, n_per_group=1)
    records = discover_glaucoma(tmp_path).records
    small, large = records[0], records[1]
    h, w = tree.sizes[small.key]
    # one stray cup pixel in the corner (outside the disc): dropped, cup stays inside disc
    cup = read_array(small.masks["cup"])
    cup[0, 0] = 255
    save(small.masks["cup"], cup)
    _, mask = load_pair(small, "disc_cup")
    np.testing.assert_array_equal(mask, fake_disc_cup(h, w))
    # cup moved far to the right: most of it is outside the disc -> reported
    h2, w2 = tree.sizes[large.key]
    write_cup_shifted(large.masks["cup"], (h2, w2), width=w2, shift=w2 // 2 - 2)
    with pytest.raises(DataError, match="outside the disc") as err:
        load_pair(large, "disc_cup")
    assert str(large.masks["cup"].relative_to(tmp_path)) in str(err.value) or str(large.masks["cup"]) in str(err.value)
    assert load_pair(large, "disc")[1].max() == 1  # the disc task does not read the cup file


def test_ambiguous_and_enforced_layouts(tmp_path: Path) -> None:
    make_refuge_tree(tmp_path)
    with pytest.raises(DataError, match="does not hold the origa layout"):
        discover_glaucoma(tmp_path, layout="origa")
    make_origa_tree(tmp_path)
    with pytest.raises(DataError, match="several glaucoma layouts"):
        discover_glaucoma(tmp_path)
    assert discover_glaucoma(tmp_path, layout="origa").layout == "origa"


def test_glaucoma_layout_rejects_lesion_task(tmp_path: Path) -> None:
    make_refuge_tree(tmp_path)
    rec = discover_glaucoma(tmp_path).records[0]
    with pytest.raises(DataError, match="glaucoma layout"):
        load_pair(rec, "lesion")


def test_drishti_threshold_boundaries(tmp_path: Path) -> None:
    """majority: >= 0.5*255 (so 127 no, 128 yes); all: > 254; any: > 0."""
    make_drishti_tree(tmp_path, n_train=1, n_test=0)
    rec = discover_glaucoma(tmp_path).records[0]
    od = read_array(rec.masks["disc"])
    od[0, :6] = [0, 1, 127, 128, 254, 255]
    save(rec.masks["disc"], od)
    got = {t: load_pair(rec, "disc", soft_threshold=t)[1][0, :6].tolist() for t in ("majority", "all", "any")}
    assert got == {"majority": [0, 0, 0, 1, 1, 1], "all": [0, 0, 0, 0, 0, 1], "any": [0, 1, 1, 1, 1, 1]}


def test_refuge_nested_zip_folders(tmp_path: Path) -> None:
    tree = make_refuge_tree(tmp_path)
    for name in ("Training400", "Annotation-Training400"):
        (tmp_path / name).rename(tmp_path / f"{name}.tmp")
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.tmp").rename(tmp_path / name / name)
    found = discover_glaucoma(tmp_path)
    assert found.problems == [] and sorted(r.key for r in found.records) == tree.keys
    assert {r.key: r.meta.get("glaucoma") for r in found.split("train")} == {"g0001": True, "n0001": False}


def test_rimone_r3_mask_of_wrong_width_is_reported(tmp_path: Path) -> None:
    tree = make_rimone_r3_tree(tmp_path, mask_width="half")
    key = tree.keys[0]
    write_resized(tree.masks[key]["disc"], dh=0, dw=3)
    problems = check_records(discover_glaucoma(tmp_path).records, "disc")
    assert [(p.key, p.path) for p in problems] == [(key, tree.masks[key]["disc"])]
    assert "matches neither the stereo image width" in problems[0].problem
