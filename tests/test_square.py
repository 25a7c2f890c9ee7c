"""Square Attack (Linf, query-based black-box) for segmentation: budget, no gradients, per-image bookkeeping,
schedule, early stop of finished images, registry."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.attacks import ATTACKS, build_named_attack, square
from lightning_seg.attacks.square import p_schedule, window_side
from tests.helpers.toy_models import PixelLinear

pytestmark = pytest.mark.usefixtures("single_thread")

W = torch.tensor([1.0, -0.8, 0.6])


def linear(b: int = 3, size: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = PixelLinear(W, b=-0.5 * float(W.sum()))  # d = w . x - w . 0.5
    s = 0.01 + 0.02 * torch.rand(b, 1, size, size, generator=g)  # flip distance in Linf: s (in (0.01, 0.03))
    x = (0.5 + s * torch.sign(W).view(1, 3, 1, 1)).clamp(0, 1)
    return model, x, torch.ones(b, size, size, dtype=torch.long), s


def test_schedule_and_window():
    assert p_schedule(0.05, 0, 10000) == 0.05 and p_schedule(0.05, 11, 10000) == 0.025
    assert p_schedule(0.05, 9999, 10000) == 0.05 / 2**9
    assert p_schedule(0.8, 50, 100) == p_schedule(0.8, 5000, 10000)  # rescaled to the budget
    assert window_side(0.05, 100, 100) == 22 and window_side(1.0, 8, 8) == 7 and window_side(1e-6, 8, 8) == 1


def test_untargeted_breaks_the_linear_model_without_gradients():
    model, x, y, s = linear()
    eps = float(s.max()) * 2.0  # a vertex with the two largest-weight channels right flips every pixel
    res = square(model, x, y, eps=eps, steps=1000, p_init=0.3, generator=torch.Generator().manual_seed(0))
    assert (res.extras["dice"] == 0).all() and (res.pred == 0).all()
    assert res.backwards == 0 and (res.linf <= eps + 1e-6).all()
    assert res.iterations.max() < 1000  # finished images stop querying
    # forwards: every query of every image, the start and the final forward
    assert res.forwards == int(res.extras["queries"].sum()) + len(x)
    assert torch.equal(res.iterations, res.extras["queries"] - 1)
    assert not any(p.grad is not None for p in model.parameters())


def test_below_the_flip_distance_nothing_flips_and_the_score_never_worsens():
    model, x, y, s = linear()
    eps = float(s.min()) * 0.5
    res = square(model, x, y, eps=eps, steps=40, generator=torch.Generator().manual_seed(0))
    assert (res.extras["dice"] == 1).all() and (res.iterations == 40).all()


def test_images_are_independent_and_finished_images_stop():
    """An image misclassified from the start (Dice 0) costs only the start query; the others go on."""
    model, x, y, s = linear(b=2)
    y = y.clone()
    y[0] = 0  # image 0: the label is background, the prediction foreground: Dice 0 from the start
    res = square(model, x, y, eps=float(s.max()) * 0.5, steps=20, generator=torch.Generator().manual_seed(0))
    assert res.extras["queries"].tolist()[0] == 1 and res.extras["queries"].tolist()[1] == 21
    assert float((res.adv[0] - x[0]).abs().max()) <= float(s.max()) * 0.5 + 1e-6  # its stripes start is kept


def test_perturbation_mask_and_targeted():
    model, x, y, s = linear(b=2)
    pm = torch.zeros(1, 1, 6, 6)
    pm[..., :3] = 1
    eps = float(s.max()) * 2.0
    res = square(model, x, torch.zeros_like(y), eps=eps, steps=1000, p_init=0.3, targeted=True, perturbation_mask=pm,
                 generator=torch.Generator().manual_seed(0))
    assert ((res.adv - x)[..., 3:] == 0).all()
    assert (res.pred[..., :3] == 0).all() and (res.pred[..., 3:] == 1).all()  # only the allowed half flips


def test_registered_with_its_defaults():
    assert "square" in ATTACKS.names()
    atk = build_named_attack("square", None, eps=0.1, steps=3)
    assert atk.config.steps == 3 and atk.config.loss == "margin" and not atk.targeted
    model, x, y, _ = linear(b=1)
    res = atk(model, x, y)
    assert res.backwards == 0 and res.forwards <= 5
