"""`attack "attack=[synthesis]"` end to end: rows scored against the deformed labels, drop report, tolerance share."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.evaluation.shift import shift_dice, shift_table

pytestmark = pytest.mark.slow  # a tiny fit + the attack command: about a minute on a loaded 2-core machine


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("synth_cmd") / "runs"
    return root, fit(compose(tiny_overrides(root, **{"trainer.max_epochs": 2})))


def test_attack_command_reports_synthesis_against_deformed_labels(trained):
    root, _ = trained
    overrides = [f"run.output_dir={root}", "attack=[synthesis]", "logger=none", "attack_eval.num_images=4",
                 "attack_eval.batch_size=4", "attack_eval.panels=1", "attack.synthesis.steps=2",
                 "attack.synthesis.bisect_steps=6", "attack.synthesis.dice_drop=0.1"]
    result = attack(compose_for("attack", overrides))
    run = Path(result["run_dir"])
    rows = list(csv.DictReader((run / "per_image.csv").open()))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"synthesis"}
    for r in rows:
        achieved = float(r["synth_dice_clean"]) - float(r["synth_dice_adv"])
        assert float(r["synth_drop_achieved"]) == pytest.approx(achieved)
        assert float(r["synth_drop_requested"]) == pytest.approx(0.1)
        assert (r["synth_within_tol"] == "True") == (abs(achieved - 0.1) <= 0.02 + 1e-9)
        # the row's adversarial Dice is the one against the deformed label (the attack's own Dice; lesion = 1 structure)
        assert float(r["adv_dice_lesion"]) == pytest.approx(float(r["synth_dice_adv"]), abs=1e-5)
        assert r["success"] == str(int(r["synth_within_tol"] == "True"))  # per-image success: a 0/1 flag
    summary = json.loads((run / "results.json").read_text())["summary"][0]
    share = sum(r["synth_within_tol"] == "True" for r in rows) / 4
    assert summary["synth_within_tol_pct"] == pytest.approx(100 * share)
    md = (run / "summary.md").read_text()
    assert "Synthesis (Dice vs the equally deformed label)" in md and "requested drop" in md


def test_shift_dice_clean_level_matches_plain_dice_and_degrades(trained):
    from lightning_seg.metrics.segmentation import per_image_dice
    from lightning_seg.training.checkpoint import load_module
    from lightning_seg.training.trainer import build_datamodule_from

    root, fitted = trained
    module = load_module(fitted["last_checkpoint"])
    dm = build_datamodule_from(compose_for("attack", [f"run.output_dir={root}", "logger=none"]))
    dm.setup()
    ds = dm.dataset("val")
    x = torch.stack([ds[(i, 0)]["image"] for i in range(6)])
    y = torch.stack([ds[(i, 0)]["mask"] for i in range(6)])
    levels = {"clean": {}, "morph 6px": {"max_disp_px": 6.0, "eps_bias": 0.0}}
    rows = shift_dice(module.net, x, y, module.task, levels=levels, seeds=(1, 2))
    with torch.no_grad():
        plain = per_image_dice(module.net(x).argmax(1), y, module.task).double().mean()
    assert rows[0]["dice"] == pytest.approx(float(plain), abs=1e-6) and rows[1]["dice"] != rows[0]["dice"]
    assert shift_dice(module.net, x, y, module.task, levels=levels, seeds=(1, 2)) == rows  # seeded: reproducible
    assert "| morph 6px |" in shift_table({"a": rows, "b": rows})


def test_mean_over_seeds_groups_by_name_with_sample_sd():
    from lightning_seg.evaluation.shift import mean_over_seeds

    row = lambda level, d, cup: {"level": level, "dice_disc": d, "dice_cup": cup, "dice": (d + cup) / 2}  # noqa: E731
    results = {"std:0": [row("clean", 0.9, 0.7), row("bias 0.6", 0.8, 0.6)],
               "std:1": [row("clean", 0.9, 0.9), row("bias 0.6", 0.9, 0.5)],
               "syn": [row("clean", 1.0, 1.0), row("bias 0.6", 1.0, 0.8)]}
    out = mean_over_seeds(results)
    assert list(out) == ["std", "syn"]
    clean, shifted = out["std"]
    assert clean["n"] == 2 and clean["dice_cup"] == pytest.approx(0.8) and clean["dice"] == pytest.approx(0.85)
    assert clean["dice_sd"] == pytest.approx(0.1 / 2 ** 0.5)  # dice 0.8 and 0.9: sample sd
    assert shifted["dice"] == pytest.approx(0.7) and shifted["dice_disc"] == pytest.approx(0.85)
    assert shifted["dice_sd"] == pytest.approx(0.0, abs=1e-12)  # same mean Dice at both seeds
    assert out["syn"][1]["n"] == 1 and out["syn"][1]["dice_sd"] == 0.0
    table = shift_table(out)
    assert "| clean | 0.850 ± 0.071 (0.900 / 0.800) | 1.000 (1.000 / 1.000) |" in table
