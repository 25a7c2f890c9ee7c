"""Real-layout folders through the datamodule and `fit`: bad data is reported before training starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning_seg.datamodules import build_datamodule
from lightning_seg.datamodules.layouts import DataError

from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from tests.helpers.fake_trees import corrupt_truncate, make_isic_tree, make_refuge_tree, remove_file, write_resized


def _isic_tree(root: Path):
    return make_isic_tree(root, 2017, n_per_split=4)  # 12 pairs over the official train/val/test folders


def test_official_and_random_splits(tmp_path: Path):
    tree = _isic_tree(tmp_path / "isic")
    official = build_datamodule("isic", source="folder", root=str(tmp_path / "isic"), split="official", image_size=32)
    official.setup()
    keys = official.source.keys
    assert {s: sorted(keys[i] for i in ids) for s, ids in official.split_ids.items()} == {
        s: sorted(k for k, v in tree.splits.items() if v == s) for s in ("train", "val", "test")
    }
    random = build_datamodule("isic", source="folder", root=str(tmp_path / "isic"), image_size=32, data_seed=3)
    random.setup()
    again = build_datamodule("isic", source="folder", root=str(tmp_path / "isic"), image_size=32, data_seed=3)
    again.setup()
    assert random.split_ids == again.split_ids and sum(map(len, random.split_ids.values())) == 12
    batch = next(iter(random.train_dataloader()))
    assert batch["image"].shape[-2:] == (32, 32) and batch["mask"].max() == 1


def test_bad_pairs_fail_before_training_with_every_file_named(tmp_path: Path, tiny, capsys: pytest.CaptureFixture[str]):
    tree = _isic_tree(tmp_path / "isic")
    keys = sorted(tree.images)
    corrupt_truncate(tree.images[keys[0]])
    remove_file(tree.masks[keys[1]]["mask"])
    write_resized(tree.masks[keys[2]]["mask"])
    overrides = tiny(**{"data.source": "folder", "data.root": tmp_path / "isic", "data.batch_size": 4})
    assert main(["fit", *overrides]) == 2
    err = capsys.readouterr().err
    for key in keys[:3]:
        assert key in err, err
    assert "data.skip_bad=true" in err
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing trained, nothing half-written
    with pytest.warns(UserWarning, match="Skipping 3 bad pair"):
        result = fit(compose([*overrides, "data.skip_bad=true"]))
    assert Path(result["last_checkpoint"]).is_file()


def test_glaucoma_folder_fit_on_refuge_layout(tmp_path: Path, tiny):
    make_refuge_tree(tmp_path / "refuge", n_per_group=3)
    overrides = tiny(**{"data": "glaucoma", "data.source": "folder", "data.root": tmp_path / "refuge", "data.image_size": 32,
                        "data.batch_size": 4, "data.val_fraction": 0.25, "data.test_fraction": 0.0})
    result = fit(compose(overrides))
    assert "val/dice_cup" in result["metrics"]


def test_unrecognised_layout_is_one_clear_error(tmp_path: Path):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "notes.txt").write_text("hello")
    dm = build_datamodule("isic", source="folder", root=str(tmp_path / "weird"))
    with pytest.raises(DataError) as info:
        dm.setup()
    assert "weird" in str(info.value)
