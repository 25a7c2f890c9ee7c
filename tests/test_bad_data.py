"""Bad data: every problem is reported with its file and what is wrong, all in ONE message,
with the fix / skip hint; checks never raise for a single bad pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning_seg.datamodules.layouts import (
    DataError,
    DataProblem,
    check_records,
    discover_glaucoma,
    discover_isic,
    format_problems,
    load_pair,
)

from tests.helpers.fake_trees import (
    corrupt_random_bytes,
    corrupt_truncate,
    make_generic_tree,
    make_isic_tree,
    make_origa_tree,
    make_refuge_tree,
    read_array,
    remove_file,
    save,
    write_colour_mask,
    write_mat_values,
    write_noise_mask,
    write_resized,
)


def _only(problems: list[DataProblem], key: str) -> DataProblem:
    hits = [p for p in problems if p.key == key]
    assert len(hits) == 1, problems
    return hits[0]


@pytest.mark.parametrize("damage", [corrupt_truncate, corrupt_random_bytes])
def test_corrupt_image_is_reported_not_raised(tmp_path: Path, damage) -> None:
    tree = make_isic_tree(tmp_path, 2018, splits=["train"], n_per_split=3)
    bad = tree.keys[1]
    damage(tree.images[bad])
    found = discover_isic(tmp_path)
    assert len(found.records) == 3  # names are fine: discovery pairs it, decoding finds it
    problems = check_records(found.records, "lesion", workers=2)
    p = _only(problems, bad)
    assert p.path == tree.images[bad] and "cannot decode" in p.problem
    with pytest.raises(DataError, match="cannot decode") as err:
        load_pair(next(r for r in found.records if r.key == bad), "lesion")
    assert str(tree.images[bad]) in str(err.value)


def test_corrupt_mask_is_reported(tmp_path: Path) -> None:
    tree = make_refuge_tree(tmp_path)
    corrupt_truncate(tree.masks["V0001"]["mask"], keep=0.3)
    problems = check_records(discover_glaucoma(tmp_path).records, "disc_cup")
    p = _only(problems, "V0001")
    assert p.path == tree.masks["V0001"]["mask"] and "cannot decode" in p.problem


def test_missing_mask_and_orphan_mask(tmp_path: Path) -> None:
    tree = make_isic_tree(tmp_path, 2017, splits=["train", "val"])
    missing = tree.keys[0]
    remove_file(tree.masks[missing]["mask"])
    orphan = tree.keys[3]
    remove_file(tree.images[orphan])
    found = discover_isic(tmp_path)
    assert sorted(r.key for r in found.records) == sorted(set(tree.keys) - {missing, orphan})
    p = _only(found.problems, missing)
    assert p.path == tree.images[missing]
    assert "missing mask" in p.problem and f"{missing}_segmentation.png" in p.problem
    q = _only(found.problems, orphan)
    assert q.path == tree.masks[orphan]["mask"] and "without image" in q.problem


def test_missing_mask_folder_reported_per_image(tmp_path: Path) -> None:
    tree = make_isic_tree(tmp_path, 2018, splits=["train", "val"], n_per_split=1)
    for p in tree.masks[tree.keys[1]]["mask"].parent.iterdir():
        p.unlink()
    tree.masks[tree.keys[1]]["mask"].parent.rmdir()
    found = discover_isic(tmp_path)
    p = _only(found.problems, tree.keys[1])
    assert "folder missing" in p.problem


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    tree = make_generic_tree(tmp_path, n=2)
    bad = tree.keys[0]
    write_resized(tree.masks[bad]["mask"], dh=2, dw=3)
    h, w = tree.sizes[bad]
    problems = check_records(discover_isic(tmp_path).records, "lesion")
    p = _only(problems, bad)
    assert p.path == tree.masks[bad]["mask"]
    assert f"{w + 3}x{h + 2}" in p.problem and f"{w}x{h}" in p.problem and "differs" in p.problem


def test_unexpected_mask_values(tmp_path: Path) -> None:
    # ISIC binary mask full of random greys (not anti-aliasing) and a colour RGB mask
    isic = make_isic_tree(tmp_path / "isic", 2016, n_per_split=2)
    noisy, colour = isic.keys[0], isic.keys[2]
    write_noise_mask(isic.masks[noisy]["mask"])
    write_colour_mask(isic.masks[colour]["mask"])
    problems = check_records(discover_isic(tmp_path / "isic").records, "lesion")
    assert {p.key for p in problems} == {noisy, colour}
    assert "should be binary 0/255" in _only(problems, noisy).problem
    assert "colour" in _only(problems, colour).problem
    # ISIC: a 3-class index map is not a binary lesion mask
    h, w = isic.sizes[isic.keys[1]]
    save(isic.masks[isic.keys[1]]["mask"], (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8))
    problems = check_records(discover_isic(tmp_path / "isic").records, "lesion")
    assert isic.keys[1] in {p.key for p in problems}
    # REFUGE grey codes with random greys; ORIGA class index >= 3
    refuge = make_refuge_tree(tmp_path / "refuge")
    write_noise_mask(refuge.masks["T0001"]["mask"])
    p = _only(check_records(discover_glaucoma(tmp_path / "refuge").records, "disc_cup"), "T0001")
    assert "0 (cup) / 128 (rim) / 255 (background)" in p.problem
    origa = make_origa_tree(tmp_path / "origa", n=2)
    write_mat_values(origa.masks["002"]["mat"], 3)
    p = _only(check_records(discover_glaucoma(tmp_path / "origa").records, "disc_cup"), "002")
    assert p.path == origa.masks["002"]["mat"] and "outside ORIGA's" in p.problem and "3" in p.problem
    # generic glaucoma: index values >= 3 are neither index, grey code nor binary disc
    gen = make_generic_tree(tmp_path / "gen", n=2, kind="index")
    m = read_array(gen.masks["img001"]["mask"])
    m[m == 2] = 5
    save(gen.masks["img001"]["mask"], m)
    problems = check_records(discover_glaucoma(tmp_path / "gen").records, "disc_cup")
    assert [p.key for p in problems] == ["img001"]


def test_empty_missing_and_unrecognised_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover_isic(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    for discover in (discover_isic, discover_glaucoma):
        with pytest.raises(DataError, match="is empty"):
            discover(tmp_path / "empty")
    weird = tmp_path / "weird"
    (weird / "pictures").mkdir(parents=True)
    (weird / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="unrecognised ISIC layout") as err:
        discover_isic(weird)
    assert "pictures/" in str(err.value) and "images/ + masks/" in str(err.value)
    with pytest.raises(DataError, match="unrecognised glaucoma layout"):
        discover_glaucoma(weird)


def test_image_folder_without_any_pairs(tmp_path: Path) -> None:
    (tmp_path / "ISIC2018_Task1-2_Training_Input").mkdir()
    with pytest.raises(DataError, match="no usable image/mask pairs"):
        discover_isic(tmp_path)
    tree = make_generic_tree(tmp_path / "gen", n=2)
    for key in tree.keys:
        remove_file(tree.masks[key]["mask"])
    with pytest.raises(DataError, match="no usable") as err:
        discover_isic(tmp_path / "gen")
    assert all(str(Path("images") / tree.images[k].name) in str(err.value) for k in tree.keys)
    assert len(err.value.problems) == 2


def test_all_bad_files_in_one_message_with_fix_and_skip_hint(tmp_path: Path) -> None:
    tree = make_isic_tree(tmp_path, 2017, n_per_split=2)
    k = tree.keys
    corrupt_truncate(tree.images[k[0]])
    write_resized(tree.masks[k[1]]["mask"])
    write_noise_mask(tree.masks[k[2]]["mask"])
    remove_file(tree.masks[k[3]]["mask"])
    found = discover_isic(tmp_path)
    problems = found.problems + check_records(found.records, "lesion", workers=2)
    assert sorted(p.key for p in problems) == sorted(k[:4])
    good = [r for r in found.records if r.key not in {p.key for p in problems}]
    assert sorted(r.key for r in good) == sorted(k[4:])
    message = format_problems(problems, root=tmp_path)
    assert message.startswith("4 bad data files under")
    for key in k[:4]:
        assert key in message
    rel = tree.images[k[0]].relative_to(tmp_path)
    assert str(rel) in message  # paths are shown relative to the root
    assert "cannot decode" in message and "differs" in message and "binary" in message and "missing mask" in message
    assert "data.skip_bad=true" in message and "Fix:" in message
    err = DataError.from_problems(problems, root=tmp_path)
    assert str(err) == message and err.problems == problems


def test_long_problem_lists_are_summarised() -> None:
    problems = [DataProblem(Path(f"/d/x{i}.jpg"), f"x{i}", "missing mask") for i in range(5)]
    msg = format_problems(problems, max_listed=3)
    assert "x2.jpg" in msg and "x3.jpg" not in msg and "2 more" in msg
    assert format_problems([]) == "no data problems found"


def test_check_records_survives_unexpected_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_generic_tree(tmp_path, n=2)
    records = discover_isic(tmp_path).records
    import lightning_seg.datamodules.layouts.checks as checks

    def boom(record, task, *, soft_threshold="majority"):
        if record.key == tree.keys[0]:
            raise MemoryError("decoder blew up")
        return load_pair(record, task, soft_threshold=soft_threshold)

    monkeypatch.setattr(checks, "load_pair", boom)
    problems = check_records(records, "lesion", workers=1)
    assert [p.key for p in problems] == [tree.keys[0]] and "MemoryError" in problems[0].problem


def test_config_mistakes_raise_early(tmp_path: Path) -> None:
    make_generic_tree(tmp_path, n=1)
    records = discover_isic(tmp_path).records
    with pytest.raises(DataError, match="unknown task 'lesions'"):
        check_records(records, "lesions")
    with pytest.raises(DataError, match="unknown soft_threshold"):
        check_records(records, "lesion", soft_threshold="most")
    with pytest.raises(DataError, match="unknown glaucoma layout 'refugee'"):
        discover_glaucoma(tmp_path, layout="refugee")
