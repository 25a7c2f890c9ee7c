"""Minimum budget per image: the bisection finds the closed-form minimal Linf budget of the per-pixel linear model."""

from __future__ import annotations

import csv
import inspect
import json
import math

import pytest
import torch

from lightning_seg.config import MinBudgetConfig, compose
from lightning_seg.evaluation.min_budget import min_budget, min_budget_report, min_budget_table
from tests.helpers.toy_models import PixelLinear

W = torch.tensor([1.0, -0.8, 0.6])

pytestmark = pytest.mark.usefixtures("single_thread")


def make(batch: int, seed: int = 0) -> tuple[PixelLinear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(batch, 3, 4, 4, generator=g)  # interior: the box never binds at these budgets
    model = PixelLinear(W, b=-float(W.sum()) * 0.5, symmetric=False)
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, x, labels


def dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    p, r = pred == 1, ref == 1
    denom = int(p.sum() + r.sum())
    return 1.0 if denom == 0 else 2 * int((p & r).sum()) / denom


def closed_form(model: PixelLinear, x: torch.Tensor, labels: torch.Tensor, level: float) -> list[float]:
    """Per image the smallest Linf budget with Dice < level: pixel p flips iff eps > |d_p| / ||w||_1 (independent
    pixels), and flipping more pixels only lowers Dice, so the answer is the smallest flip threshold whose flips
    (all pixels at or below it) reach the level."""
    out = []
    with torch.no_grad():
        thr = model.margin(x).abs() / model.w.norm(p=1)
    for i in range(x.shape[0]):
        if dice(labels[i], labels[i]) < level:
            out.append(0.0)
            continue
        best = math.inf
        for t in sorted(thr[i].flatten().tolist()):
            flipped = torch.where(thr[i] <= t, 1 - labels[i], labels[i])
            if dice(flipped, labels[i]) < level:
                best = t
                break
        out.append(best)
    return out


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
@pytest.mark.parametrize("level", [0.5, 0.9])
def test_bisection_finds_the_closed_form_minimum(attack, level):
    model, x, y = make(5)
    opt = closed_form(model, x, y, level)
    assert all(0 < o < 0.25 for o in opt)
    res = min_budget(model, x, y, level=level, eps_max=0.25, attack=attack, steps=20, bisection_steps=8)
    tol = 0.25 / 2 ** 8
    assert res.resolution == pytest.approx(tol)
    for i, o in enumerate(opt):
        e, lo = float(res.eps[i]), float(res.lower[i])
        assert o <= e + 1e-6 and e <= o + tol + 1e-6, (i, e, o)  # certified upper bound, within one bracket
        assert lo <= o + 1e-6 and e - lo <= tol + 1e-6
        assert res.dice[i] < level
    # every image bisected: 1 probe at eps_max + 8 halvings, steps + 1 forwards + 1 result forward per probe (pgd)
    assert res.backwards == 5 * 9 * 20
    assert res.median() == pytest.approx(sorted(res.eps.tolist())[2])  # 5 images: the middle one


def test_clean_failures_unbroken_images_and_the_curve():
    model, x, y = make(4)
    y = y.clone()
    y[0] = 1 - y[0]  # image 0: the clean prediction is already wrong everywhere -> budget 0
    opt = closed_form(model, x, y, 0.5)
    eps_max = sorted(opt[1:])[1] * 1.2  # between: images above it cannot be broken within eps_max
    res = min_budget(model, x, y, level=0.5, eps_max=eps_max, attack="pgd", steps=20, bisection_steps=6)
    assert float(res.eps[0]) == 0 and float(res.clean_dice[0]) < 0.5
    for i in range(1, 4):
        if opt[i] < eps_max * 0.99:
            assert math.isfinite(float(res.eps[i])) and float(res.eps[i]) >= opt[i] - 1e-6
        elif opt[i] > eps_max:
            assert math.isinf(float(res.eps[i])) and float(res.lower[i]) == pytest.approx(eps_max)
    xs, ys = res.curve()
    assert xs[0] == 0 and ys[0] == 25.0  # the clean failure counts at eps = 0
    assert xs[-1] == pytest.approx(eps_max * 255) and ys == sorted(ys)
    assert ys[-1] == pytest.approx(100.0 * float(torch.isfinite(res.eps).float().mean()))
    s = res.summary()
    assert s["broken_clean_pct"] == 25.0 and s["n"] == 4


def test_median_above_eps_max_and_validation():
    model, x, y = make(3)
    res = min_budget(model, x, y, eps_max=1e-4, attack="pgd", steps=5, bisection_steps=2)
    assert torch.isinf(res.eps).all() and math.isinf(res.median())
    assert res.summary()["median_eps_x255"] is None
    assert "> 0.0255" in min_budget_table(res)
    with pytest.raises(ValueError, match="attack must be one of"):
        min_budget(model, x, y, attack="fgsm")
    with pytest.raises(ValueError, match="level"):
        min_budget(model, x, y, level=0.0)


def test_batches_give_the_same_budgets():
    model, x, y = make(5)
    kw = {"level": 0.5, "eps_max": 0.25, "attack": "pgd", "steps": 20, "bisection_steps": 5}
    whole = min_budget(model, x, y, **kw)
    parts = min_budget(model, x, y, batch_size=2, **kw)
    torch.testing.assert_close(whole.eps, parts.eps)


def test_padding_is_neither_counted_nor_perturbed(tmp_path):
    """valid = the two left columns: the budgets are those of the left half alone (independent pixels)."""
    model, x, y = make(3)
    valid = torch.zeros(3, 4, 4, dtype=torch.bool)
    valid[..., :2] = True
    opt = closed_form(model, x[..., :2], y[..., :2], 0.5)
    cfg = {"eps_max": 0.25, "attack": "apgd", "steps": 20, "bisection_steps": 6}
    min_budget_report(model, x, y, None, valid, cfg, tmp_path)
    rows = list(csv.DictReader((tmp_path / "min_budget.csv").read_text().splitlines()))
    for o, r in zip(opt, rows):
        assert o * 255 - 1e-4 <= float(r["min_eps_x255"]) <= (o + 0.25 / 64) * 255 + 1e-4


def test_report_files_and_config_defaults(tmp_path):
    model, x, y = make(4)
    cfg = MinBudgetConfig(enabled=True, eps_max=0.25, attack="pgd", steps=10, bisection_steps=4)
    out = min_budget_report(model, x, y, None, None, cfg, tmp_path, name="linear", names=[f"im{i}" for i in range(4)])
    assert out["min_budget_n"] == 4 and out["min_budget_median_eps_x255"] > 0
    rows = list(csv.DictReader((tmp_path / "min_budget.csv").read_text().splitlines()))
    assert [r["image"] for r in rows] == ["im0", "im1", "im2", "im3"]
    assert {"min_eps_x255", "above_eps_max", "lower_x255", "clean_dice", "dice_at_min_eps"} <= set(rows[0])
    assert json.loads((tmp_path / "min_budget.json").read_text())["n"] == 4
    assert "median min eps (x255)" in (tmp_path / "min_budget.md").read_text()
    assert (tmp_path / "min_budget.png").stat().st_size > 1000
    # the composed config section feeds the hook as it is, and its defaults are the function's
    section = compose(["logger=none"]).attack_eval.min_budget
    assert section.enabled is False and section.attack == "apgd"
    d = {p: v.default for p, v in inspect.signature(min_budget).parameters.items()}
    assert all(d[k] == section[k] for k in ("level", "eps_max", "attack", "steps", "restarts", "bisection_steps"))
    dict_out = min_budget_report(model, x, y, None, None, {"eps_max": 0.25, "attack": "pgd", "steps": 10,
                                                            "bisection_steps": 4}, tmp_path / "d")
    assert dict_out["min_budget_median_eps_x255"] == pytest.approx(out["min_budget_median_eps_x255"])
