"""Contract of every attack: no side effects, per-image independence, masks, seeds, heads, configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from lightning_seg.attacks import (
    ATTACKS,
    CONFIGS,
    AttackResult,
    asma,
    binary_logits,
    build_attack,
    cospgd,
    dag,
    fgsm,
    hide_class_target,
    parse_fraction,
    per_image_iou,
    pgd,
    pixel_accuracy,
    segpgd,
    universal_attack,
    universal_perturbation,
)
from lightning_seg.registry import UnknownNameError
from tests.helpers.toy_models import PixelLinear

ROOT = Path(__file__).resolve().parents[1]
# ASMA's raw-gradient schedule without early stop, last iterate returned (the paper's; the project's smallest-successful
# iterate and bisection refinement off)
RAW = dict(step="raw", iou_threshold=None, return_best=False, refine_steps=0)


pytestmark = pytest.mark.usefixtures("single_thread")


class TinyNet(nn.Module):
    """Small conv net with BatchNorm and dropout (train mode before each attack)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.5),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, k, 1),
        )

    def forward(self, x):
        return self.body(x)


def tiny(k: int = 2, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(k)
    with torch.no_grad():  # non-trivial running stats so eval differs from train mode
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def data(b: int = 2, k: int = 2, seed: int = 0, size: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    y = torch.randint(0, k, (b, size, size), generator=g)
    return x, y


# one short, cheap call per attack; every call gets fresh generators so results are reproducible
def run(name: str, model, x, y, random_start: bool = True, **kw) -> AttackResult:
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    if name == "asma":
        return asma(model, x, y, tau=1e-2, beta=1e-2, max_iter=8, **RAW, **kw)
    if name == "asma_early":
        return asma(model, x, y, step="normalized", step_size=0.05, max_iter=12, iou_threshold=0.5, check_every=3, **kw)
    if name == "dag":
        return dag(model, x, y, gamma=0.01, max_iter=8, generator=g(), check_every=3, **kw)
    if name == "dag_targeted":
        return dag(model, x, y, targeted=True, gamma=0.01, max_iter=8, **kw)
    if name == "fgsm":
        return fgsm(model, x, y, eps=0.03, **kw)
    fn = {"pgd": pgd, "segpgd": segpgd, "cospgd": cospgd}[name]
    return fn(model, x, y, eps=0.03, alpha=0.01, steps=4, generator=g(), random_start=random_start, **kw)


NAMES = ["asma", "asma_early", "dag", "dag_targeted", "fgsm", "pgd", "segpgd", "cospgd"]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_no_side_effects(name):
    model = tiny()
    model.train()
    model.body[4].weight.requires_grad_(False)  # per-parameter flags must be restored exactly
    model.body[1].eval()  # per-module modes too
    before = state(model)
    x, y = data()
    x0, y0 = x.clone(), y.clone()
    res = run(name, model, x, y)
    assert model.training and not model.body[1].training and model.body[5].training
    assert [p.requires_grad for p in model.parameters()] == [
        p is not model.body[4].weight for p in model.parameters()
    ]
    assert all(p.grad is None for p in model.parameters())
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert res.adv.shape == x.shape and not res.adv.requires_grad
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    assert res.pred.shape == y.shape and res.pred.dtype == torch.long
    for f in ("success", "iou", "pixel_acc", "l2", "linf", "iterations"):
        assert getattr(res, f).shape == (2,)
    assert res.forwards > 0 and res.backwards > 0
    # pred is the model's eval-mode prediction on adv
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(res.adv).argmax(1), res.pred)


@pytest.mark.parametrize("name", NAMES)
def test_batch_invariance(name):
    """N identical images give exactly the single-image result (no coupling through the batch).
    Random starts are drawn per image (so differ inside a batch) and are switched off here."""
    model = tiny().eval()
    x, y = data(b=1)
    one = run(name, model, x, y, random_start=False)
    many = run(name, model, x.expand(4, -1, -1, -1).contiguous(), y.expand(4, -1, -1).contiguous(), random_start=False)
    for i in range(4):
        assert torch.allclose(many.adv[i], one.adv[0], atol=1e-6, rtol=0), (i, (many.adv[i] - one.adv[0]).abs().max())
        assert torch.equal(many.pred[i], one.pred[0])
        assert many.iterations[i] == one.iterations[0]
        assert torch.allclose(many.l2[i], one.l2[0], atol=1e-5)
        assert many.success[i] == one.success[0]


def test_batch_invariance_mixed_early_stop():
    """Per-image early stop: image results do not depend on their batch mates (shrinking batch)."""
    model, _ = PixelLinear(torch.tensor([1.0, -0.8, 0.6]), -0.4), None
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(5, 3, 4, 4, generator=g)
    t = torch.ones(5, 4, 4, dtype=torch.long)
    kw = dict(tau=2e-3, beta=2e-3, max_iter=800, iou_threshold=1.0, check_every=7, step="raw")
    full = asma(model, x, t, **kw)
    assert len(set(full.iterations.tolist())) > 1  # images really stop at different iterations
    for i in range(5):
        single = asma(model, x[i:i + 1], t[i:i + 1], **kw)
        assert torch.allclose(full.adv[i], single.adv[0], atol=1e-6, rtol=0)
        assert full.iterations[i] == single.iterations[0]
    # frozen images: forwards are fewer than running everyone to the end
    assert full.forwards < 5 * (int(full.iterations.max()) + 1)
    d = dag(model, x, (torch.rand(5, 4, 4, generator=g) > 2).long(), targeted=True, gamma=2e-3, max_iter=400)
    for i in range(5):
        s = dag(model, x[i:i + 1], torch.zeros(1, 4, 4, dtype=torch.long), targeted=True, gamma=2e-3, max_iter=400)
        assert torch.allclose(d.adv[i], s.adv[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_label_mask_respected(name):
    """Labels under mask=False do not influence the attack or its metrics."""
    model = tiny().eval()
    x, y = data()
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[:, 2:9, 3:10] = True
    y2 = y.clone()
    y2[~mask] = 1 - y2[~mask]
    y3 = y.clone()
    y3[~mask] = 255  # void labels are fine when masked out
    a = run(name, model, x, y, mask=mask)
    b = run(name, model, x, y2, mask=mask)
    c = run(name, model, x, y3, mask=mask)
    for r in (b, c):
        assert torch.equal(a.adv, r.adv)
        assert torch.equal(a.iou, r.iou) and torch.equal(a.pixel_acc, r.pixel_acc)


@pytest.mark.parametrize("name", NAMES)
def test_perturbation_mask(name):
    model = tiny().eval()
    x, y = data()
    pm = torch.zeros(1, 1, 12, 12)
    pm[..., 4:8, 4:8] = 1
    if name == "dag":  # at gamma 0.01 no DAG iterate beats the clean image, which is then the best iterate returned
        res = dag(model, x, y, gamma=0.03, max_iter=8, generator=torch.Generator().manual_seed(3), perturbation_mask=pm)
    else:
        res = run(name, model, x, y, perturbation_mask=pm)
    diff = (res.adv - x).abs()
    assert diff[..., pm[0, 0] == 0].max() == 0
    assert diff[..., pm[0, 0] == 1].max() > 0


@pytest.mark.parametrize("name", ["dag", "pgd", "segpgd", "cospgd"])
def test_seeds(name):
    model = tiny().eval()
    x, y = data()
    fn = {"dag": dag, "pgd": pgd, "segpgd": segpgd, "cospgd": cospgd}[name]
    kw = dict(gamma=0.01, max_iter=5) if name == "dag" else dict(eps=0.03, alpha=0.01, steps=3)
    if name == "dag":  # 3 classes so the random adversarial labels matter
        model, (x, y) = tiny(k=3).eval(), data(k=3)
    a = fn(model, x, y, generator=torch.Generator().manual_seed(5), **kw)
    b = fn(model, x, y, generator=torch.Generator().manual_seed(5), **kw)
    c = fn(model, x, y, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a.adv, b.adv)
    assert not torch.equal(a.adv, c.adv)


def test_empty_target_no_nan():
    model = tiny().eval()
    x, _ = data()
    empty = torch.zeros(2, 12, 12, dtype=torch.long)
    for res in (asma(model, x, empty, tau=1e-2, max_iter=5, **RAW), dag(model, x, empty, targeted=True, max_iter=5),
                pgd(model, x, empty, targeted=True, steps=2)):
        for f in ("iou", "pixel_acc", "l2", "linf"):
            assert torch.isfinite(getattr(res, f)).all()
        assert torch.equal(res.iou == 1, (res.pred == 0).flatten(1).all(1))
    # a model that predicts background everywhere reaches the empty target at once
    bg = PixelLinear(torch.zeros(3), -1.0)
    res = asma(bg, x, empty, iou_threshold=0.99, max_iter=50)
    assert res.success.all() and (res.iou == 1).all() and (res.iterations == 0).all() and (res.l2 == 0).all()


def test_metric_conventions():
    e = torch.zeros(1, 3, 3, dtype=torch.long)
    f = torch.ones(1, 3, 3, dtype=torch.long)
    assert per_image_iou(e, e).item() == 1.0
    assert per_image_iou(f, e).item() == 0.0
    p = torch.tensor([[[0, 1, 1], [0, 1, 0], [2, 2, 2]]])
    r = torch.tensor([[[0, 1, 0], [0, 1, 0], [2, 2, 0]]])
    # classes 0,1,2: IoU 3/5, 2/3, 2/3
    assert torch.allclose(per_image_iou(p, r, num_classes=3), torch.tensor([(3 / 5 + 2 / 3 + 2 / 3) / 3]))
    m = torch.zeros(1, 3, 3, dtype=torch.bool)
    m[0, 0, :2] = True
    assert per_image_iou(p, r, m, num_classes=3).item() == 1.0
    assert pixel_accuracy(p, r, m).item() == 1.0
    assert torch.allclose(pixel_accuracy(p, r), torch.tensor([7 / 9]))
    # 3-class map without class 1 anywhere: class absent from both is skipped
    z = torch.zeros(1, 2, 2, dtype=torch.long)
    assert per_image_iou(z, z, num_classes=3) == 1


@pytest.mark.parametrize("name", ["asma", "asma_early", "dag", "pgd", "segpgd", "cospgd"])
def test_sigmoid_head_equals_two_logit(name):
    w = torch.tensor([1.0, -0.8, 0.6])
    one = PixelLinear(w, -0.4, heads=1)
    two = PixelLinear(w, -0.4, symmetric=False)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.ones(2, 12, 12, dtype=torch.long)
    assert torch.equal(binary_logits(one(x)), two(x))
    a, b = run(name, one, x, y), run(name, two, x, y)
    assert torch.equal(a.adv, b.adv) and torch.equal(a.pred, b.pred)


def test_paper_exact_vs_efficient():
    """Same iterates when the clamp is inactive; the efficient schedule needs half the forwards."""
    model = PixelLinear(torch.tensor([1.0, -0.8, 0.6]), -0.9)
    x = 0.3 + 0.4 * torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.ones(3, 4, 4, dtype=torch.long)
    kw = dict(tau=1e-3, beta=3e-3, max_iter=60, **RAW)
    eff = asma(model, x, t, **kw)
    ref = asma(model, x, t, paper_exact=True, **kw)
    assert torch.allclose(eff.adv, ref.adv, atol=1e-6)
    assert ref.forwards == 2 * 60 * 3 + 3 and eff.forwards == 60 * 3 + 3
    assert eff.backwards == ref.backwards == 60 * 3
    assert set(ref.extras["paper_stats"]) == {"iou", "pixel_acc", "l2", "linf"}
    # with the clamp active, the paper's pre-clamp L2 exceeds the clamped one
    xe = torch.full((1, 3, 4, 4), 0.999)
    r2 = asma(model, xe, torch.ones(1, 4, 4, dtype=torch.long), tau=0.05, beta=0.0, max_iter=3, paper_exact=True, **RAW)
    assert r2.extras["paper_stats"]["l2"][0] > r2.l2[0]
    with pytest.raises(ValueError, match="paper_exact"):
        asma(model, x, t, paper_exact=True, iou_threshold=0.9)


def test_return_best_is_no_larger():
    model = PixelLinear(torch.tensor([1.0, -0.8, 0.6]), -0.4)
    x = 0.3 + 0.4 * torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.ones(2, 4, 4, dtype=torch.long)
    kw = dict(
        adaptive_mask=False, dynamic_multiplier=False, tau=3e-3, max_iter=400, success_threshold=1.0, l2_weight=0.0,
        **RAW,
    )
    last = asma(model, x, t, **kw)
    best = asma(model, x, t, **{**kw, "return_best": True})
    assert best.success.all() and (best.l2 < last.l2).all()


def test_input_errors():
    model = tiny().eval()
    x, y = data()
    with pytest.raises(ValueError, match="\\[0,1\\]"):
        pgd(model, x * 2, y)
    nan = x.clone()
    nan[0, 1, 2, 3] = float("nan")
    for attack in (pgd, asma):
        with pytest.raises(ValueError, match="images contain NaN"):
            attack(model, nan, y)
    with pytest.raises(ValueError, match="long"):
        pgd(model, x, y.float())
    with pytest.raises(ValueError, match="crop the labels"):
        pgd(model, x, y[:, :10, :10])
    with pytest.raises(ValueError, match="perturbation_mask"):
        pgd(model, x, y, perturbation_mask=torch.ones(2, 3, 5, 5))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        pgd(model, x, y)


def test_result_helpers():
    model = tiny().eval()
    x, y = data()
    res = pgd(model, x, y, steps=2)
    recs = res.to_records()
    assert len(recs) == 2 and isinstance(recs[0]["l2"], float) and isinstance(recs[0]["success"], bool)
    assert torch.allclose(res.rms, res.l2 / (3 * 12 * 12) ** 0.5)
    s = res.summary()
    assert s["n"] == 2 and 0 <= s["success_rate"] <= 1 and "l2_mean" in s and s["forwards"] == res.forwards


def test_registry_and_yaml_defaults():
    assert ATTACKS.names() == sorted(["ssm", "asm", "asma", "dag", "fgsm", "pgd", "segpgd", "cospgd", "up", "synthesis", "apgd", "sea", "square"])
    with pytest.raises(UnknownNameError, match="asma"):
        ATTACKS.get("asmma")
    with pytest.raises(TypeError, match="Did you mean: 'eps'"):
        build_attack("pgd", epss=0.1)
    for name, cls in CONFIGS.items():  # the yaml lists deviations only (full check: tests/test_attack_defaults.py)
        y = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "attack" / f"{name}.yaml"))
        assert set(y) <= set(dataclasses.asdict(cls())), name
        assert y["name"] == name
    assert build_attack("ssm").config.adaptive_mask is False
    assert build_attack("asm").config.dynamic_multiplier is False
    assert build_attack("pgd", eps="8/255").config.eps == pytest.approx(8 / 255)
    assert parse_fraction("8/255") == pytest.approx(8 / 255) and parse_fraction(0.5) == 0.5
    assert parse_fraction("1e-3") == 1e-3
    with pytest.raises(ValueError, match="8/255"):
        parse_fraction("eight")
    model = tiny().eval()
    x, y = data()
    a = build_attack("pgd", steps=2)(model, x, y)
    b = pgd(model, x, y, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.adv, b.adv)
    for name in ("asma", "dag", "fgsm", "segpgd", "cospgd"):
        over = {"max_iter": 2} if name in ("asma", "dag") else ({"steps": 2} if name != "fgsm" else {})
        assert isinstance(build_attack(name, **over)(model, x, y), AttackResult)


def test_hide_class_target():
    ref = torch.tensor([[[0, 0, 1, 1, 2], [0, 1, 1, 1, 2], [0, 0, 1, 2, 2]]])
    t = hide_class_target(ref, 1, 3)
    assert (t != 1).all()
    assert t[0, 0, 2] == 0 and t[0, 1, 3] == 2 and t[0, 1, 1] == 0
    assert torch.equal(t[ref != 1], ref[ref != 1])


def test_universal_perturbation_hides_class():
    model = PixelLinear(torch.tensor([1.0, -0.8, 0.6]), -0.4)
    g = torch.Generator().manual_seed(0)
    zeros = torch.zeros(4, 6, 6, dtype=torch.long)
    train = [(0.3 + 0.4 * torch.rand(4, 3, 6, 6, generator=g), zeros) for _ in range(3)]
    test_x = 0.3 + 0.4 * torch.rand(5, 3, 6, 6, generator=g)
    up = universal_perturbation(model, train, eps=0.25, alpha=0.02, epochs=6, mode="dynamic", hide_class=1)
    assert up.delta.shape == (1, 3, 6, 6) and up.delta.abs().max() <= 0.25 + 1e-6
    res = universal_attack(model, test_x, torch.zeros(5, 6, 6, dtype=torch.long), perturbation=up)
    clean_fg = (res.extras["clean_pred"] == 1).sum()
    assert clean_fg > 0 and (res.pred == 1).sum() < clean_fg // 4
    assert res.targeted and torch.allclose(res.adv, up.apply(test_x))
    # static target: all foreground
    st = universal_perturbation(model, train, eps=0.25, alpha=0.02, epochs=6, mode="static",
                                target=torch.ones(6, 6, dtype=torch.long))
    r2 = universal_attack(model, test_x, torch.zeros(5, 6, 6, dtype=torch.long), perturbation=st)
    assert r2.success.all() and (r2.pred == 1).all()
    up_attack = build_attack("up", eps=0.25, alpha=0.02, epochs=6)
    with pytest.raises(RuntimeError, match="fit"):
        up_attack(model, test_x, torch.zeros(5, 6, 6, dtype=torch.long))
    up_attack.fit(model, train)
    assert torch.equal(up_attack.perturbation.delta, up.delta)


def test_segpgd_weights():
    from lightning_seg.attacks.segpgd import segpgd_weight

    z = torch.tensor([[[[2.0, -1.0]], [[0.0, 1.0]]]])  # [1,2,1,2]: pixel0 -> class 0, pixel1 -> class 1
    y = torch.tensor([[[0, 0]]])  # pixel0 correct, pixel1 wrong
    T = 10
    w1 = segpgd_weight(z, y, 1, T, False)
    assert torch.equal(w1, torch.tensor([[[1.0, 0.0]]]))  # lambda_1 = 0
    wT = segpgd_weight(z, y, T, T, False)
    lam = (T - 1) / (2 * T)
    assert torch.allclose(wT, torch.tensor([[[1 - lam, lam]]]))
    assert torch.allclose(segpgd_weight(z, y, T, T, True), torch.tensor([[[lam, 1 - lam]]]))  # swapped


def test_cospgd_weights():
    from lightning_seg.attacks.cospgd import cospgd_weight

    z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    p = z.softmax(1)
    onehot = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    cos = torch.nn.functional.cosine_similarity(p, onehot, dim=1)
    assert torch.allclose(cospgd_weight(z, y, 1, 5, False), cos, atol=1e-6)
    assert torch.allclose(cospgd_weight(z, y, 1, 5, True), 1 - cos, atol=1e-6)


class Cropping(nn.Module):
    """Valid-convolution style model: output is the input grid minus a 2-pixel border."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PixelLinear(torch.tensor([1.0, -0.8, 0.6]), -0.4)

    def forward(self, x):
        return self.inner(x)[..., 2:-2, 2:-2]


@pytest.mark.parametrize("name", ["asma_early", "dag", "pgd", "segpgd", "cospgd"])
def test_output_smaller_than_input(name):
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.ones(2, 8, 8, dtype=torch.long)
    res = run(name, Cropping(), x, y)
    assert res.pred.shape == (2, 8, 8) and res.adv.shape == x.shape
    # the border never influences the output, so it receives no gradient and stays unchanged
    border = torch.ones(12, 12, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    if name != "pgd" and name != "segpgd" and name != "cospgd":  # random starts touch the border
        assert (res.adv - x)[..., border].abs().max() == 0


def test_paper_ordering_ssm_asm_asma():
    """Paper Table 1 ordering on a quickly trained net at equal iterations (raw schedule, no early stop, 200 each):
    IoU SSM < ASM <= ASMA and L2 ASMA <= ASM; SSM also needs a far larger perturbation."""
    from lightning_seg.attacks import asm, ssm
    from tests.helpers.toy_models import SmallUNet, synthetic_disks, train_quick

    torch.manual_seed(0)
    model = train_quick(SmallUNet(c=8), 32, steps=80)
    x, y = synthetic_disks(6, 32, torch.Generator().manual_seed(5))
    t = y.roll(1, 0)  # another image's mask as target (paper protocol)
    kw = dict(tau=1e-4, beta=1e-3, max_iter=200, **RAW)
    s, a, aa = (f(model, x, t, **kw) for f in (ssm, asm, asma))
    assert (s.iterations == 200).all() and (a.iterations == 200).all() and (aa.iterations == 200).all()
    assert s.iou.mean() + 0.5 < a.iou.mean() <= aa.iou.mean()
    assert aa.l2.mean() <= a.l2.mean()
    assert s.l2.mean() > 5 * a.l2.mean()
    assert aa.iou.mean() > 0.95


def test_class_map_equals_argmax_including_ties():
    from lightning_seg.attacks.measure import class_map

    z = torch.randn(3, 4, 7, 5, generator=torch.Generator().manual_seed(0))
    z[:, 2] = z[:, 1]  # ties: the first maximum wins, as with argmax
    z[0, :, 0, 0] = 0.0
    assert torch.equal(class_map(z), z.argmax(1))
