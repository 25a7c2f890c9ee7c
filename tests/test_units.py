"""One set of units in every table and CSV of the attack command (lightning_seg.evaluation.units)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from lightning_seg.evaluation import units

OLD_COLUMNS = {"linf", "rms", "eps", "eps_255", "success_rate", "linf_mean", "rms_mean", "success"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """One attack run on a tiny model: two attacks, a defense report and a robustness sweep (stderr captured)."""
    import contextlib
    import io

    from lightning_seg.commands.attack import attack
    from lightning_seg.commands.compose import compose_for
    from lightning_seg.commands.fit import fit
    from lightning_seg.config import compose
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("units") / "runs"
    fit(compose(tiny_overrides(root)))
    overrides = [f"run.output_dir={root}", "attack=[pgd,asma]", "logger=none", "attack.pgd.steps=2",
                 "attack.asma.max_iter=5", "attack_eval.num_images=4", "attack_eval.batch_size=2", "attack_eval.panels=0",
                 "attack_eval.defenses=[jpeg]", "attack_eval.eps_sweep=[2/255]", "attack_eval.sweep_steps=2"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = attack(compose_for("attack", overrides))
    return Path(result["run_dir"]), result, err.getvalue()


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _tables(md: str) -> list[list[str]]:
    """The header cells of every markdown table in ``md``."""
    return [[c.strip() for c in line.strip("|").split("|")] for line, nxt in zip(md.splitlines(), md.splitlines()[1:])
            if line.startswith("|") and nxt.startswith("|---")]


def test_every_csv_names_its_units(run):
    folder, *_ = run
    files = sorted(folder.glob("*.csv"))
    assert {p.name for p in files} == {"per_image.csv", "summary.csv", "defense.csv", "robustness.csv"}
    for path in files:
        columns = set(next(csv.reader(path.open())))
        assert not columns & (OLD_COLUMNS - {"success"}), (path.name, columns & OLD_COLUMNS)
    assert {"l2", "linf_x255", "rms_x255", "success"} <= set(_csv(folder / "per_image.csv")[0])
    assert {"l2_mean", "linf_x255_mean", "rms_x255_mean", "success_pct"} <= set(_csv(folder / "summary.csv")[0])
    assert {"l2", "linf_x255", "success_pct"} <= set(_csv(folder / "defense.csv")[0])
    assert "eps_x255" in _csv(folder / "robustness.csv")[0]


def test_every_markdown_header_says_its_units(run):
    folder, *_ = run
    for name in ("summary.md", "defense.md", "robustness.md"):
        for header in _tables((folder / name).read_text()):
            for cell in header:
                if cell.startswith("L2"):
                    assert cell == units.L2_HEAD, (name, cell)
                if cell.startswith(("Linf", "RMS", "eps")):
                    assert "(x255)" in cell, (name, cell)
                if cell.startswith("success"):
                    assert cell == units.SUCCESS_HEAD, (name, cell)
                if re.search(r"\b(Dice|IoU|pixel acc\.)", cell) and "%" not in cell:
                    assert "[0,1]" in cell, (name, cell)
                if "flips" in cell or "normal->suspect" in cell:
                    assert "(%)" in cell, (name, cell)


def test_per_image_and_summary_values_agree(run):
    folder, result, _ = run
    rows = _csv(folder / "per_image.csv")
    for r in rows:
        assert float(r["rms_x255"]) == pytest.approx(255 * float(r["l2"]) / math.sqrt(3 * 32 * 32), rel=1e-5)
        assert 0 <= float(r["linf_x255"]) <= 255 and r["success"] in ("0", "1")
    pgd = [r for r in rows if r["method"] == "pgd"]
    assert max(float(r["linf_x255"]) for r in pgd) <= 255 * 8 / 255 + 1e-3  # the default PGD budget, 8/255
    table = (folder / "summary.md").read_text()
    head = _tables(table)[0]
    assert head[:8] == ["method", "reference", "L2 ([0,1] units)", "Linf (x255)", "IoU [0,1]", "pixel acc. [0,1]",
                        "success (%)", "RMS (x255)"]
    assert "robust Dice lesion vs GT [0,1]" in head
    for s in _csv(folder / "summary.csv"):
        mine = [r for r in rows if r["method"] == s["method"]]
        def mean(k: str, mine: list[dict[str, str]] = mine) -> float:
            return sum(float(r[k]) for r in mine) / len(mine)

        for k in ("l2", "linf_x255", "rms_x255", "adv_dice_lesion"):
            assert float(s[f"{k}_mean"]) == pytest.approx(mean(k), rel=1e-6, abs=1e-9)
        assert float(s["success_pct"]) == pytest.approx(100 * mean("success"))
        line = next(l for l in table.splitlines() if l.startswith(f"| {s['method']} |"))
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["Linf (x255)"].startswith(f"{mean('linf_x255'):.2f} +- ")
        assert cells["RMS (x255)"] == f"{mean('rms_x255'):.2f}"
        assert cells["success (%)"] == f"{100 * mean('success'):.0f}"
        assert cells["robust Dice lesion vs GT [0,1]"] == f"{mean('adv_dice_lesion'):.3f}"
    assert result["summary"][0]["linf_x255_mean"] == pytest.approx(float(_csv(folder / "summary.csv")[0]["linf_x255_mean"]))


def test_the_defense_and_sweep_tables_use_the_same_units(run):
    folder, result, _ = run
    rows = _csv(folder / "per_image.csv")
    pgd_linf = sum(float(r["linf_x255"]) for r in rows if r["method"] == "pgd") / 4
    pgd_l2 = sum(float(r["l2"]) for r in rows if r["method"] == "pgd") / 4
    base = next(r for r in _csv(folder / "defense.csv") if r["attack"] == "pgd" and r["defense"] == "none")
    # the baseline row scores the main table's images: same perturbation, same units
    assert float(base["linf_x255"]) == pytest.approx(pgd_linf, abs=1e-3)
    assert float(base["l2"]) == pytest.approx(pgd_l2, rel=1e-4)
    assert 0 <= float(base["success_pct"]) <= 100
    assert [p["eps_x255"] for p in result["defense"]["sanity"][0]["sweep"]] == pytest.approx([0.0, 2.0])
    assert "Dice [0,1] @ eps 2/255" in (folder / "defense.md").read_text()
    sweep = _csv(folder / "robustness.csv")
    assert sorted({float(r["eps_x255"]) for r in sweep}) == [0.0, 2.0]


def test_the_attack_command_reports_progress_of_every_phase(run):
    _, _, err = run
    lines = err.splitlines()
    for phase, total, unit in (("attack pgd", 4, "img"), ("attack asma", 4, "img"), ("robustness sweep", 4 * 2, "img")):
        assert f"{phase}: started, {total} {unit}" in lines
        assert any(l.startswith(f"{phase}: {total}/{total} {unit} (100 %)") and "done in" in l for l in lines), phase
    done = [l for l in lines if l.startswith("defense report: ") and "done in" in l]
    m = re.match(r"defense report: (\d+)/(\d+) phase \(100 %\)", done[0])
    assert m and m.group(1) == m.group(2) == str(2 * (1 + 1 + 3) + 2)  # 2 attacks x (none, oblivious, BPDA, SURROGATE, STE) + 2 sanity


def test_units_converters():
    rec = {"success": True, "l2": 0.5, "linf": 4 / 255, "rms": 1 / 255, "iou": 0.25}
    assert units.perturbation_columns(rec) == {"success": 1, "l2": 0.5, "linf_x255": pytest.approx(4.0),
                                               "rms_x255": pytest.approx(1.0), "iou": 0.25}
    assert units.share_columns({"clin_flip@0.6": 0.25, "clin_vcdr_gt": 0.4, "synth_within_tol_share": 0.5}) == {
        "clin_flip_pct@0.6": 25.0, "clin_vcdr_gt": 0.4, "synth_within_tol_pct": 50.0}
    assert units.x255(None) is None and units.pct(0.125) == 12.5


def test_per_image_rows_convert_the_result_once():
    from lightning_seg.attacks import AttackResult
    from lightning_seg.evaluation.table1 import per_image_rows, summarise_method
    from lightning_seg.tasks import get_task

    task = get_task("lesion")
    adv = torch.rand(2, 3, 4, 4)
    res = AttackResult(adv=adv, pred=torch.zeros(2, 4, 4, dtype=torch.long), success=torch.tensor([True, False]),
                       iou=torch.tensor([0.5, 0.25]), pixel_acc=torch.tensor([0.9, 0.8]), l2=torch.tensor([0.3, 0.6]),
                       linf=torch.tensor([0.01, 0.02]), iterations=torch.tensor([3, 4]), forwards=8, backwards=6,
                       targeted=False)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    rows = per_image_rows("pgd", False, [res], res.pred, ["a", "b"], ["a", "b"], labels, torch.ones(2, 1), task)
    assert [r["linf_x255"] for r in rows] == pytest.approx((255 * res.linf).tolist())
    assert [r["rms_x255"] for r in rows] == pytest.approx((255 * res.rms).tolist())
    assert [r["l2"] for r in rows] == pytest.approx(res.l2.tolist()) and [r["success"] for r in rows] == [1, 0]
    s = summarise_method("pgd", False, rows, [res], 1.0)
    assert s["success_pct"] == 50.0 and s["linf_x255_mean"] == pytest.approx(255 * 0.015)
    assert json.loads(json.dumps(s))  # plain values
