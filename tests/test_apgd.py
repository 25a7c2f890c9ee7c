"""APGD (Croce & Hein 2020) and SEA (Croce, Singh & Hein 2024): the step-size schedule, the segmentation losses, known
optima on the per-pixel linear model, per-image bookkeeping, the ensemble's worst case, the attack contract, and the
strength on a quickly trained U-Net against PGD at equal cost."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_seg.attacks import apgd, build_attack, build_named_attack, default_alpha, pgd, sea
from lightning_seg.attacks.apgd import checkpoints, halving
from lightning_seg.attacks.sea import radius_schedule
from lightning_seg.attacks.seg_losses import LOSSES, class_weight_map, js_divergence, segmentation_objective
from lightning_seg.attacks.synthesis import hard_dice
from tests.helpers.toy_models import PixelLinear, SmallUNet, minimal_norms, synthetic_disks, train_quick
from tests.test_attacks_contract import Cropping, data, state, tiny

W = torch.tensor([1.0, -0.8, 0.6])
SMALL = ("ce", "masked_ce", "balanced_ce", "js")  # a cheap subset where running every loss adds nothing


@pytest.fixture(autouse=True)
def _threads(single_thread):
    torch.manual_seed(0)


def linear(batch: int = 3, size: int = 4, seed: int = 0) -> tuple[PixelLinear, torch.Tensor, torch.Tensor]:
    """The per-pixel linear model, images inside the box for the budgets used, and the clean predictions."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(batch, 3, size, size, generator=g)
    model = PixelLinear(W, b=-float(W.sum()) * 0.5)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def linf_distance(model: PixelLinear, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel minimal Linf change that flips the pixel: |d_p| / ||w||_1."""
    with torch.no_grad():
        return model.margin(x).abs() / model.w.abs().sum()


def between(dist: torch.Tensor, k: int) -> float:
    """A budget strictly between the k-th and (k+1)-th smallest pixel distances (no pixel on the boundary)."""
    s = dist.flatten().sort().values
    return float((s[k - 1] + s[k]) / 2)


# ----------------------------------------------------------------------------------------------- the step schedule


def test_checkpoints_follow_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (period shrinks by .03 down to .06)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(300)[:3] == [0, 66, 123]
    for n in (1, 2, 5, 10):
        w = checkpoints(n)
        assert w == sorted(set(w)) and w[0] == 0 and w[-1] <= n


def test_halving_conditions_per_image():
    # image: 0 raised f often + new best -> keep; 1 rarely raised f -> halve (condition 1);
    # 2 raised f often but f_max unchanged and not halved last time -> halve (condition 2);
    # 3 same as 2 but halved at the previous checkpoint -> keep
    increases = torch.tensor([9, 3, 9, 9])
    halved_last = torch.tensor([False, False, False, True])
    fmax = torch.tensor([2.0, 2.0, 1.0, 1.0])
    fmax_last = torch.tensor([1.0, 1.0, 1.0, 1.0])
    half = halving(increases, 10, halved_last, fmax, fmax_last, rho=0.75)
    assert half.tolist() == [False, True, True, False]
    # the condition-1 threshold is strict: 7.5 increases needed out of 10
    assert halving(torch.tensor([7, 8]), 10, torch.tensor([True, True]), fmax[:2], fmax_last[:2], 0.75).tolist() == [
        True, False]


class Flat(nn.Module):
    """Logits independent of the input: the objective never rises, so every checkpoint halves the step."""

    def forward(self, x):
        z = torch.stack([x[:, 0] * 0, x[:, 0] * 0 + 1], 1)
        return z


def test_step_halves_at_every_checkpoint_on_a_flat_objective():
    x = torch.rand(2, 3, 4, 4)
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    eps, n = 0.1, 100
    res = apgd(Flat(), x, y, eps=eps, steps=n, random_start=False)
    inner = [w for w in checkpoints(n) if 0 < w < n]
    assert torch.allclose(res.extras["step_size"], torch.full((2,), 2 * eps / 2 ** len(inner)))
    assert res.backwards == 2 * n and res.forwards == 2 * (n + 2)  # N backwards, N+1 forwards + the result's


# ----------------------------------------------------------------------------------------------------- the losses


def test_js_closed_form_matches_the_definition():
    z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    p = z.softmax(1)
    e = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    m = (p + e) / 2

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(1)

    assert torch.allclose(js_divergence(z, y), 0.5 * kl(p, m) + 0.5 * kl(e, m), atol=1e-6)
    assert (js_divergence(z, y) <= math.log(2) + 1e-6).all()


def test_masked_and_balanced_ce():
    z = torch.tensor([[[[3.0, 2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 2.0]]]])  # [1,2,1,4]: argmax 0, 0, 0, 1
    y = torch.tensor([[[0, 0, 0, 0]]])  # pixels 0-2 correct, pixel 3 wrong
    m = torch.ones_like(y, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")[0, 0]
    assert torch.allclose(segmentation_objective("masked_ce", z, y, m), ce[:3].sum() / 4)
    assert torch.allclose(segmentation_objective("ce", z, y, m), ce.mean())
    # balanced: mean over the classes present of each class's masked CE (per-image inverse frequencies)
    y2 = torch.tensor([[[0, 0, 0, 1]]])  # now pixel 3 is correct too, and alone in class 1
    ce2 = torch.nn.functional.cross_entropy(z, y2, reduction="none")[0, 0]
    assert torch.allclose(segmentation_objective("balanced_ce", z, y2, m), (ce2[:3].mean() + ce2[3]) / 2)
    w = class_weight_map(y2, m, 2)
    assert torch.allclose(w, torch.tensor([[[1 / 3, 1 / 3, 1 / 3, 1.0]]]))
    given = class_weight_map(y2, m, 2, (1.0, 4.0))
    assert torch.equal(given, torch.tensor([[[1.0, 1.0, 1.0, 4.0]]]))
    with pytest.raises(ValueError, match="one weight per class"):
        class_weight_map(y2, m, 2, (1.0, 2.0, 3.0))
    # targeted: the negated loss towards the target (the masked losses then keep the pixels NOT yet at the target)
    for name in ("ce", "js", "dice", "margin"):
        assert torch.allclose(segmentation_objective(name, z, y2, m, targeted=True),
                              -segmentation_objective(name, z, y2, m))
    assert torch.allclose(segmentation_objective("masked_ce", z, y, m, targeted=True), -ce[3:].sum() / 4)


# -------------------------------------------------------------------------------- known optima on the linear model


@pytest.mark.parametrize("loss", LOSSES)
def test_linf_flips_exactly_the_pixels_flippable_at_eps(loss):
    model, x, pred = linear()
    dist = linf_distance(model, x)
    eps = between(dist, 24)  # 24 of the 48 pixels can flip within eps, the others cannot
    res = apgd(model, x, pred, eps=eps, steps=40, loss=loss, random_start=False)
    assert torch.equal(res.pred != pred, dist < eps)
    assert (res.linf <= eps + 1e-6).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_single_pixel_threshold(norm):
    """1x1 images: the minimal flip is known exactly; APGD flips just above it and cannot below it."""
    model, x, pred = linear(batch=3, size=1, seed=3)
    l2, linf = minimal_norms(model, x, torch.ones_like(pred))
    opt = l2 if norm == "l2" else linf
    for i in range(3):
        xi, yi = x[i:i + 1], pred[i:i + 1]
        ok = apgd(model, xi, yi, eps=1.02 * float(opt[i]), norm=norm, steps=30, loss="masked_ce", random_start=False)
        no = apgd(model, xi, yi, eps=0.98 * float(opt[i]), norm=norm, steps=30, loss="masked_ce", random_start=False)
        assert ok.success.all() and not no.success.any()


def test_l2_masked_losses_reach_the_optimum_where_ce_does_not():
    """L2 budget shared by all pixels: 1.25x the minimal norm flipping every pixel. The masked losses stop pushing
    flipped pixels and flip all; plain CE keeps spending the budget on them (SEA's argument for masking). The three
    images hold the same pixels in different orders, so they share the optimum and one budget."""
    model, x, _ = linear(batch=1)
    order = [torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    x = torch.stack([x[0].flatten(1)[:, o].view(3, 4, 4) for o in order])
    with torch.no_grad():
        pred = model(x).argmax(1)
    opt, _ = minimal_norms(model, x, torch.ones_like(pred))
    assert torch.allclose(opt, opt[:1].expand(3))
    kw = {"eps": 1.25 * float(opt[0]), "norm": "l2", "steps": 100, "random_start": False}
    for loss in ("masked_ce", "balanced_ce"):
        r = apgd(model, x, pred, loss=loss, **kw)
        assert (r.pred != pred).all() and (r.l2 <= kw["eps"] * (1 + 1e-5)).all()
    ce = apgd(model, x, pred, loss="ce", **kw)
    assert ((ce.pred != pred).flatten(1).sum(1) < 16).all()
    with torch.no_grad():  # below every single pixel's minimal L2 flip: nothing can flip
        d_min = float(model.margin(x).abs().min() / W.norm())
    res = apgd(model, x, pred, eps=0.95 * d_min, norm="l2", steps=30, loss="masked_ce", random_start=False)
    assert torch.equal(res.pred, pred)


@pytest.mark.parametrize("loss", SMALL + ("dice", "margin"))
def test_targeted_reaches_the_target(loss):
    model, x, pred = linear()
    target = torch.ones_like(pred)
    dist = linf_distance(model, x) * (pred != target)  # pixels already at the target need nothing
    eps = float(dist.max()) * 1.05
    res = apgd(model, x, target, eps=eps, steps=40, loss=loss, targeted=True, random_start=False)
    assert res.targeted and res.success.all() and (res.pred == target).all()
    part = apgd(model, x, target, eps=between(dist[dist > 0], 10), steps=40, loss=loss, targeted=True,
                random_start=False)
    assert torch.equal(part.pred == target, dist < between(dist[dist > 0], 10))


# ------------------------------------------------------------------------------------------ per-image bookkeeping


class Recorder(nn.Module):
    """Wraps a model and records the Dice of every forward (to check which iterate the attack returns)."""

    def __init__(self, net: nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.net, self.labels, self.dice = net, labels, []

    def forward(self, x):
        z = self.net(x)
        self.dice.append(hard_dice(z.detach(), self.labels))
        return z


def test_the_best_iterate_is_returned():
    net = tiny().eval()
    x, y = data(b=3)
    rec = Recorder(net, y)
    res = apgd(rec, x, y, eps=0.05, steps=15, loss="masked_ce", generator=torch.Generator().manual_seed(0))
    seen = torch.stack(rec.dice[:-1])  # every evaluated iterate; the last forward is the result's own
    assert torch.allclose(res.extras["dice"], seen.min(0).values)
    assert torch.allclose(rec.dice[-1], res.extras["dice"])  # the returned images give that Dice
    assert (res.extras["dice"] <= seen[-1]).all()  # never worse than the last iterate
    assert (seen.min(0).values < seen[0]).all()  # and the attack did move


def test_restarts_are_never_worse():
    net = tiny().eval()
    x, y = data(b=3)
    kw = {"eps": 0.03, "steps": 8, "loss": "ce"}
    one = apgd(net, x, y, restarts=1, generator=torch.Generator().manual_seed(4), **kw)
    three = apgd(net, x, y, restarts=3, generator=torch.Generator().manual_seed(4), **kw)
    assert (three.extras["dice"] <= one.extras["dice"]).all()
    assert three.backwards == 3 * one.backwards and (three.iterations == 24).all()


@pytest.mark.parametrize("fn", [apgd, sea])
def test_images_are_independent(fn):
    """Each image of a mixed batch gets exactly its single-image result (per-image steps, checkpoints, class weights,
    output iterate and winner)."""
    net = tiny().eval()
    x, y = data(b=3)
    kw = {"eps": 0.03, "steps": 10, "random_start": False}
    if fn is apgd:
        kw["loss"] = "balanced_ce"
    full = fn(net, x, y, **kw)
    for i in range(3):
        one = fn(net, x[i:i + 1], y[i:i + 1], **kw)
        assert torch.allclose(full.adv[i], one.adv[0], atol=1e-6, rtol=0)
        assert torch.allclose(full.extras["dice"][i], one.extras["dice"][0])
        if fn is sea:
            assert full.extras["winner"][i] == one.extras["winner"][0]


# ---------------------------------------------------------------------------------------------------------- SEA


def test_radius_schedule():
    eps = 4 / 255
    assert radius_schedule(eps, 300) == [(2 * eps, 90), (1.5 * eps, 90), (eps, 120)]
    assert sum(n for _, n in radius_schedule(eps, 7)) == 7


def test_sea_is_the_worst_case_over_its_members():
    net = tiny().eval()
    x, y = data(b=4)
    kw = {"eps": 0.03, "steps": 12, "random_start": False, "early_stop": None}  # every member on every image
    res = sea(net, x, y, **kw)
    members = res.extras["members"]
    assert members == ("balanced_ce", "masked_ce", "js")
    alone = [sea(net, x, y, losses=(m,), **kw) for m in members]
    for j, r in enumerate(alone):  # each member alone gives the ensemble's record of it
        assert torch.allclose(res.extras["member_dice"][:, j], r.extras["dice"])
        assert (res.extras["dice"] <= r.extras["dice"]).all()
    assert torch.allclose(res.extras["dice"], res.extras["member_dice"].min(1).values)
    assert torch.equal(res.extras["winner"], res.extras["member_dice"].argmin(1))  # ties: the first member
    assert sum(res.extras["winner_counts"].values()) == 4
    assert res.extras["winner_counts"] == {m: int((res.extras["winner"] == j).sum()) for j, m in enumerate(members)}
    assert (res.linf <= 0.03 + 1e-6).all()  # the larger radii are stages, never outputs
    assert res.backwards == 4 * 3 * 12 and (res.iterations == 36).all()


def test_sea_targeted_on_the_linear_model():
    model, x, pred = linear()
    target = torch.ones_like(pred)
    eps = float((linf_distance(model, x) * (pred != target)).max()) * 1.05
    res = sea(model, x, target, eps=eps, steps=20, targeted=True, random_start=False)
    assert res.success.all() and (res.pred == target).all()


# -------------------------------------------------------------------------------------- contract and registration


def run(name: str, model, x, y, **kw):
    fn = apgd if name == "apgd" else sea
    return fn(model, x, y, eps=0.03, steps=4, generator=torch.Generator().manual_seed(3), **kw)


@pytest.mark.parametrize("name", ["apgd", "sea"])
def test_contract(name):
    model = tiny()
    model.train()
    model.body[4].weight.requires_grad_(False)
    model.body[1].eval()
    before = state(model)
    x, y = data()
    x0, y0 = x.clone(), y.clone()
    res = run(name, model, x, y)
    assert model.training and not model.body[1].training and model.body[5].training
    assert [p.requires_grad for p in model.parameters()] == [p is not model.body[4].weight for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in state(model).items())
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert res.adv.min() >= 0 and res.adv.max() <= 1 and not res.adv.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(res.adv).argmax(1), res.pred)
    # identical images -> identical results (random starts off: they are drawn per image)
    one = run(name, model, x[:1], y[:1], random_start=False)
    many = run(name, model, x[:1].expand(3, -1, -1, -1).contiguous(), y[:1].expand(3, -1, -1).contiguous(),
               random_start=False)
    assert all(torch.allclose(many.adv[i], one.adv[0], atol=1e-6, rtol=0) for i in range(3))
    # seeds
    assert torch.equal(run(name, model, x, y).adv, res.adv)
    assert not torch.equal(sea(model, x, y, eps=0.03, steps=4, generator=torch.Generator().manual_seed(4)).adv
                           if name == "sea" else
                           apgd(model, x, y, eps=0.03, steps=4, generator=torch.Generator().manual_seed(4)).adv, res.adv)


@pytest.mark.parametrize("name", ["apgd", "sea"])
def test_masks_heads_and_cropping(name):
    model = tiny().eval()
    x, y = data()
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[:, 2:9, 3:10] = True
    y2 = y.clone()
    y2[~mask] = 255
    a, b = run(name, model, x, y, mask=mask), run(name, model, x, y2, mask=mask)
    assert torch.equal(a.adv, b.adv) and torch.equal(a.iou, b.iou)
    pm = torch.zeros(1, 1, 12, 12)
    pm[..., 4:8, 4:8] = 1
    res = run(name, model, x, y, perturbation_mask=pm)
    diff = (res.adv - x).abs()
    assert diff[..., pm[0, 0] == 0].max() == 0 and diff[..., pm[0, 0] == 1].max() > 0
    one, two = PixelLinear(W, -0.4, heads=1), PixelLinear(W, -0.4, symmetric=False)
    xs, ys = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)), torch.ones(2, 6, 6, dtype=torch.long)
    assert torch.equal(run(name, one, xs, ys).adv, run(name, two, xs, ys).adv)
    crop = run(name, Cropping(), torch.rand(2, 3, 12, 12), torch.ones(2, 8, 8, dtype=torch.long))
    assert crop.pred.shape == (2, 8, 8)


def test_registry_config_and_sweep():
    a = build_attack("apgd", eps="8/255", loss="balanced_ce")
    assert a.config.eps == pytest.approx(8 / 255) and not a.targeted
    s = build_attack("sea")
    assert s.config.steps == 300 and tuple(s.config.losses) == ("balanced_ce", "masked_ce", "js")
    assert build_attack("sea", targeted=True).targeted
    with pytest.raises(ValueError, match="loss"):
        build_attack("apgd", loss="cross_entropy")
    with pytest.raises(ValueError, match="class_weights"):
        build_attack("sea", class_weights=0.5)
    # class weights from the training masks, as a config list (fractions allowed)
    net = tiny().eval()
    x, y = data()
    weighted = build_attack("apgd", loss="balanced_ce", class_weights=[1.0, "3/2"], steps=2)(net, x, y)
    assert weighted.iterations.tolist() == [2, 2]
    # the robustness sweep builds its attacks with a PGD step and budget: both must accept them
    for name in ("apgd", "sea"):
        atk = build_named_attack(name, None, eps=4 / 255, alpha=default_alpha(4 / 255, 5), steps=5, targeted=False)
        r = atk(net, x, y)
        assert r.iterations.shape == (2,)


# --------------------------------------------------------------------------------------------- trained U-Net


@pytest.mark.slow
def test_apgd_beats_pgd_at_equal_cost_on_a_trained_unet():
    """A quickly trained U-Net, 8 images, Linf 16/255: APGD with N steps (N backwards, N + 2 forwards) against PGD with
    N + 1 steps (N + 1 backwards and N + 2 forwards): APGD-CE beats PGD-CE with the project's step rule, and APGD with
    SEA's balanced masked CE beats PGD at every step size tried."""
    torch.manual_seed(0)
    model = train_quick(SmallUNet(c=8), 32, steps=80)
    x, y = synthetic_disks(8, 32, torch.Generator().manual_seed(5))
    eps, n = 16 / 255, 40

    def dice(pred: torch.Tensor) -> torch.Tensor:
        p, t = pred == 1, y == 1
        return (2 * (p & t).sum((1, 2)) / (p.sum((1, 2)) + t.sum((1, 2))).clamp_min(1)).float().mean()

    pgds = {a: pgd(model, x, y, eps=eps, alpha=a, steps=n + 1, generator=torch.Generator().manual_seed(0))
            for a in (default_alpha(eps, n + 1), eps / 4, eps / 10)}
    ce = apgd(model, x, y, eps=eps, steps=n, loss="ce", generator=torch.Generator().manual_seed(0))
    bal = apgd(model, x, y, eps=eps, steps=n, loss="balanced_ce", generator=torch.Generator().manual_seed(0))
    for r in pgds.values():
        assert r.forwards >= ce.forwards and r.backwards >= ce.backwards
    pgd_dice = {a: dice(r.pred) for a, r in pgds.items()}
    assert dice(ce.pred) < pgd_dice[default_alpha(eps, n + 1)] - 0.03, (dice(ce.pred), pgd_dice)
    assert dice(bal.pred) < min(pgd_dice.values()) - 0.03, (dice(bal.pred), pgd_dice)


@pytest.mark.slow
def test_attack_command_runs_sea_and_sweeps_it(tmp_path):
    """``python -m lightning_seg attack attack=sea`` with ``attack_eval.sweep_attacks=[sea]`` on a tiny trained run."""
    from pathlib import Path

    from lightning_seg.commands.attack import attack
    from lightning_seg.commands.compose import compose_for
    from lightning_seg.commands.fit import fit
    from lightning_seg.config import compose
    from tests.conftest import tiny_overrides

    root = tmp_path / "runs"
    fit(compose(tiny_overrides(root)))
    result = attack(compose_for("attack", [
        f"run.output_dir={root}", "attack=[sea]", "logger=none", "attack.sea.steps=4", "attack_eval.num_images=4",
        "attack_eval.batch_size=4", "attack_eval.panels=1", "attack_eval.eps_sweep=[4/255]",
        "attack_eval.sweep_attacks=[sea]", "attack_eval.sweep_steps=3"]))
    table = (Path(result["run_dir"]) / "summary.md").read_text()
    assert "| sea | ground truth |" in table
    assert "sea: worst case per image came from " in table
    import csv

    rows = list(csv.DictReader((Path(result["run_dir"]) / "per_image.csv").open()))
    assert len(rows) == 4 and all(r["winner"] in ("balanced_ce", "masked_ce", "js") for r in rows)
    assert [(r["attack"], r["eps_x255"]) for r in result["robustness"] if r["attack"] != "clean"] == [("sea", 4.0)]
