"""Defense report and its sanity checks (lightning_seg.evaluation.defense_report) on a tiny trained model, and the
`attack` command's defense section end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lightning_seg.attacks import build_attack
from lightning_seg.config import compose, defense_section
from lightning_seg.defenses import DefendedModel, build_defense
from lightning_seg.evaluation.defense_report import (
    BASELINE,
    OBLIVIOUS,
    WORST,
    attack_strength,
    budget_sweep,
    check_monotone,
    check_transfer,
    check_unbounded,
    defense_report,
    run_attack,
    score_row,
    unbounded_dice,
)
from lightning_seg.evaluation.inference import predict
from lightning_seg.metrics.segmentation import per_image_dice

# A tiny U-Net that actually segments (full-contrast lesions, more epochs): the 1-2 epoch fixtures elsewhere predict a
# constant mask, on which no attack can move Dice and the sanity checks would be vacuous.
TRAINED = {"trainer.max_epochs": 8, "data.num_train": 64, "optim.lr": 0.01, "data.options.contrast": "[1.0,1.0]"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from lightning_seg.commands.attack import _load_split
    from lightning_seg.commands.fit import fit
    from lightning_seg.training.checkpoint import load_module
    from lightning_seg.training.trainer import build_datamodule_from
    from tests.conftest import tiny_overrides

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("defense_eval") / "runs"
    cfg = compose(tiny_overrides(root, **TRAINED))
    result = fit(cfg)
    module = load_module(result["best_checkpoint"])
    dm = build_datamodule_from(cfg)
    dm.setup()
    images, labels, _ = _load_split(dm, "val", 8, torch.device("cpu"))
    labels = module.crop_labels(images, labels)
    yield root, module, images, labels
    torch.set_num_threads(n)


def _row(defense: str, threat: str, targeted: bool, target_iou: float | None = None, dice_gt: float = 0.5) -> dict:
    return {"defense": defense, "attack": "a", "threat_model": threat, "targeted": targeted, "target_iou": target_iou,
            "dice_gt": dice_gt, "check": ""}


# ----------------------------------------------------------------------------- pure checks
def test_check_transfer_flags_adaptive_rows_weaker_than_transfer():
    rows = [_row("fr", OBLIVIOUS, True, target_iou=0.8), _row("fr", "adaptive BPDA", True, target_iou=0.5),
            _row("jpeg", OBLIVIOUS, False, dice_gt=0.3), _row("jpeg", "adaptive BPDA", False, dice_gt=0.2)]
    check_transfer(rows)
    assert rows[1]["check"].startswith("WARN: transfer stronger than white-box")  # targeted: higher target IoU = stronger
    assert rows[3]["check"] == "" and rows[0]["check"] == ""  # untargeted: lower Dice = stronger; adaptive wins here
    rows = [_row("fr", OBLIVIOUS, False, dice_gt=0.2), _row("fr", "adaptive BPDA", False, dice_gt=0.6)]
    assert check_transfer(rows)[1]["check"].startswith("WARN")


def test_check_monotone_and_unbounded():
    assert check_monotone([(0.0, 0.9), (2 / 255, 0.8), (8 / 255, 0.81)]) == []  # within tolerance
    assert "rises" in check_monotone([(8 / 255, 0.7), (0.0, 0.9), (2 / 255, 0.6)])[0]  # order-independent
    assert check_unbounded(0.05) == [] and "0.300" in check_unbounded(0.3)[0]


# ----------------------------------------------------------------------------- on a trained model
def test_unbounded_adaptive_attack_reaches_zero_and_exact_gradient_is_masked(trained):
    _, module, images, labels = trained
    clean = float(per_image_dice(predict(module.net, images, 8), labels, module.task).mean())
    assert clean > 0.8  # the model works, so the checks below are not vacuous
    for name in ("fr", "jpeg", "bit_depth"):
        bpda = DefendedModel(module.net, build_defense(name), gradient="bpda")
        assert check_unbounded(unbounded_dice(bpda, images, labels, module.task, 8)) == [], name
    # the true gradient of a rounding defense is zero a.e.: the same attack fails, i.e. gradient masking, not robustness
    exact = DefendedModel(module.net, build_defense("fr"), gradient="exact")
    assert check_unbounded(unbounded_dice(exact, images, labels, module.task, 8)) != []


def test_dice_falls_with_the_budget_through_the_defense(trained):
    _, module, images, labels = trained
    net = DefendedModel(module.net, build_defense("fr"), gradient="bpda")
    points = budget_sweep(net, images, labels, module.task, [2 / 255, 8 / 255, 32 / 255], steps=10, batch_size=8)
    assert check_monotone(points) == []
    assert points[-1][1] < points[0][1] - 0.1  # and it does fall: the check is not met by a flat curve


def test_transfer_is_not_stronger_than_white_box(trained):
    _, module, images, labels = trained
    attack = build_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=10)
    defense = build_defense("fr")
    defended = DefendedModel(module.net, defense, gradient="bpda")
    clean = predict(module.net, images, 8)
    rows = []
    for threat, source in ((OBLIVIOUS, module.net), ("adaptive BPDA", defended)):
        adv = run_attack(attack, source, images, labels, 8)
        rows.append(score_row("fr", "pgd", threat, attack, adv=adv, images=images, pred=predict(defended, adv, 8), clean_pred=clean,
                              clean_pred_defended=predict(defended, images, 8), labels=labels, reference=labels, task=module.task))
    assert rows[1]["dice_gt"] <= rows[0]["dice_gt"] + 0.02
    assert check_transfer(rows)[1]["check"] == ""
    assert rows[0]["benign_loss_iou"] == pytest.approx(rows[0]["clean_iou"] - rows[0]["clean_iou_defended"], abs=1e-6)


def test_report_rows_and_threat_models(trained):
    _, module, images, labels = trained
    targets = labels.roll(1, 0)
    attacks = {"asma": build_attack("asma", max_iter=10), "pgd": build_attack("pgd", steps=3)}
    defenses = {"bit_depth": defense_section("bit_depth"), "random_noise": defense_section("random_noise")}
    report = defense_report(module.net, defenses, attacks, images, labels, targets, module.task, batch_size=8)
    rows = report["rows"]
    got = [(r["attack"], r["defense"], r["threat_model"]) for r in rows]
    # bit depth: BPDA and the cubic surrogate (its straight-through gradient IS the BPDA identity: counted once);
    # random noise (differentiable, random): BPDA and the exact gradient, each also with EOT; then the worst case
    assert got[:5] == [("asma", "none", BASELINE), ("asma", "bit_depth", OBLIVIOUS), ("asma", "bit_depth", "adaptive BPDA"),
                       ("asma", "bit_depth", "adaptive SURROGATE"), ("asma", "bit_depth", WORST)]
    assert [t for a, d, t in got if a == "pgd" and d == "random_noise"] == [
        OBLIVIOUS, "adaptive BPDA", "adaptive EXACT", "adaptive BPDA + EOT (n=8)", "adaptive EXACT + EOT (n=8)", WORST]
    assert len(rows) == 2 * (1 + 4 + 6)
    for defense in ("bit_depth", "random_noise"):  # the worst case is the strongest mode, and names it
        for attack in attacks:
            modes = [r for r in rows if r["defense"] == defense and r["attack"] == attack
                     and r["threat_model"].startswith("adaptive") and r["threat_model"] != WORST]
            worst = next(r for r in rows if r["defense"] == defense and r["attack"] == attack and r["threat_model"] == WORST)
            assert attack_strength(worst) == max(attack_strength(r) for r in modes)
            assert worst["worst_of"] in {r["threat_model"] for r in modes} and "worst case above" not in worst["check"]
    base = rows[0]
    assert base["clean_dice"] == base["clean_dice_defended"] and base["benign_loss_iou"] == 0
    assert all(r["target_iou"] is not None for r in rows if r["attack"] == "asma")
    assert all(r["target_iou"] is None for r in rows if r["attack"] == "pgd")
    # the baseline row is the attack on the bare model: its Dice equals that of a direct run
    direct = attacks["asma"](module.net, images, targets)
    assert base["dice_gt"] == pytest.approx(float(per_image_dice(direct.pred, labels, module.task).mean()), abs=1e-6)
    assert [s["defense"] for s in report["sanity"]] == ["none", "bit_depth", "random_noise"]
    for s in report["sanity"]:  # effort and black-box checks ran at the check budget
        assert {"pgd_dice", "pgd_2x_dice", "square_dice"} <= set(s) and s["check_eps_x255"] == pytest.approx(8.0)


# ----------------------------------------------------------------------------- the attack command
def test_attack_command_writes_defense_report(trained):
    from lightning_seg.commands.attack import attack
    from lightning_seg.commands.compose import compose_for

    root, *_ = trained
    overrides = [f"run.output_dir={root}", "attack=[asma,pgd]", "attack_eval.defenses=[fr,jpeg]", "logger=none",
                 "attack.asma.max_iter=10", "attack.pgd.steps=3", "attack_eval.num_images=4", "attack_eval.batch_size=4",
                 "attack_eval.panels=0"]
    result = attack(compose_for("attack", overrides))
    run = Path(result["run_dir"])
    rows = list(csv.DictReader((run / "defense.csv").open()))
    # per attack: baseline; per defense (FR, JPEG: both round): oblivious, BPDA, SURROGATE, STE, worst case
    assert len(rows) == 2 * (1 + 2 * 5)
    assert {r["threat_model"] for r in rows} == {BASELINE, OBLIVIOUS, "adaptive BPDA", "adaptive SURROGATE",
                                                 "adaptive STE", WORST}
    md = (run / "defense.md").read_text()
    assert "| fr | asma | adaptive BPDA |" in md and f"| fr | asma | **{WORST}** (adaptive " in md
    assert "Sanity checks" in md and "Square (200 queries)" in md
    assert "Defenses (threat model per row" in (run / "summary.md").read_text()
    saved = json.loads((run / "results.json").read_text())
    summary = {s["method"]: s for s in saved["summary"]}
    base = next(r for r in saved["defense"]["rows"] if r["attack"] == "pgd" and r["defense"] == "none")
    # the oblivious / baseline images are the main table's: same robust Dice
    assert base["dice_gt"] == pytest.approx(summary["pgd"]["adv_dice_lesion_mean"], abs=1e-6)


def test_defenses_without_attacks_fail_clearly(trained):
    from lightning_seg.commands.attack import attack

    root, *_ = trained
    cfg = compose([f"run.output_dir={root}", "attack_eval.defenses=[fr]", "logger=none"])
    cfg.attack = {}
    with pytest.raises(ValueError, match=r"attack=\[asma,pgd\]"):
        attack(cfg)


# ----------------------------------------------------------------------------- gradient modes
def test_straight_through_mode_and_applicable_modes():
    from lightning_seg.defenses import applicable_modes, defense_with_gradient

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    w = torch.randn(2, 3, 16, 16, generator=g)

    def grad(defense, mode):
        xg = x.clone().requires_grad_(True)
        y = defense_with_gradient(defense, xg, mode)
        (gx,) = torch.autograd.grad((y * w).sum(), xg)
        return y.detach(), gx

    for name in ("fr", "jpeg", "bit_depth"):
        d = build_defense(name)
        y_ste, g_ste = grad(d, "ste")
        assert torch.equal(y_ste, d(x)), name  # the forward value is the real transform's
        assert g_ste.abs().sum() > 0
    # bit depth: straight-through rounding IS the identity backward (counted once); JPEG: chroma subsampling differs
    assert torch.allclose(grad(build_defense("bit_depth"), "ste")[1], grad(build_defense("bit_depth"), "bpda")[1])
    assert not torch.allclose(grad(build_defense("jpeg"), "ste")[1], grad(build_defense("jpeg"), "bpda")[1], atol=1e-3)
    assert applicable_modes(build_defense("bit_depth")) == ["bpda", "surrogate"]
    assert applicable_modes(build_defense("jpeg")) == ["bpda", "surrogate", "ste"]
    assert applicable_modes(build_defense("median")) == ["bpda", "exact"]
