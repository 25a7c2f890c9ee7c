"""Small and odd data: the layout and split counts are printed and stored, an empty split fails before anything runs
(only the splits a command reads must hold images), other_image with one image names the real count, and no mask is
silently decoded as something else (values that do not fit the expected levels are an error naming file and values).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from lightning_seg.datamodules import build_datamodule
from lightning_seg.datamodules.base import _held_out
from lightning_seg.datamodules.layouts import (
    DataError,
    PairRecord,
    check_records,
    discover_glaucoma,
    discover_isic,
    load_pair,
)
from PIL import Image

from lightning_seg.cli import main
from tests.helpers.fake_trees import (
    fake_image,
    make_drishti_tree,
    make_generic_tree,
    make_isic_tree,
    make_refuge_tree,
    make_rimone_dl_tree,
    read_array,
    save,
    write_label_mask,
)

# ---------------------------------------------------------------------------------------
# Splits of small folders, what setup prints and describe() returns
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fractions", "expected"), [
    (1, (0.15, 0.15), (1, 0, 0)), (2, (0.15, 0.15), (1, 1, 0)), (3, (0.15, 0.15), (1, 1, 1)),
    (5, (0.15, 0.15), (3, 1, 1)), (20, (0.15, 0.15), (14, 3, 3)), (5, (0.0, 0.15), (4, 0, 1)),
    (20, (0.01, 0.0), (19, 1, 0)), (2, (0.5, 0.45), (1, 1, 0)),
])
def test_random_split_sizes_of_small_sets(n: int, fractions: tuple[float, float], expected: tuple[int, int, int]) -> None:
    """round(fraction * n), but at least one val / test pair for a fraction > 0, train keeping one first."""
    n_val, n_test = _held_out(n, *fractions)
    assert (n - n_val - n_test, n_val, n_test) == expected


def test_five_isic_pairs_split_is_printed_and_described(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_isic_tree(tmp_path, 2018, splits=["train"], n_per_split=5)
    dm = build_datamodule("isic", source="folder", root=str(tmp_path), image_size=32)
    dm.setup("fit")
    out = capsys.readouterr().out
    assert out.splitlines() == [(f"data: isic2018 layout under {tmp_path}, task lesion, split random (data_seed 0): "
                                 "train 3, val 1, test 1")]
    d = dm.describe()
    assert d["counts"] == {"train": 3, "val": 1, "test": 1} and d["layout"] == "isic2018" and d["skipped"] == 0
    assert (d["source"], d["root"], d["task"], d["split"], d["data_seed"]) == ("folder", str(tmp_path), "lesion", "random", 0)
    dm.setup("validate")  # Lightning calls setup once per stage: built and printed once
    assert capsys.readouterr().out == ""
    pickle.loads(pickle.dumps(dm))  # a set-up datamodule travels to DDP-spawn workers


def test_synthetic_describe_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    dm = build_datamodule("glaucoma", num_train=4, num_val=0, num_test=2, image_size=32)
    dm.setup("test")
    assert capsys.readouterr().out.strip() == "data: synthetic glaucoma, task disc_cup (data_seed 0): train 4, val 0, test 2"
    assert dm.describe()["counts"] == {"train": 4, "val": 0, "test": 2} and dm.describe()["source"] == "synthetic"


def test_only_the_splits_a_stage_reads_must_hold_images() -> None:
    dm = build_datamodule("isic", num_train=0, num_val=0, num_test=3, image_size=32)
    dm.setup("test")  # train and val are not read by test
    assert len(dm.test_dataloader().dataset) == 3
    with pytest.raises(DataError) as info:
        dm.setup("validate")
    assert str(info.value) == ("validate needs the val split of isic, but it is empty (synthetic isic data: train 0, "
                               "val 0, test 3); use data.num_val >= 1")
    with pytest.raises(DataError, match="the train dataloader needs the train split"):  # not the sampler's error
        dm.train_dataloader()
    dm.require("val", "attack_eval.split=val", alternative="attack_eval.split")
    with pytest.raises(DataError, match=r"^attack_eval.split=val needs the val split .* use data.num_val >= 1, or use "
                                        r"attack_eval.split=test$"):
        dm.setup()


def test_describe_without_setup_and_eval_split_smaller_than_the_process_count(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = build_datamodule("isic", num_train=2, num_val=1, num_test=2, image_size=32)
    assert dm.describe()["counts"] == {"train": 2, "val": 1, "test": 2}  # e.g. in the launching process after DDP spawn
    monkeypatch.setattr(dm, "_world", lambda: (0, 2))
    assert len(dm.train_dataloader().sampler) == 1  # training pads the ranks
    with pytest.raises(DataError, match=r"^the val split of isic holds 1 image, fewer than the 2 processes that share "
                                        r"it: add images or use trainer.devices=1$"):
        dm.val_dataloader()


def test_empty_folder_splits_name_the_option_that_fills_them(tmp_path: Path) -> None:
    make_generic_tree(tmp_path / "two", n=2, kind="index")  # two fundus pairs: train 1, val 1, test 0
    dm = build_datamodule("glaucoma", source="folder", root=str(tmp_path / "two"), image_size=32)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"test needs the test split of glaucoma, but it is empty \(generic layout under "
                                        r".*two, data.split=random: train 1, val 1, test 0\); 2 usable pairs are too few"):
        dm.setup("test")
    dm = build_datamodule("glaucoma", source="folder", root=str(tmp_path / "two"), image_size=32, val_fraction=0.0)
    with pytest.raises(DataError, match=r"train 1, val 0, test 1\); set data.val_fraction > 0$"):
        dm.setup("validate")
    make_isic_tree(tmp_path / "isic", 2018, splits=["train"], n_per_split=5)
    dm = build_datamodule("isic", source="folder", root=str(tmp_path / "isic"), split="official", image_size=32)
    dm.setup("fit")  # no validation folder: val is carved from train
    assert dm.describe()["counts"] == {"train": 4, "val": 1, "test": 0}
    with pytest.raises(DataError, match=r"test needs the test split .* data.split=official: train 4, val 1, test 0\); "
                                        r"the layout has no test pairs there: add them, or use data.split=random"):
        dm.setup("test")


# ---------------------------------------------------------------------------------------
# Mask values: nothing is silently decoded as empty or as something else
# ---------------------------------------------------------------------------------------


def _generic_pair(root: Path, mask: np.ndarray, key: str = "a") -> PairRecord:
    h, w = mask.shape[:2]
    image = save(root / "images" / f"{key}.png", fake_image(h, w, 0))
    return PairRecord(key, image, {"mask": save(root / "masks" / f"{key}.png", mask)}, "generic")


def _disc(h: int, w: int, radius: float, value: int = 255) -> np.ndarray:
    """A filled anti-aliased circle (cv2 LINE_AA edge greys) of ``value`` on 0."""
    out = np.zeros((h, w), np.uint8)
    cv2.circle(out, (w * 8, h * 8), int(radius * 16), value, -1, cv2.LINE_AA, shift=4)
    return out


@pytest.mark.parametrize("value", [2, 100, 127])
def test_label_values_that_vanish_under_the_binary_rule_are_errors(tmp_path: Path, value: int) -> None:
    tree = make_isic_tree(tmp_path, 2018, splits=["train"], n_per_split=2)
    bad = tree.keys[0]
    write_label_mask(tree.masks[bad]["mask"], value, fraction=0.05)  # under 10 % foreground: passed as empty before
    problems = check_records(discover_isic(tmp_path).records, "lesion")
    assert [p.key for p in problems] == [bad] and problems[0].path == tree.masks[bad]["mask"]
    assert f"values {{0, {value}}} have no pixel above 127" in problems[0].problem
    assert "decode as empty" in problems[0].problem and "expected 0 (background) and 255 (lesion)" in problems[0].problem


def test_three_class_index_map_is_not_a_lesion_mask(tmp_path: Path) -> None:
    index = _disc(64, 64, 10, 1)
    index[_disc(64, 64, 5) > 127] = 2
    with pytest.raises(DataError, match=r"values \{0, 1, 2\} have no pixel above 127") as info:
        load_pair(_generic_pair(tmp_path, index), "lesion")
    assert str(tmp_path / "masks" / "a.png") in str(info.value)


def test_bad_mask_values_fail_setup_or_are_skipped(tmp_path: Path) -> None:
    tree = make_isic_tree(tmp_path, 2018, splits=["train"], n_per_split=4)
    write_label_mask(tree.masks[tree.keys[1]]["mask"], 2)
    dm = build_datamodule("isic", source="folder", root=str(tmp_path), image_size=32)
    with pytest.raises(DataError, match=r"values \{0, 2\}") as info:
        dm.setup()
    assert tree.keys[1] in str(info.value) and "data.skip_bad=true" in str(info.value)
    dm = build_datamodule("isic", source="folder", root=str(tmp_path), image_size=32, skip_bad=True)
    with pytest.warns(UserWarning, match=r"Skipping 1 bad pair"):
        dm.setup()
    d = dm.describe()
    assert d["skipped"] == 1 and d["skipped_keys"] == [tree.keys[1]] and sum(d["counts"].values()) == 3


def test_grey_label_regions_are_errors_but_anti_aliasing_is_not(tmp_path: Path) -> None:
    h, w = 192, 256
    aa = _disc(h, w, 60)
    for name, mask in {
        "line_aa": aa,
        "rgb": np.repeat(aa[..., None], 3, axis=2),
        "bilinear_x4": cv2.resize(cv2.resize(aa, (w // 4, h // 4), interpolation=cv2.INTER_AREA), (w, h),
                                  interpolation=cv2.INTER_LINEAR),
        "nearest_x4": cv2.resize(cv2.resize(aa, (w // 4, h // 4), interpolation=cv2.INTER_AREA), (w, h),
                                 interpolation=cv2.INTER_NEAREST),
        "jpeg": np.asarray(Image.open(_jpeg(aa))),
    }.items():
        _, mask_out = load_pair(_generic_pair(tmp_path / name, mask), "lesion")
        grey = mask if mask.ndim == 2 else mask[..., 0]
        np.testing.assert_array_equal(mask_out, (grey > 127).astype(np.uint8), err_msg=name)
    for value in (128, 1):  # REFUGE's rim level / a region of 1s: labels, not edge greys
        labelled = aa.copy()
        labelled[4:36, 4:36] = value
        with pytest.raises(DataError, match=rf"grey {value} \(1\.[0-9]% of the pixels\) fills regions away from the lesion "
                                            "edge, so it is a label, not anti-aliasing"):
            load_pair(_generic_pair(tmp_path / f"label{value}", labelled), "lesion")


def _jpeg(grey: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG", quality=75)
    buf.seek(0)
    return buf


def test_refuge_mask_without_disc_pixels_is_an_error(tmp_path: Path) -> None:
    tree = make_refuge_tree(tmp_path)
    path = tree.masks["V0001"]["mask"]
    grey = np.full_like(read_array(path), 255)
    grey[10:14, 10:14] = 200
    save(path, grey)
    problems = check_records(discover_glaucoma(tmp_path).records, "disc_cup")
    assert [p.path for p in problems] == [path]
    assert "values {200, 255} have no pixel <= 150, so the disc would decode as empty" in problems[0].problem


def test_soft_map_below_the_threshold_names_the_option(tmp_path: Path) -> None:
    make_drishti_tree(tmp_path, n_train=1, n_test=0)
    rec = discover_glaucoma(tmp_path).records[0]
    od = read_array(rec.masks["disc"])
    save(rec.masks["disc"], (od.astype(np.float32) * 200 / 255).astype(np.uint8))  # no expert-unanimous pixel
    assert load_pair(rec, "disc", soft_threshold="majority")[1].any()
    with pytest.raises(DataError, match=r"disc soft map values \{0, 31, 109, 200\} have no pixel >= 255, so with "
                                        r"data.soft_threshold=all it would decode as empty"):
        load_pair(rec, "disc", soft_threshold="all")


def test_separate_cup_file_with_label_values_is_an_error(tmp_path: Path) -> None:
    make_rimone_dl_tree(tmp_path)
    rec = discover_glaucoma(tmp_path).records[0]
    cup = read_array(rec.masks["cup"])
    save(rec.masks["cup"], np.where(cup > 127, 2, 0).astype(np.uint8) + (cup > 127))  # a {0, 3} cup file
    with pytest.raises(DataError, match=r"cup mask values \{0, 3\} have no pixel above 127, so the cup would decode as "
                                        "empty") as info:
        load_pair(rec, "disc_cup")
    assert str(rec.masks["cup"].relative_to(tmp_path)) in str(info.value) or str(rec.masks["cup"]) in str(info.value)


def test_generic_glaucoma_masks(tmp_path: Path) -> None:
    h, w = 200, 200
    disc_only = (_disc(h, w, 12) > 127).astype(np.uint8)  # {0, 1}: a disc-only mask, no cup
    rec = _generic_pair(tmp_path / "disc01", disc_only)
    with pytest.raises(DataError, match=r"values \{0, 1\} hold a disc but no cup .* so the cup would be empty"):
        load_pair(rec, "disc_cup")
    np.testing.assert_array_equal(load_pair(rec, "disc")[1], disc_only)
    # REFUGE grey code with a rim under 1 % of the pixels: still read as grey code, never as an inverted binary disc
    refuge = np.full((h, w), 255, np.uint8)
    cv2.circle(refuge, (100, 100), 12, 128, -1)
    cv2.circle(refuge, (100, 100), 8, 0, -1)
    assert (refuge == 128).mean() < 0.01
    _, idx = load_pair(_generic_pair(tmp_path / "refuge", refuge), "disc_cup")
    np.testing.assert_array_equal(idx, np.select([refuge == 0, refuge == 128], [2, 1], 0))
    _, disc = load_pair(_generic_pair(tmp_path / "refuge", refuge), "disc")
    assert disc.sum() == (refuge <= 128).sum()
    # a binary disc mask with a region of 1s next to it: that region is a label, not an edge grey
    binary = _disc(h, w, 20)
    binary[150:190, 20:60] = 1
    with pytest.raises(DataError, match=r"grey 1 \(.*\) fills regions away from the disc edge"):
        load_pair(_generic_pair(tmp_path / "binary", binary), "disc")


# ---------------------------------------------------------------------------------------
# Through the commands: one line, exit 2, no run folder
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesion_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fit on the synthetic ISIC set (task lesion, 32 px): the checkpoint the commands below evaluate."""
    from lightning_seg.commands.fit import fit
    from lightning_seg.config import compose
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("small_data") / "runs"
    fit(compose(tiny_overrides(root)))
    return root


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _cmd(command: str, root: Path, *extra: str) -> list[str]:
    return [command, f"run.output_dir={root}", "logger=none", *extra]


@pytest.mark.slow
def test_attack_on_five_isic_pairs_names_the_one_val_image(lesion_ckpt: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    make_isic_tree(tmp_path / "isic", 2018, splits=["train"], n_per_split=5)
    capsys.readouterr()
    line = _fails(_cmd("attack", lesion_ckpt, "data.source=folder", f"data.root={tmp_path / 'isic'}"), capsys,
                  "attack_eval.target=other_image aims each image at another image's mask, but the val split holds "
                  "1 image (train 3, val 1, test 1; targeted attacks: asma)",
                  "a larger data.val_fraction", "attack_eval.target=shift")
    assert "num_images" not in line
    assert not (lesion_ckpt / "attack").exists()


@pytest.mark.slow
def test_empty_splits_fail_before_any_run_folder(lesion_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(_cmd("test", lesion_ckpt, "data.num_test=0"), capsys,
           "test needs the test split of isic, but it is empty (synthetic isic data: train 32, val 12, test 0); "
           "use data.num_test >= 1")
    _fails(_cmd("validate", lesion_ckpt, "data.num_val=0"), capsys, "validate needs the val split", "data.num_val >= 1")
    _fails(_cmd("attack", lesion_ckpt, "attack_eval.split=test", "data.num_test=0"), capsys,
           "attack_eval.split=test needs the test split of isic, but it is empty",
           "use data.num_test >= 1, or use attack_eval.split=train|val")
    _fails(_cmd("attack", lesion_ckpt, "attack=up", "data.num_train=0"), capsys,
           "attack=up (a universal perturbation, fitted on attack_eval.up_train_batches=8 train batches) needs the "
           "train split of isic, but it is empty", "use data.num_train >= 1")
    for command in ("test", "validate", "attack"):
        assert not (lesion_ckpt / command).exists()


@pytest.mark.slow
def test_commands_need_only_the_splits_they_read(lesion_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cmd("test", lesion_ckpt, "data.num_train=0", "data.num_val=0")) == 0
    out = capsys.readouterr().out
    assert "data: synthetic isic, task lesion (data_seed 0): train 0, val 0, test 12" in out
    result = json.loads(next((lesion_ckpt / "test").glob("*/results.json")).read_text())
    assert result["data"]["counts"] == {"train": 0, "val": 0, "test": 12} and "test/dice" in result["metrics"]
    fast = ["attack=pgd", "attack.pgd.steps=2", "attack_eval.num_images=20", "attack_eval.panels=0"]
    assert main(_cmd("attack", lesion_ckpt, "data.num_train=0", "data.num_val=1", *fast)) == 0  # untargeted: 1 image is fine
    out = capsys.readouterr().out
    assert "attack: the val split holds 1 image, fewer than attack_eval.num_images=20: attacking all 1" in out
    result = json.loads(next((lesion_ckpt / "attack").glob("*/results.json")).read_text())
    assert result["data"]["counts"] == {"train": 0, "val": 1, "test": 12} and result["num_images"] == 1


@pytest.mark.slow
def test_fit_with_an_empty_train_split_is_one_line(tmp_path: Path, tiny, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["fit", *tiny(**{"data.num_train": 0})], capsys)
    assert line == ("error: fit needs the train split of isic, but it is empty (synthetic isic data: train 0, val 12, "
                    "test 12); use data.num_train >= 1")
    _fails(["fit", *tiny(**{"data.num_val": 0})], capsys, "fit needs the val split", "use data.num_val >= 1")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_fundus_pairs_fit_then_test_and_attack_say_why_not(tmp_path: Path, tiny,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    make_generic_tree(tmp_path / "fundus", n=2, kind="index")
    overrides = tiny(**{"data": "glaucoma", "data.source": "folder", "data.root": tmp_path / "fundus",
                        "data.batch_size": 2, "data.eval_batch_size": 2})
    assert main(["fit", *overrides]) == 0
    assert f"data: generic layout under {tmp_path / 'fundus'}, task disc_cup, split random (data_seed 0): train 1, " \
           "val 1, test 0" in capsys.readouterr().out
    root = tmp_path / "runs"
    _fails(_cmd("test", root), capsys, "test needs the test split of glaucoma, but it is empty", "train 1, val 1, test 0",
           "2 usable pairs are too few")
    _fails(_cmd("attack", root), capsys, "but the val split holds 1 image (train 1, val 1, test 0")
    assert not (root / "test").exists() and not (root / "attack").exists()


def test_unknown_folder_options_are_one_line(tmp_path: Path) -> None:
    from lightning_seg.config import ConfigError

    make_generic_tree(tmp_path, n=2, kind="index")
    dm = build_datamodule("glaucoma", source="folder", root=str(tmp_path), options={"rimone_mask": "Expert1"})
    with pytest.raises(ConfigError, match=r"data.options.rimone_mask is not an option .* Did you mean: 'rimone_masks'"):
        dm.setup()
    dm = build_datamodule("isic", source="folder", root=str(tmp_path), options={"contrast": [1, 1]})
    with pytest.raises(ConfigError, match=r"not used by the ISIC layouts"):
        dm.setup()
