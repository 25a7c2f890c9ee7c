from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.attacks.deformations import (
    SmoothTransform,
    TransformConfig,
    bilinear_sample,
    bspline_field,
    identity_transform,
    integrate_velocity,
    jacobian_determinant,
    sample_random_transform,
    ssim,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _disk_labels(b: int, h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    out = []
    for i in range(b):
        cy, cx, r = h / 2 + 3 * i - 4, w / 2 - 2 * i + 3, h / 4 + i
        out.append(((ys - cy) ** 2 + (xs - cx) ** 2 <= r**2).long())
    return torch.stack(out)


def test_identity_exact_at_zero_parameters() -> None:
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 37, 53), generator=torch.Generator().manual_seed(1))
    m = torch.rand(2, 37, 53) > 0.3
    t = identity_transform(2, (37, 53))
    x2, y2, m2 = t.apply(x, y, m, num_classes=3)
    assert torch.equal(x2, x)
    assert torch.equal(y2, y)
    assert torch.equal(m2, m)
    assert torch.equal(t.displacement(), torch.zeros(2, 2, 37, 53))
    # a random transform scaled by 0 is the identity too
    r = sample_random_transform(2, (37, 53), generator=torch.Generator().manual_seed(3))
    x3, y3, _ = r.scale(0.0).apply(x, y, num_classes=3)
    assert torch.equal(x3, x) and torch.equal(y3, y)


def test_bilinear_sampler_matches_grid_sample() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 30, generator=g)
    py = torch.rand(2, 20, 30, generator=g) * 25 - 3  # partly outside: border padding
    px = torch.rand(2, 20, 30, generator=g) * 36 - 3
    ours = bilinear_sample(x, py, px)
    grid = torch.stack([px / 29 * 2 - 1, py / 19 * 2 - 1], dim=-1)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_translation_velocity_gives_translation() -> None:
    # a constant velocity is a translation: exp(v) = shift by v (in pixels)
    h, w = 33, 41
    v = torch.zeros(1, 2, 3, 3)
    v[:, 0] = 4.0 / ((h - 1) / 2)  # 4 px down
    v[:, 1] = -2.5 / ((w - 1) / 2)  # 2.5 px left
    disp = integrate_velocity(v, (h, w), ss_steps=8)
    assert torch.allclose(disp[0, 0, 5:-5, 5:-5], torch.full((h - 10, w - 10), 4.0), atol=1e-4)
    assert torch.allclose(disp[0, 1, 5:-5, 5:-5], torch.full((h - 10, w - 10), -2.5), atol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_diffeomorphic_positive_jacobian_at_default_budget(size: tuple[int, int]) -> None:
    t = sample_random_transform(8, size, generator=torch.Generator().manual_seed(0))
    disp = t.displacement()
    det = jacobian_determinant(disp)
    assert det.shape == (8, size[0] - 1, size[1] - 1)
    assert bool((det > 0).all())
    # non-trivial: the deformation actually moves pixels by a few px
    real = t.realism(torch.rand(8, 3, *size), torch.rand(8, 3, *size))
    assert bool((real["max_disp_px"] > 1.0).all())
    assert bool((real["min_jacobian"] > 0).all())
    # velocity stays inside the AdvChain-scale budget
    assert torch.allclose(t.velocity.flatten(1).norm(dim=1), torch.full((8,), 1.5))


def test_jacobian_detects_folding() -> None:
    # a displacement that reverses x (phi(x) = -x) has det < 0
    h, w = 10, 12
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(1, h, w)
    disp = torch.zeros(1, 2, h, w)
    disp[:, 1] = (w - 1 - xs) - xs
    assert bool((jacobian_determinant(disp) < 0).all())


def test_bias_field_bounded_and_spline_partition_of_unity() -> None:
    cfg = TransformConfig(eps_bias=0.3, eps_morph=0.0, eps_noise=0.0)
    t = sample_random_transform(6, (40, 50), config=cfg, generator=torch.Generator().manual_seed(1))
    # push the control points out of the box, then project
    with torch.no_grad():
        t.log_bias.mul_(10)
    t.project_()
    b = t.bias_field()
    assert b.shape == (6, 1, 40, 50)
    assert float((b - 1).abs().max()) <= 0.3 + 1e-6
    assert float((b - 1).abs().max()) > 0.1  # the bound is not trivially met by a flat field
    # constant control points -> exactly that constant everywhere (B-spline partition of unity)
    const = torch.full((1, 1, 5, 5), 0.2)
    assert torch.allclose(bspline_field(const, (40, 50), 2), torch.full((1, 1, 40, 50), 0.2), atol=1e-6)
    # same field for every channel: x' / x identical across channels
    x = torch.full((6, 3, 40, 50), 0.5)
    x2, _, _ = t.apply(x)
    assert torch.allclose(x2[:, 0], x2[:, 1]) and torch.allclose(x2[:, 0], x2[:, 2])
    assert torch.allclose(x2 / x, b.expand_as(x2), atol=1e-6)
    # scaling shrinks |log b| proportionally
    b_half = t.scale(0.5).bias_field()
    assert torch.allclose(torch.log(b_half), 0.5 * torch.log(b), atol=1e-5)


def test_noise_budget_and_projection() -> None:
    cfg = TransformConfig(eps_bias=0.0, eps_morph=0.0, eps_noise=2.0)
    t = sample_random_transform(3, (16, 16), config=cfg, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(t.noise.flatten(1).norm(dim=1), torch.full((3,), 2.0))
    with torch.no_grad():
        t.noise.mul_(5)
    t.project_()
    assert torch.allclose(t.noise.flatten(1).norm(dim=1), torch.full((3,), 2.0), atol=1e-5)
    r = t.scale(torch.tensor([1.0, 0.5, 0.0])).realism(torch.zeros(3, 3, 16, 16), torch.zeros(3, 3, 16, 16))
    assert torch.allclose(r["noise_l2"], torch.tensor([2.0, 1.0, 0.0]), atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_labels_warped_consistently_with_images(mode: str) -> None:
    h = w = 64
    labels = _disk_labels(4, h, w)
    img = labels.float().unsqueeze(1).expand(4, 3, h, w).contiguous()  # intensity == label
    cfg = TransformConfig(eps_bias=0.0, eps_noise=0.0, eps_morph=1.5, label_mode=mode)
    t = sample_random_transform(4, (h, w), config=cfg, generator=torch.Generator().manual_seed(5))
    x2, y2, _ = t.apply(img, labels, num_classes=2)
    assert not torch.equal(y2, labels)  # the labels actually moved
    thr = (x2[:, 0] > 0.5).long()
    mismatch = (thr != y2).flatten(1).sum(1)
    boundary = (y2 != labels).flatten(1).sum(1)
    if mode == "bilinear":
        assert int(mismatch.max()) <= 2  # only exact 0.5 ties / float round-off
    else:
        # nearest differs from the bilinear threshold only along the boundary
        assert bool((mismatch <= 0.25 * boundary + 4).all())
    # multi-class: each class region warps as the indicator image of that class does
    lab3 = labels + (_disk_labels(4, h, w).roll(6, dims=-1) & labels)
    x3, y3, _ = t.apply(lab3.float().unsqueeze(1).expand(4, 3, h, w) / 2, lab3, num_classes=3)
    assert int(((x3[:, 0] * 2).round().long() != y3).sum()) <= 0.05 * int((y3 > 0).sum())


def test_determinism_with_generator() -> None:
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    a = sample_random_transform(3, (48, 48), generator=torch.Generator().manual_seed(7))
    b = sample_random_transform(3, (48, 48), generator=torch.Generator().manual_seed(7))
    c = sample_random_transform(3, (48, 48), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.apply(x)[0], b.apply(x)[0])
    assert not torch.equal(a.apply(x)[0], c.apply(x)[0])


def test_apply_is_differentiable_wrt_parameters_and_clamped() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = sample_random_transform(2, (32, 32), generator=torch.Generator().manual_seed(1)).requires_grad_()
    out, _, _ = t.apply(x)
    assert float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
    grads = torch.autograd.grad((out * torch.rand_like(out)).sum(), t.parameters())
    assert len(grads) == 3
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_ssim_properties() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    s = ssim(x, noisy)
    assert bool((s < 0.9).all()) and bool((s > -1).all())
    # per-image: a batch entry does not depend on the others
    assert torch.allclose(ssim(x[:1], noisy[:1]), s[:1])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="eps_bias"):
        TransformConfig(eps_bias=1.2)
    with pytest.raises(ValueError, match="label_mode"):
        TransformConfig(label_mode="cubic")
    t = identity_transform(1, (16, 16))
    with pytest.raises(ValueError, match="built for"):
        t.apply(torch.zeros(1, 3, 8, 8))
    assert isinstance(t, SmoothTransform) and math.isclose(t.config.eps_morph, 1.5)
