from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_seg.attacks.deformations import TransformConfig
from lightning_seg.attacks.synthesis import hard_dice, soft_dice, synthesis_attack

pytestmark = pytest.mark.usefixtures("single_thread")

S = 48


class ThresholdNet(nn.Module):
    """Per-pixel analytic segmenter: lesion iff mean intensity > 0.5 (2-class logits).

    Dropout makes any forward in train mode random, so a missing eval() would show up.
    """

    def __init__(self, k: float = 20.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1] = k / 3
            self.conv.bias[1] = -k / 2
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x))


def disks(b: int, contrast: str = "low") -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
    imgs, labs = [], []
    for i in range(b):
        cy, cx, r = S / 2 + (i % 3) - 1, S / 2 + 2 * (i % 2) - 1, 10 + 2 * (i % 4)
        lab = ((ys - cy) ** 2 + (xs - cx) ** 2 <= r * r).float()
        if contrast == "low":  # fg in [0.55, 0.75], bg in [0.30, 0.45]: the bias field can flip pixels gradually
            fg = 0.55 + 0.2 * xs / (S - 1)
            bg = 0.45 - 0.15 * ys / (S - 1)
        else:  # fg 0.9 / bg 0.1: no bias within +-30 % crosses 0.5
            fg, bg = torch.full_like(xs, 0.9), torch.full_like(xs, 0.1)
        imgs.append((lab * fg + (1 - lab) * bg).expand(3, S, S))
        labs.append(lab.long())
    return torch.stack(imgs), torch.stack(labs)


@pytest.mark.parametrize("drop", [0.1, 0.3])
def test_reaches_requested_drop(drop: float) -> None:
    model = ThresholdNet()
    x, y = disks(4)
    res = synthesis_attack(model, x, y, dice_drop=drop, tol=0.02, steps=5, bisect_steps=10,
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(res.dice_clean, torch.ones(4))
    assert int(res.reached.sum()) >= 3
    ok = res.reached
    assert bool(((res.dice_adv[ok] - (res.dice_clean[ok] - drop)).abs() <= 0.02 + 1e-6).all())
    assert bool((res.alpha > 0).all()) and bool((res.alpha <= 1).all())
    # the reported Dice is reproducible from the returned images and warped labels
    with torch.no_grad():
        model.eval()
        logits = model(res.adv_images)
    assert torch.allclose(hard_dice(logits, res.adv_labels), res.dice_adv, atol=1e-6)
    assert torch.equal(logits.argmax(1), res.pred)
    assert float(res.adv_images.min()) >= 0 and float(res.adv_images.max()) <= 1
    # realism within budgets
    assert bool((res.max_bias <= 0.3 + 1e-5).all())
    assert bool((res.noise_l2 <= 1.0 + 1e-5).all())
    assert bool((res.min_jacobian > 0).all())
    assert bool((res.ssim < 1).all())
    assert res.forwards == 1 + 5 + 1 + 1 + 10 and res.backwards == 5
    assert res.iterations == (5, 10)


def test_bigger_drop_needs_bigger_alpha() -> None:
    model = ThresholdNet()
    x, y = disks(4)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    r1 = synthesis_attack(model, x, y, dice_drop=0.1, steps=3, generator=g())
    r3 = synthesis_attack(model, x, y, dice_drop=0.3, steps=3, generator=g())
    both = r1.reached & r3.reached
    assert int(both.sum()) >= 3
    assert bool((r3.alpha[both] > r1.alpha[both]).all())


def test_gradient_direction_beats_random_transform() -> None:
    # the random full-budget transform alone cannot lower Dice by 0.3 here; the ascent steps can
    model = ThresholdNet()
    x, y = disks(4)
    rand = synthesis_attack(model, x, y, dice_drop=0.3, steps=0, generator=torch.Generator().manual_seed(2))
    opt = synthesis_attack(model, x, y, dice_drop=0.3, steps=5, generator=torch.Generator().manual_seed(2))
    assert int(opt.reached.sum()) >= 3
    assert int(rand.reached.sum()) < int(opt.reached.sum())
    assert rand.backwards == 0


def test_unreachable_reported() -> None:
    model = ThresholdNet()
    x, y = disks(3, contrast="high")
    res = synthesis_attack(model, x, y, dice_drop=0.3, steps=3, bisect_steps=4,
                           generator=torch.Generator().manual_seed(0))
    assert not bool(res.reached.any())
    assert bool((res.dice_adv > res.dice_clean - 0.3 + 0.02).all())
    # a drop larger than the clean Dice can never be reached either
    x2, y2 = disks(2)
    res2 = synthesis_attack(model, x2, y2, dice_drop=1.0, tol=0.0, steps=2, bisect_steps=3,
                            config=TransformConfig(eps_bias=0.1), generator=torch.Generator().manual_seed(0))
    assert not bool(res2.reached.any())


def test_mode_and_requires_grad_restored_no_param_grad() -> None:
    model = ThresholdNet()
    model.train()
    model.conv.bias.requires_grad_(False)
    x, y = disks(2)
    synthesis_attack(model, x, y, dice_drop=0.1, steps=2, bisect_steps=2, generator=torch.Generator().manual_seed(0))
    assert model.training and model.drop.training
    assert model.conv.weight.requires_grad and not model.conv.bias.requires_grad
    assert model.conv.weight.grad is None and model.conv.bias.grad is None
    model.eval()
    synthesis_attack(model, x, y, dice_drop=0.1, steps=2, bisect_steps=2, generator=torch.Generator().manual_seed(0))
    assert not model.training


def test_deterministic_with_generator_and_batch_invariant() -> None:
    model = ThresholdNet()
    x, y = disks(3)
    a = synthesis_attack(model, x, y, steps=3, bisect_steps=5, generator=torch.Generator().manual_seed(4))
    b = synthesis_attack(model, x, y, steps=3, bisect_steps=5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.adv_images, b.adv_images) and torch.equal(a.alpha, b.alpha)
    # identical images in a batch (zero init, no randomness) give exactly the single-image result
    x1, y1 = x[:1], y[:1]
    single = synthesis_attack(model, x1, y1, steps=3, bisect_steps=5, init="zero")
    batch = synthesis_attack(model, x1.expand(3, -1, -1, -1), y1.expand(3, -1, -1), steps=3, bisect_steps=5, init="zero")
    assert torch.allclose(batch.alpha, single.alpha.expand(3))
    assert torch.allclose(batch.dice_adv, single.dice_adv.expand(3))
    # batched vs single conv kernels differ in float round-off (~1e-5), amplified a little by the
    # normalised steps; a coupling between images would show up as O(1) differences
    assert torch.allclose(batch.adv_images, single.adv_images.expand(3, -1, -1, -1), atol=1e-3)


def test_warped_labels_follow_deformation_and_mask_respected() -> None:
    model = ThresholdNet()
    x, y = disks(2)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[:, :, : S // 2] = False  # only the right half counts
    res = synthesis_attack(model, x, y, mask=mask, dice_drop=0.2, steps=3, generator=torch.Generator().manual_seed(0))
    assert res.adv_mask is not None and res.adv_mask.dtype == torch.bool
    with torch.no_grad():
        model.eval()
        logits = model(res.adv_images)
    assert torch.allclose(hard_dice(logits, res.adv_labels, res.adv_mask), res.dice_adv, atol=1e-6)
    # the deformation moved the label (scored against y o phi, not y)
    moved = res.alpha > 0
    assert bool(((res.adv_labels != y).flatten(1).sum(1)[moved] > 0).all())


def test_dice_helpers() -> None:
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    y[0, :2] = 1
    logits = torch.zeros(2, 2, 4, 4)
    logits[0, 1, :1] = 5  # predicts half of the lesion
    d = hard_dice(logits, y)
    assert torch.allclose(d, torch.tensor([2 * 4 / (4 + 8), 1.0]))  # empty vs empty -> 1
    # sigmoid head equals the 2-logit head [0, z]
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    two = torch.cat([torch.zeros_like(z), z], 1)
    assert torch.allclose(hard_dice(z, y), hard_dice(two, y))
    assert torch.allclose(soft_dice(z, y), soft_dice(two, y), atol=1e-6)


def test_input_validation() -> None:
    model = ThresholdNet()
    x, y = disks(1)
    with pytest.raises(ValueError, match="labels"):
        synthesis_attack(model, x, y[0])
    with pytest.raises(ValueError, match="dice_drop"):
        synthesis_attack(model, x, y, dice_drop=1.5)
    with pytest.raises(ValueError, match="step_size"):
        synthesis_attack(model, x, y, step_size=0.0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        synthesis_attack(model, x, y)
    res = synthesis_attack(model, x, y, dice_drop=0.1, steps=1, bisect_steps=2,
                           generator=torch.Generator().manual_seed(0))
    assert res.iterations == (1, 2)
