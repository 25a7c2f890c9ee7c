"""The synthesis attack as a registered attack, its pixel bound, and its use as (adversarial) augmentation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_seg.attacks import AttackResult, build_attack
from lightning_seg.attacks.config import bind_task
from lightning_seg.attacks.deformations import TransformConfig, integrate_velocity, sample_random_transform
from lightning_seg.attacks.synthesis import random_synthesis, synthesis_records, synthesis_summary
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.models import build_model
from lightning_seg.tasks import get_task
from lightning_seg.training.adversarial_hook import AdversarialTrainingHook
from tests.test_synthesis import ThresholdNet, disks

pytestmark = pytest.mark.usefixtures("single_thread")


def test_registered_synthesis_returns_an_attack_result_scored_against_the_deformed_label():
    model = ThresholdNet()
    x, y = disks(4)
    atk = build_attack("synthesis", dice_drop=0.2, steps=4, bisect_steps=8, max_disp_px=4.0, noise_std="1/255")
    assert atk.targeted is False and atk.config.noise_std == pytest.approx(1 / 255)
    res = atk(model, x, y)
    assert isinstance(res, AttackResult) and res.forwards == 4 * (1 + 4 + 1 + 1 + 8) and res.backwards == 4 * 4
    adv_labels = res.extras["adv_labels"]
    assert not torch.equal(adv_labels, y)  # the label was deformed with the image
    # reported Dice / success are reproducible from the returned images and deformed labels
    dice = per_image_dice(res.pred, adv_labels, get_task("lesion"))[:, 0]
    assert torch.allclose(dice.double(), res.extras["dice_adv"].double(), atol=1e-6)
    within = (res.extras["dice_adv"] - (res.extras["dice_clean"] - 0.2)).abs() <= 0.02 + 1e-6
    assert torch.equal(res.success, within) and int(res.success.sum()) >= 3
    assert torch.allclose(res.l2, (res.adv - x).flatten(1).norm(dim=1))
    assert bool((res.extras["max_disp_px"] <= 4.0 + 1e-4).all()) and bool((res.extras["min_jacobian"] > 0).all())
    labels, rows = synthesis_records([res])
    assert torch.equal(labels, adv_labels) and len(rows) == 4
    assert [r["synth_within_tol"] for r in rows] == res.success.tolist()
    s = synthesis_summary(rows)
    assert s["synth_within_tol_share"] == pytest.approx(float(res.success.float().mean()))
    assert s["synth_drop_requested_mean"] == pytest.approx(0.2)
    # the same seed gives the same attack
    assert torch.equal(atk(model, x, y).adv, res.adv)


def test_perturbation_mask_and_valid_padding_are_refused():
    x, y = disks(2)
    with pytest.raises(ValueError, match="perturbation_mask"):
        build_attack("synthesis", steps=1)(ThresholdNet(), x, y, perturbation_mask=torch.ones_like(x, dtype=torch.bool))
    valid = build_model("unet", width=4, depth=2, padding="valid").eval()
    img = torch.rand(1, 3, 92, 92)
    with pytest.raises(ValueError, match="padding=same"):
        build_attack("synthesis", steps=1)(valid, img, torch.zeros(1, 92, 92, dtype=torch.long))


@pytest.mark.parametrize("diffeomorphic", [True, False])
def test_max_disp_px_bounds_the_displacement_and_alpha_is_monotone(diffeomorphic: bool):
    v = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(0)) * 3.0  # far above the bound
    bound = 2.5
    peaks = []
    for a in (0.25, 0.5, 1.0):
        u = integrate_velocity(v, (64, 64), max_disp_px=bound, diffeomorphic=diffeomorphic, alpha=torch.full((3,), a))
        peaks.append(u.norm(dim=1).flatten(1).amax(1))
    assert bool((peaks[-1] <= bound + 1e-4).all()) and bool((peaks[-1] > 0.8 * bound).all())
    assert bool((peaks[0] < peaks[1]).all() and (peaks[1] < peaks[2]).all())  # scaling stays monotone below the bound
    free = integrate_velocity(v, (64, 64), diffeomorphic=diffeomorphic)
    assert bool((free.norm(dim=1).flatten(1).amax(1) > 2 * bound).all())  # without the bound it would be larger


def test_bind_task_scores_glaucoma_disc_and_cup_structures():
    atk = bind_task(build_attack("synthesis"), get_task("disc_cup"))
    assert atk.config.structures == [[1, 2], [2]]
    assert atk.config.kwargs()["structures"] == ((1, 2), (2,))
    pgd = bind_task(build_attack("pgd"), get_task("disc_cup"))  # PGD picks its best iterate by the same Dice
    assert pgd.config.structures == [[1, 2], [2]]
    asma = bind_task(build_attack("asma"), get_task("disc_cup"))  # attacks without the field are untouched
    assert not hasattr(asma.config, "structures")
    assert set(dataclasses.asdict(atk.config)) >= {"dice_drop", "tol", "max_disp_px", "diffeomorphic", "eps_bias", "noise_std"}


def test_random_synthesis_warps_labels_with_the_image():
    x, y = disks(3, contrast="high")
    cfg = TransformConfig(eps_bias=0.0, noise_std=0.0, max_disp_px=5.0)
    out, warped, t = random_synthesis(x, y, cfg, generator=torch.Generator().manual_seed(3))
    assert bool((t.alpha >= 0).all() and (t.alpha <= 1).all()) and not torch.equal(warped, y)
    # a high-contrast image without bias/noise thresholds to exactly its warped label (up to boundary pixels)
    agree = ((out.mean(1) > 0.5).long() == warped).float().mean()
    assert float(agree) > 0.99


def test_training_hook_synthesis_returns_deformed_labels_and_keeps_bn_clean():
    torch.manual_seed(0)
    net = build_model("unet", width=4, depth=2).train()
    stats = net.down[0][1].running_mean.clone()
    x, y = disks(4)
    hook = AdversarialTrainingHook("synthesis", steps=2, ratio=0.5, params={"bisect_steps": 2})
    mixed, labels, cost = hook(net, x, y)
    assert net.training and torch.equal(net.down[0][1].running_mean, stats)
    assert torch.equal(mixed[2:], x[2:]) and torch.equal(labels[2:], y[2:]) and not torch.equal(labels[:2], y[:2])
    assert cost["adv_images"] == 2 and cost["adv_forwards_per_image"] == 1 + 2 + 1 + 1 + 2
    assert all(p.grad is None for p in net.parameters())
    # the training adversary has no noise component by default (it would turn the augmentation into L2 AT)
    assert hook.attack.config.noise_std == 0.0
    assert AdversarialTrainingHook("synthesis", params={"noise_std": 0.01}).attack.config.noise_std == 0.01
    rnd = AdversarialTrainingHook("random_synthesis", ratio=1.0)
    m2, l2, c2 = rnd(net, x, y)
    assert m2.shape == x.shape and not torch.equal(m2, x) and c2["adv_forwards_per_image"] == 0
    with pytest.raises(TypeError, match="dice_drop"):
        AdversarialTrainingHook("random_synthesis", params={"dice_drp": 0.1})


def test_held_out_levels_reach_their_stated_magnitudes():
    """Each LEVELS entry must shift as much as its name says: a pixel bound that never binds (velocity radius too small)
    would make "morph 12px" a copy of "morph 9px" and the stronger held-out test meaningless."""
    from lightning_seg.evaluation.shift import LEVELS

    x = torch.rand(16, 3, 96, 96)
    for name, budget in LEVELS.items():
        if not budget:
            continue
        cfg = TransformConfig(**{"eps_noise": 0.0, **budget})
        t = sample_random_transform(16, (96, 96), channels=3, config=cfg, generator=torch.Generator().manual_seed(1001))
        real = t.realism(x, t.apply(x)[0])
        if cfg.eps_morph > 0:
            assert cfg.max_disp_px is not None and float(real["max_disp_px"].mean()) >= 0.9 * cfg.max_disp_px, name
            assert float(real["min_jacobian"].min()) > 0, name  # still no folding
        if cfg.eps_bias > 0:  # a bound, not a typical value (random control points, smoothed by the B-spline)
            assert 0 < float(real["max_bias"].max()) <= cfg.eps_bias + 1e-5, name


def test_training_hook_random_bias_optimises_the_deformation_and_draws_the_bias():
    net = build_model("unet", num_classes=2, width=4, depth=2, padding="same")
    x, y = disks(4)
    hook = AdversarialTrainingHook("synthesis", steps=1, ratio=0.5, params={"bisect_steps": 1, "eps_bias": 0.4},
                                   random_bias=True)
    assert hook.attack.config.eps_bias == 0.0 and hook.bias is not None and hook.bias.eps_bias == 0.4
    seen = {}
    attack = hook.attack

    def spy(*args):
        seen["result"] = attack(*args)
        return seen["result"]

    hook.attack = spy
    spy.config = attack.config  # is_targeted reads it
    mixed, labels, _ = hook(net, x, y)
    r = seen["result"]
    assert float(r.extras["max_bias"].max()) == 0.0  # the adversary had no bias component
    assert torch.equal(labels[:2], r.extras["adv_labels"]) and torch.equal(mixed[2:], x[2:])
    assert not torch.allclose(mixed[:2], r.adv) and 0 <= float(mixed.min()) and float(mixed.max()) <= 1
    with pytest.raises(ValueError, match="random_bias"):
        AdversarialTrainingHook("pgd", random_bias=True)


def test_module_binds_the_reporting_dice_structures_to_the_synthesis_hook():
    """The AT hook's synthesis aims its Dice drop at the reported Dice (glaucoma: disc = rim + cup, cup)."""
    from lightning_seg.training.module import SegmentationModule

    module = SegmentationModule(task="disc_cup", model={"name": "unet", "width": 4, "depth": 2},
                                adv_train={"enabled": True, "attack": "synthesis"})
    assert module.adv_hook.attack.config.structures == [[1, 2], [2]]
