"""Closed-form correctness of every attack on a per-pixel linear model (minimal perturbations known exactly)."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.attacks import asm, asma, cospgd, dag, fgsm, pgd, segpgd, ssm
from tests.helpers.toy_models import PixelLinear, minimal_norms

W = torch.tensor([1.0, -0.8, 0.6])


@pytest.fixture(autouse=True)
def _seed(single_thread):
    torch.manual_seed(0)


def make(batch: int, seed: int = 0, symmetric: bool = True) -> tuple[PixelLinear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(batch, 3, 4, 4, generator=g)  # interior: no box clamp for these budgets
    model = PixelLinear(W, b=-float(W.sum()) * 0.5, symmetric=symmetric)
    return model, x


def clean_pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("fn", [asma, asm], ids=["asma", "asm"])
def test_asma_minimal_l2(fn, batch):
    model, x = make(batch)
    target = torch.ones(batch, 4, 4, dtype=torch.long)
    opt, _ = minimal_norms(model, x, clean_pred(model, x) != target)
    res = fn(model, x, target, tau=2e-3, beta=2e-3, max_iter=1500, iou_threshold=1.0, step="raw")
    assert res.success.all()
    assert (res.pred == target).all()
    assert (res.l2 <= 1.25 * opt + 1e-6).all(), (res.l2, opt)
    assert (res.l2 >= opt * 0.999).all()  # cannot beat the optimum
    assert (res.iterations < 1500).all()


@pytest.mark.parametrize("batch", [1, 3])
def test_ssm_succeeds_but_overshoots(batch):
    """Without the adaptive mask every pixel keeps moving: success, but larger L2 than ASM."""
    model, x = make(batch)
    target = torch.ones(batch, 4, 4, dtype=torch.long)
    a = asm(model, x, target, tau=2e-3, max_iter=1500, iou_threshold=1.0, step="raw")
    s = ssm(model, x, target, tau=2e-3, max_iter=1500, iou_threshold=1.0, step="raw")
    assert s.success.all() and a.success.all()
    assert (s.l2 > a.l2).all()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_asma_normalized_step(batch):
    model, x = make(batch)
    target = torch.ones(batch, 4, 4, dtype=torch.long)
    opt, _ = minimal_norms(model, x, clean_pred(model, x) != target)
    # 2e-3 steps flip the last pixels at long intervals: no stall stop (stall_window=None) for this convergence check
    res = asma(model, x, target, step="normalized", step_size=2e-3, tau=1.0, beta=0.0, max_iter=2000,
               iou_threshold=1.0, stall_window=None)
    assert res.success.all()
    assert (res.l2 <= 1.25 * opt + 1e-6).all(), (res.l2, opt)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_asma_relative_step(batch):
    model, x = make(batch)
    target = torch.ones(batch, 4, 4, dtype=torch.long)
    opt, _ = minimal_norms(model, x, clean_pred(model, x) != target)
    res = asma(model, x, target, step="relative", step_size=2e-3, max_iter=4000, iou_threshold=1.0, stall_window=None)
    assert res.success.all()
    assert (res.l2 <= 1.25 * opt + 1e-6).all(), (res.l2, opt)


def test_asma_relative_step_is_the_raw_schedule_with_tau_calibrated_per_image():
    """relative == raw with tau, beta scaled by step_size / ||g_0|| of each image; the first step has L2 step_size."""
    model, x = make(3)
    target = torch.ones(3, 4, 4, dtype=torch.long)
    first = asma(model, x, target, step="relative", step_size=0.01, max_iter=1)
    assert torch.allclose(first.l2, torch.full((3,), 0.01), rtol=1e-4)
    rel = asma(model, x, target, step="relative", step_size=0.01, max_iter=30, iou_threshold=None)
    for i in range(3):
        xi = x[i:i + 1].clone().requires_grad_(True)
        z = model(xi)
        g0 = torch.autograd.grad((z[:, 1] * (z.argmax(1) != 1)).sum(), xi)[0].norm()
        c = 0.01 / (1e-7 * float(g0))  # tau -> tau * c gives a first step of length 0.01
        raw = asma(model, x[i:i + 1], target[i:i + 1], step="raw", tau=1e-7 * c, beta=1e-6 * c, max_iter=30,
                   iou_threshold=None)
        torch.testing.assert_close(raw.adv[0], rel.adv[i])


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_dag_minimal_l2(batch, norm):
    model, x = make(batch, symmetric=False)
    labels = clean_pred(model, x)
    opt, _ = minimal_norms(model, x, torch.ones_like(labels, dtype=torch.bool))
    res = dag(model, x, labels, gamma=2e-3, max_iter=600, norm=norm)
    assert res.success.all()
    assert (res.pred != labels).all()
    assert (res.l2 <= 1.25 * opt + 1e-6).all(), (res.l2, opt)
    assert (res.iterations < 600).all()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dag_targeted(batch):
    model, x = make(batch, symmetric=False)
    target = torch.zeros(batch, 4, 4, dtype=torch.long)
    opt, _ = minimal_norms(model, x, clean_pred(model, x) != target)
    res = dag(model, x, target, targeted=True, gamma=2e-3, max_iter=600)
    assert res.success.all() and (res.pred == target).all()
    assert (res.l2 <= 1.25 * opt + 1e-6).all()


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("fn", [pgd, segpgd, cospgd], ids=["pgd", "segpgd", "cospgd"])
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_family_linf_threshold(fn, batch, targeted):
    model, x = make(batch, symmetric=False)
    pred = clean_pred(model, x)
    ref = torch.ones_like(pred) if targeted else pred
    flip = pred != ref if targeted else torch.ones_like(pred, dtype=torch.bool)
    _, opt = minimal_norms(model, x, flip)
    eps_ok = float(opt.max()) * 1.05  # one eps for the whole batch: the hardest image decides
    ok = fn(model, x, ref, eps=eps_ok, alpha=eps_ok / 4, steps=12, targeted=targeted,
            generator=torch.Generator().manual_seed(1))
    assert ok.success.all(), ok.extras["apsr"]
    assert (ok.linf <= eps_ok + 1e-6).all()
    eps_bad = float(opt.min()) * 0.5
    bad = fn(model, x, ref, eps=eps_bad, alpha=eps_bad / 4, steps=12, targeted=targeted,
             generator=torch.Generator().manual_seed(1))
    assert not bad.success.any()
    assert (bad.linf <= eps_bad + 1e-6).all()


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("fn", [pgd, segpgd, cospgd], ids=["pgd", "segpgd", "cospgd"])
def test_pgd_family_l2_threshold(fn, batch):
    # constant images: all pixels share one margin, so the optimal L2 attack is symmetric
    model, x = make(batch, symmetric=False)
    x = x[:, :, :1, :1].expand(-1, -1, 4, 4).contiguous()
    labels = clean_pred(model, x)
    opt, _ = minimal_norms(model, x, torch.ones_like(labels, dtype=torch.bool))
    eps_ok = float(opt.max()) * 1.05
    ok = fn(model, x, labels, eps=eps_ok, alpha=eps_ok / 4, steps=20, norm="l2", random_start=False)
    assert ok.success.all()
    assert (ok.l2 <= eps_ok * (1 + 1e-5)).all()
    eps_bad = float(opt.min()) * 0.5
    bad = fn(model, x, labels, eps=eps_bad, alpha=eps_bad / 4, steps=20, norm="l2", random_start=False)
    assert not bad.success.any()


@pytest.mark.parametrize("batch", [1, 3])
def test_fgsm_linf(batch):
    model, x = make(batch, symmetric=False)
    labels = clean_pred(model, x)
    _, opt = minimal_norms(model, x, torch.ones_like(labels, dtype=torch.bool))
    ok = fgsm(model, x, labels, eps=float(opt.max()) * 1.05)
    assert ok.success.all()
    # the step's forward evaluates the clean image, one forward the step, one the returned (best) iterate
    assert ok.forwards == 3 * batch and ok.backwards == batch
    bad = fgsm(model, x, labels, eps=float(opt.min()) * 0.5)
    assert not bad.success.any()
