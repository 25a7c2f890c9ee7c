"""ISIC 2016/2017/2018 and generic layouts: detection, pairing, official splits, decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning_seg.datamodules.layouts import DataError, PairRecord, check_records, discover_isic, load_pair

from tests.helpers.fake_trees import (
    fake_image,
    fake_lesion,
    fake_size,
    make_generic_tree,
    make_isic_tree,
    read_array,
    save,
)


def _assert_matches_tree(found, tree) -> None:
    assert found.layout == tree.layout
    assert found.problems == []
    assert sorted(r.key for r in found.records) == tree.keys
    for r in found.records:
        assert r.split == tree.splits[r.key]
        assert r.image == tree.images[r.key]
        assert dict(r.masks) == tree.masks[r.key]
        img, mask = load_pair(r, "lesion")
        h, w = tree.sizes[r.key]
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        np.testing.assert_array_equal(mask, fake_lesion(h, w))


@pytest.mark.parametrize("year", [2016, 2017, 2018])
def test_official_years_detected_paired_and_decoded(tmp_path: Path, year: int) -> None:
    tree = make_isic_tree(tmp_path, year)
    found = discover_isic(tmp_path)
    _assert_matches_tree(found, tree)
    expected_splits = {2016: {"train", "test"}, 2017: {"train", "val", "test"}, 2018: {"train", "val", "test"}}
    assert {r.split for r in found.records} == expected_splits[year]
    # sorted: official split order, then id
    order = {"train": 0, "val": 1, "test": 2}
    keys = [(order[r.split], r.key) for r in found.records]
    assert keys == sorted(keys)
    assert discover_isic(tmp_path, layout=f"isic{year}").layout == f"isic{year}"


def test_2016_capital_s_suffix_is_matched(tmp_path: Path) -> None:
    tree = make_isic_tree(tmp_path, 2016, n_per_split=1)
    found = discover_isic(tmp_path)
    assert all(r.masks["mask"].name.endswith("_Segmentation.png") for r in found.records)
    assert len(found.records) == len(tree.keys) == 2


def test_2017_superpixels_and_csv_are_never_masks_and_nested_zip_folder(tmp_path: Path) -> None:
    tree = make_isic_tree(tmp_path, 2017, nested=True)
    decoys = list(tmp_path.rglob("*_superpixels.png"))
    assert len(decoys) == len(tree.keys) and list(tmp_path.rglob("*.csv"))
    # decoys sit in the nested image folder, next to the images
    assert all(d.parent.name == d.parent.parent.name for d in decoys)
    found = discover_isic(tmp_path)
    _assert_matches_tree(found, tree)
    used = {r.image for r in found.records} | {p for r in found.records for p in r.masks.values()}
    assert not any("superpixels" in p.name or p.suffix == ".csv" for p in used)
    assert all(r.masks["mask"].name.lower().endswith("_segmentation.png") for r in found.records)


def test_partial_download_only_training_split(tmp_path: Path) -> None:
    make_isic_tree(tmp_path, 2018, splits=["train"], n_per_split=3)
    found = discover_isic(tmp_path)
    assert [r.split for r in found.records] == ["train"] * 3


def test_named_layout_is_enforced(tmp_path: Path) -> None:
    make_isic_tree(tmp_path, 2017, n_per_split=1)
    with pytest.raises(DataError, match="isic2016"):
        discover_isic(tmp_path, layout="isic2016")
    with pytest.raises(DataError, match="generic"):
        discover_isic(tmp_path, layout="generic")
    with pytest.raises(DataError, match="unknown ISIC layout 'isic2019'"):
        discover_isic(tmp_path, layout="isic2019")


def test_two_years_in_one_root_is_ambiguous(tmp_path: Path) -> None:
    make_isic_tree(tmp_path, 2016, n_per_split=1)
    make_isic_tree(tmp_path, 2018, n_per_split=1, start=10)
    with pytest.raises(DataError, match="several ISIC years"):
        discover_isic(tmp_path)
    assert discover_isic(tmp_path, layout="isic2018").layout == "isic2018"


@pytest.mark.parametrize(
    ("image_ext", "mask_suffix"), [("jpg", ""), ("png", "_mask"), ("jpg", "_segmentation")]
)
def test_generic_layout(tmp_path: Path, image_ext: str, mask_suffix: str) -> None:
    tree = make_generic_tree(tmp_path, n=3, image_ext=image_ext, mask_suffix=mask_suffix)
    found = discover_isic(tmp_path)
    _assert_matches_tree(found, tree)
    assert all(r.split is None for r in found.records)


def test_generic_layout_with_split_folders(tmp_path: Path) -> None:
    tree = make_generic_tree(tmp_path, n=2, splits=["train", "val", "test"])
    found = discover_isic(tmp_path, layout="generic")
    _assert_matches_tree(found, tree)
    assert [r.split for r in found.records] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2


def test_png_images_decode_exactly_and_rgb_masks_with_equal_channels_accepted(tmp_path: Path) -> None:
    tree = make_generic_tree(tmp_path, n=2, image_ext="png")
    key = tree.keys[0]
    h, w = tree.sizes[key]
    grey = read_array(tree.masks[key]["mask"])
    save(tree.masks[key]["mask"], np.repeat(grey[..., None], 3, axis=2))  # 8-bit RGB, as in the FR repo
    record = next(r for r in discover_isic(tmp_path).records if r.key == key)
    img, mask = load_pair(record, "lesion")
    np.testing.assert_array_equal(img, fake_image(h, w, 0))
    np.testing.assert_array_equal(mask, fake_lesion(h, w))


def test_binarisation_threshold_is_above_127_and_01_masks_are_index_maps(tmp_path: Path) -> None:
    h, w = fake_size(0)
    img = save(tmp_path / "images" / "a.png", fake_image(h, w, 0))
    grey = np.zeros((h, w), np.uint8)
    grey[: h // 2] = 255
    grey[0, :3] = [127, 128, 200]  # anti-aliased edge greys
    mpath = save(tmp_path / "masks" / "a.png", grey)
    rec = PairRecord("a", img, {"mask": mpath}, "generic")
    _, mask = load_pair(rec, "lesion")
    assert mask[0, :3].tolist() == [0, 1, 1]
    assert mask.sum() == (h // 2) * w - 1
    save(mpath, (grey > 127).astype(np.uint8))  # a {0,1} PNG must not become an empty mask
    _, mask01 = load_pair(rec, "lesion")
    np.testing.assert_array_equal(mask01, (grey > 127).astype(np.uint8))


def test_isic_layout_rejects_glaucoma_tasks(tmp_path: Path) -> None:
    make_isic_tree(tmp_path, 2018, n_per_split=1, splits=["train"])
    rec = discover_isic(tmp_path).records[0]
    with pytest.raises(DataError, match="task='lesion'"):
        load_pair(rec, "disc_cup")
    with pytest.raises(DataError, match="task='lesion'"):
        check_records([rec], "disc")


def test_records_are_picklable_and_hashable(tmp_path: Path) -> None:
    import pickle

    make_isic_tree(tmp_path, 2016, n_per_split=1)
    recs = discover_isic(str(tmp_path)).records
    assert pickle.loads(pickle.dumps(recs)) == recs
    assert len(set(recs)) == len(recs)
    assert isinstance(recs[0].image, Path)
