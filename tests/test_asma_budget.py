"""ASMA's per-image budget: smallest successful iterate, shrink phase, bisection refinement, stall stop, and no compute
spent on finished images (per-pixel linear model, closed form)."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.attacks import asma, ssm
from lightning_seg.attacks.asma import _shrink_radius
from tests.helpers.toy_models import minimal_norms
from tests.test_attacks_linear import make


@pytest.fixture(autouse=True)
def _seed(single_thread):
    torch.manual_seed(0)


def ones(b: int) -> torch.Tensor:
    return torch.ones(b, 4, 4, dtype=torch.long)


def test_smallest_successful_iterate_is_never_larger_than_the_last():
    """SSM keeps pushing pixels that are already right, so its L2 grows after success: the kept iterate is smaller."""
    model, x = make(4)
    kw = {"step_size": 0.05, "max_iter": 300, "iou_threshold": None, "refine_steps": 0}
    last = ssm(model, x, ones(4), return_best=False, **kw)
    best = ssm(model, x, ones(4), return_best=True, **kw)
    assert last.success.all() and best.success.all()
    assert (best.l2 <= last.l2 + 1e-7).all()
    assert (best.l2 < 0.9 * last.l2).any()


@pytest.mark.parametrize("batch", [1, 5])
def test_shrink_and_refinement_keep_success_and_never_enlarge(batch):
    model, x = make(batch, seed=3)
    kw = {"iou_threshold": 0.7, "step_size": 0.05}
    plain = asma(model, x, ones(batch), shrink_steps=0, refine_steps=0, **kw)
    shrunk = asma(model, x, ones(batch), shrink_steps=10, shrink=0.03, refine_steps=0, **kw)
    refined = asma(model, x, ones(batch), shrink_steps=10, shrink=0.03, refine_steps=8, **kw)
    assert plain.success.all() and shrunk.success.all() and refined.success.all()
    assert (shrunk.l2 <= plain.l2 + 1e-7).all()
    assert (refined.l2 <= shrunk.l2 + 1e-7).all()
    scale = refined.extras["refine_scale"]
    assert ((scale > 0) & (scale <= 1)).all()
    # the shrink phase runs shrink_steps iterations after the first success, then stops
    assert (refined.iterations == refined.extras["iterations_to_target"] + 10).all()


def test_stalled_images_stop_early_and_alone():
    """An image that cannot move (perturbation mask 0) stops after stall_window iterations without IoU gain; the other
    image of the batch is unaffected (same result as alone)."""
    model, x = make(2)
    pm = torch.ones(2, 1, 4, 4)
    pm[1] = 0
    kw = {"max_iter": 500, "stall_window": 20, "check_every": 5, "iou_threshold": 0.7, "step_size": 0.05}
    res = asma(model, x, ones(2), perturbation_mask=pm, **kw)
    assert res.extras["stalled"].tolist() == [False, True]
    assert res.success.tolist() == [True, False]
    assert 20 <= int(res.iterations[1]) <= 20 + 5
    alone = asma(model, x[:1], ones(1), **kw)
    torch.testing.assert_close(alone.adv[0], res.adv[0])
    # without the stall stop it would run all 500 iterations
    assert res.forwards < 2 * 100


@pytest.mark.parametrize("check_every", [1, 2, 5])
def test_finished_images_stop_costing_forwards(check_every):
    """Forwards = the iterations each image ran (+1 for the forward that saw its success), at most check_every - 1
    wasted per image before the active batch shrinks, plus the final evaluation."""
    model, x = make(6, seed=1)
    res = asma(model, x, ones(6), step_size=0.05, iou_threshold=0.7, shrink_steps=0, refine_steps=0,
               check_every=check_every)
    assert res.success.all()
    used = int((res.iterations + 1).sum())
    assert used + 6 <= res.forwards <= used + 6 * (check_every - 1) + 6
    assert res.backwards == res.forwards - 6


def test_batch_equals_single_images_with_shrink_refine_and_stall():
    model, x = make(3, seed=2)
    pm = torch.ones(3, 1, 4, 4)
    pm[2, :, :2] = 0
    kw = {"stall_window": 15, "check_every": 3, "iou_threshold": 0.7, "step_size": 0.05}
    res = asma(model, x, ones(3), perturbation_mask=pm, **kw)
    for i in range(3):
        one = asma(model, x[i:i + 1], ones(1), perturbation_mask=pm[i:i + 1], **kw)
        torch.testing.assert_close(one.adv[0], res.adv[i])
        assert int(one.iterations[0]) == int(res.iterations[i])


def test_shrink_phase_brings_an_overshooting_step_back_to_the_minimal_norm():
    """Large normalized steps cross the target far beyond the minimal perturbation; the shrink phase (a shrinking L2
    sphere, DDN's rule) walks back along the boundary to within a few percent of the closed-form optimum. The squared-L2
    term is off (``l2_weight=0``): on this 4 x 4 toy one wrong pixel's gradient is as small as 2 delta, and the term
    would turn the last full-length steps against the perturbation (real images have hundreds of pixels in Eq. 2)."""
    model, x = make(4, seed=5)
    target = ones(4)
    with torch.no_grad():
        wrong = model(x).argmax(1) != target
    opt, _ = minimal_norms(model, x, wrong)
    kw = {"step_size": 0.05, "iou_threshold": 1.0, "refine_steps": 0, "l2_weight": 0.0}
    overshoot = asma(model, x, target, shrink_steps=0, **kw)
    shrunk = asma(model, x, target, shrink_steps=40, **kw)
    assert overshoot.success.all() and shrunk.success.all()
    assert (overshoot.l2 > 1.3 * opt).any()
    assert (shrunk.l2 <= 1.1 * opt + 1e-6).all(), (shrunk.l2, opt)
    assert (shrunk.l2 >= 0.999 * opt).all()


def test_shrink_radius_follows_ddns_rule():
    """Starts at the perturbation's L2 at the first success, then x (1 - shrink) on target and x (1 + shrink) off it;
    images not yet on target keep their radius."""
    l2 = torch.tensor([2.0, 2.0, 2.0, 2.0])
    radius = torch.tensor([0.0, 1.0, 1.0, 1.0])
    on = torch.tensor([True, True, False, False])
    reached = torch.tensor([True, True, True, False])
    newly = torch.tensor([True, False, False, False])
    r = _shrink_radius(l2, radius, on, reached, newly, 0.1)
    torch.testing.assert_close(r, torch.tensor([2.0, 0.9, 1.1, 1.0]))
