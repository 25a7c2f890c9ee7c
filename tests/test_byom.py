"""Bring your own model, end to end (issue 14, criterion 6): ``fit model.name=monai.UNet`` for one epoch, then
``attack`` with the defense report on its checkpoint, and the Python API's :func:`evaluate_model` on the same checkpoint
giving the command's numbers. (Weights saved by plain PyTorch code, ``run.weights``: tests/test_foreign_weights.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from lightning_seg.datamodules import build_datamodule

from lightning_seg.cli import main
from lightning_seg.evaluation.api import evaluate_model
from lightning_seg.models import ExternalModel
from lightning_seg.training.checkpoint import load_module

pytest.importorskip("monai", reason="MONAI is part of the dev install (pip install -e '.[dev]')")

DATA = {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 4}
ATTACK = ["attack=[asma]", "attack.asma.max_iter=5", "attack_eval.defenses=[jpeg]", "attack_eval.num_images=4",
          "attack_eval.batch_size=4", "attack_eval.panels=1"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_fit_monai_unet_then_attack_and_defense_report(tmp_path: Path, single_thread: None) -> None:
    out = tmp_path / "runs"
    data = [f"data.{k}={v}" for k, v in DATA.items()]
    common = ["logger=none", f"run.output_dir={out}", "trainer.enable_progress_bar=false"]
    assert main(["fit", "model.name=monai.UNet", "model.params.channels=[8,16,32]", "model.params.strides=[2,2]",
                 "trainer.max_epochs=1", "data.batch_size=8", *data, *common, "run.name=monai"]) == 0
    fit = json.loads((out / "fit" / "monai" / "results.json").read_text())
    assert fit["epochs"] == 1 and Path(fit["best_checkpoint"]).is_file()
    module = load_module(fit["best_checkpoint"])
    assert isinstance(module.net, ExternalModel) and module.net.label == "monai.UNet"

    # the checkpoint's own data (stored in it) unless overridden: only the attack settings are given
    assert main(["attack", f"run.ckpt={out / 'fit' / 'monai'}", *ATTACK, *common, "run.name=attack"]) == 0
    run = out / "attack" / "attack"
    for name in ("per_image.csv", "summary.csv", "summary.md", "results.json", "defense.csv", "defense.md"):
        assert (run / name).is_file(), name
    summary = _rows(run / "summary.csv")
    assert [s["method"] for s in summary] == ["asma"] and len(_rows(run / "per_image.csv")) == 4
    defense = _rows(run / "defense.csv")
    assert [(r["defense"], r["attack"], r["threat_model"]) for r in defense] == [
        ("none", "asma", "none (no defense)"), ("jpeg", "asma", "oblivious"), ("jpeg", "asma", "adaptive BPDA"),
        ("jpeg", "asma", "adaptive SURROGATE"), ("jpeg", "asma", "adaptive STE"), ("jpeg", "asma", "adaptive worst case")]
    assert all(int(r["n"]) == 4 for r in defense)
    assert "| jpeg | asma | adaptive BPDA |" in (run / "defense.md").read_text()
    assert "Defenses" in (run / "summary.md").read_text()
    result = json.loads((run / "results.json").read_text())
    assert Path(result["checkpoint"]).name == "best.ckpt" and result["num_images"] == 4

    # the Python API on the same checkpoint and images: the command's numbers
    report = evaluate_model(module, build_datamodule("isic", **DATA), attacks={"asma": {"max_iter": 5}},
                            defenses=["jpeg"], num_images=4, batch_size=4)
    assert [s["method"] for s in report.summary] == ["asma"]
    ours = report.summary[0]
    for key in ("iou_mean", "iterations_mean", "clean_dice_lesion_mean", "adv_dice_lesion_mean"):
        assert ours[key] == pytest.approx(float(summary[0][key]), abs=1e-6), key
    assert [(r["defense"], r["threat_model"]) for r in report.defense["rows"]] == [
        (r["defense"], r["threat_model"]) for r in defense]
    for mine, theirs in zip(report.defense["rows"], defense):
        assert mine["efficiency_iou"] == pytest.approx(float(theirs["efficiency_iou"]), abs=1e-6)
    written = report.write(tmp_path / "api")
    assert {p.name for p in written.iterdir()} >= {"per_image.csv", "summary.md", "defense.md", "results.json"}
