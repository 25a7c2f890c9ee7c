from __future__ import annotations

import math

import pytest
import torch

from lightning_seg.evaluation.clinical import clinical_report, concat_reports, summarize_clinical
from lightning_seg.metrics.clinical import (
    PERIMETER_BIAS,
    area,
    asymmetry,
    asymmetry_score,
    centroid,
    centroid_shift,
    compactness,
    perimeter,
    relative_area_change,
    screening_flips,
    vcdr,
    vertical_diameter,
)

pytestmark = pytest.mark.usefixtures("single_thread")

H = 160
YS, XS = torch.meshgrid(torch.arange(H).float(), torch.arange(H).float(), indexing="ij")


def disc(cy: float, cx: float, r: float) -> torch.Tensor:
    return (YS - cy) ** 2 + (XS - cx) ** 2 <= r * r


def ellipse(cy: float, cx: float, a: float, b: float, deg: float) -> torch.Tensor:
    t = math.radians(deg)
    u = (XS - cx) * math.cos(t) + (YS - cy) * math.sin(t)
    v = -(XS - cx) * math.sin(t) + (YS - cy) * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def l_shape() -> torch.Tensor:
    m = torch.zeros(H, H, dtype=torch.bool)
    m[20:120, 20:50] = True
    m[90:120, 20:100] = True
    return m


def nested_rects(disc_h: int, cup_h: int, disc_w: int = 40, cup_w: int = 20) -> torch.Tensor:
    m = torch.zeros(100, 100, dtype=torch.long)
    m[10 : 10 + disc_h, 30 : 30 + disc_w] = 1
    top = 10 + (disc_h - cup_h) // 2
    m[top : top + cup_h, 35 : 35 + cup_w] = 2
    return m


# ----------------------------------------------------------------------------- glaucoma


def test_vcdr_nested_rectangles() -> None:
    masks = torch.stack([nested_rects(60, 30), nested_rects(50, 40), nested_rects(80, 8)])
    assert torch.allclose(vcdr(masks), torch.tensor([0.5, 0.8, 0.1]), atol=1e-6)
    # vertical diameter = tallest column, not the bounding box of a non-convex mask
    m = torch.zeros(1, 50, 50, dtype=torch.bool)
    m[0, 5:15, 10] = True  # 10 px column
    m[0, 20:26, 11] = True  # separate 6 px column -> bbox height 21 but D = 10
    assert float(vertical_diameter(m)[0]) == 10.0


def test_vcdr_empty_disc_is_zero() -> None:
    assert float(vcdr(torch.zeros(1, 10, 10, dtype=torch.long))[0]) == 0.0


def test_screening_flips_counts() -> None:
    ref = torch.tensor([0.50, 0.65, 0.75, 0.80, 0.55])
    new = torch.tensor([0.62, 0.55, 0.65, 0.85, 0.72])
    f = screening_flips(ref, new, thresholds=(0.6, 0.7))
    # at 0.6: normal->suspect: img0, img4; suspect->normal: img1
    assert torch.isclose(f["n2s@0.6"], torch.tensor(2 / 5))
    assert torch.isclose(f["s2n@0.6"], torch.tensor(1 / 5))
    assert torch.isclose(f["flip@0.6"], torch.tensor(3 / 5))
    # at 0.7: n2s img4; s2n img2
    assert torch.isclose(f["n2s@0.7"], torch.tensor(1 / 5))
    assert torch.isclose(f["s2n@0.7"], torch.tensor(1 / 5))
    assert torch.isclose(f["mean_abs_dvcdr"], (new - ref).abs().mean())
    # threshold is inclusive (vCDR >= t is suspect)
    g = screening_flips(torch.tensor([0.59]), torch.tensor([0.6]), thresholds=(0.6,))
    assert float(g["n2s@0.6"]) == 1.0


def test_glaucoma_report_and_summary() -> None:
    gt = torch.stack([nested_rects(60, 30), nested_rects(60, 42)])  # 0.5, 0.7
    clean = torch.stack([nested_rects(60, 33), nested_rects(60, 45)])  # 0.55, 0.75
    adv = torch.stack([nested_rects(60, 45), nested_rects(60, 30)])  # 0.75, 0.5
    r = clinical_report("disc_cup", gt, clean, adv)
    assert torch.allclose(r["vcdr_gt"], torch.tensor([0.5, 0.7]), atol=1e-6)
    assert torch.allclose(r["dvcdr"], torch.tensor([0.2, -0.25]), atol=1e-6)
    assert torch.equal(r["n2s@0.6"], torch.tensor([1.0, 0.0]))
    assert torch.equal(r["s2n@0.6"], torch.tensor([0.0, 1.0]))
    s = summarize_clinical(concat_reports([r, r]))
    assert torch.isclose(s["flip@0.6"], torch.tensor(1.0))
    assert torch.isclose(s["n2s@0.7"], torch.tensor(0.5))
    assert torch.isclose(s["mean_abs_dvcdr"], torch.tensor(0.225))
    assert torch.isclose(s["abs_err_adv"], torch.tensor((0.25 + 0.2) / 2))


# ----------------------------------------------------------------------------- lesion shape


def test_area_centroid_and_shift() -> None:
    a = torch.zeros(2, 20, 20, dtype=torch.bool)
    a[0, 2:6, 3:9] = True  # 4x6 rectangle, centroid (3.5, 5.5)
    a[1, 10:12, 10:12] = True
    assert torch.equal(area(a), torch.tensor([24.0, 4.0]))
    assert torch.allclose(centroid(a), torch.tensor([[3.5, 5.5], [10.5, 10.5]]))
    b = a.roll(shifts=(3, 4), dims=(1, 2))
    shift, rel = centroid_shift(a, b)
    assert torch.allclose(shift, torch.tensor([5.0, 5.0]))
    assert torch.allclose(rel, 5.0 / torch.sqrt(torch.tensor([24.0, 4.0]) / math.pi))
    assert torch.allclose(relative_area_change(a, b | a), torch.tensor([(area(a | b)[0] - 24) / 24, 1.0]))


@pytest.mark.parametrize("r", [8, 12, 20, 45])
@pytest.mark.parametrize("offset", [0.25, 0.5, 0.3])
def test_compactness_of_rasterised_disc_is_one(r: int, offset: float) -> None:
    # Tolerance 0.03: the orientation-corrected contour length of a digital circle fluctuates
    # with the sub-pixel centre of the disc (CI ~ P^2 doubles the relative error).
    ci = compactness(disc(80 + offset, 80 - offset / 2, r)[None])
    assert abs(float(ci[0]) - 1.0) <= 0.03


def test_compactness_integer_centre_disc_has_spikes() -> None:
    # integer centre + integer radius rasterises with 4 one-pixel spikes at the poles: a real
    # boundary irregularity, so CI is above 1 there but still far below irregular shapes.
    ci = float(compactness(disc(80, 80, 8)[None])[0])
    assert 1.0 < ci < 1.15


def test_perimeter_of_disc_close_to_circumference() -> None:
    p = perimeter(disc(80.3, 79.6, 40)[None])
    assert abs(float(p[0]) / (2 * math.pi * 40) - 1) < 0.01
    raw = perimeter(disc(80.3, 79.6, 40)[None], corrected=False)
    assert torch.isclose(raw, p * PERIMETER_BIAS)
    # axis-aligned 10 x 20 rectangle: the midpoint contour runs along the pixel edges
    # (2 (10 + 20)) with each corner cut by a diagonal of length sqrt(1/2) (saving 2 * 0.5)
    m = torch.zeros(1, 30, 30, dtype=torch.bool)
    m[0, 5:15, 5:25] = True
    assert float(perimeter(m, corrected=False)[0]) == pytest.approx(2 * (10 + 20) - 4 + 4 * math.sqrt(0.5))


def test_compactness_star_and_l_shape_clearly_larger() -> None:
    ang = torch.atan2(YS - 80, XS - 80)
    rr = ((YS - 80) ** 2 + (XS - 80) ** 2).sqrt()
    star = rr <= 40 + 20 * torch.cos(5 * ang)
    ci = compactness(torch.stack([star, l_shape(), disc(80, 80, 30)]))
    assert float(ci[0]) > 2.0
    assert float(ci[1]) > 1.5
    assert float(ci[0]) > float(ci[2]) + 1.0


@pytest.mark.parametrize("deg", [0.0, 30.0, 72.0])
def test_asymmetry_of_symmetric_ellipse_is_near_zero(deg: float) -> None:
    # ellipse rotated by an arbitrary angle: principal-axis alignment must find its axes;
    # the residual is discretisation (boundary pixels / area ~ 2 %), so 0.05 is the tolerance.
    m = ellipse(79.6, 80.3, 40, 20, deg)[None]
    a = asymmetry(m)
    assert bool((a < 0.05).all())
    assert float(asymmetry_score(m)[0]) == 0.0


def test_asymmetry_of_l_shape_is_large() -> None:
    a = asymmetry(l_shape()[None])
    assert bool((a > 0.3).all())
    assert float(asymmetry_score(l_shape()[None])[0]) == 2.0
    # a shape symmetric about one principal axis only -> score 1 (a "D"/half-disc)
    half = disc(80, 80, 40) & (XS <= 80)
    assert float(asymmetry_score(half[None])[0]) == 1.0
    # threshold parameter matters
    assert float(asymmetry_score(half[None], threshold=0.99)[0]) == 0.0


def test_empty_masks_are_nan_not_crash() -> None:
    e = torch.zeros(2, 16, 16, dtype=torch.bool)
    e[1, 4:8, 4:8] = True
    assert float(area(e)[0]) == 0.0 and float(perimeter(e)[0]) == 0.0
    assert math.isnan(float(compactness(e)[0])) and not math.isnan(float(compactness(e)[1]))
    assert bool(torch.isnan(asymmetry(e)[0]).all()) and not bool(torch.isnan(asymmetry(e)[1]).any())
    assert math.isnan(float(asymmetry_score(e)[0]))
    assert bool(torch.isnan(centroid(e)[0]).all())
    rel = relative_area_change(e, e.flip(0))
    assert math.isnan(float(rel[0])) and float(rel[1]) == -1.0
    assert float(relative_area_change(e[:1], e[:1])[0]) == 0.0
    shift, shift_rel = centroid_shift(e, e.flip(0))
    assert bool(torch.isnan(shift).all()) and bool(torch.isnan(shift_rel).all())


def test_isic_report_and_summary_handle_empty_prediction() -> None:
    gt = torch.stack([disc(80, 80, 30), disc(70, 90, 25)]).long()
    clean = torch.stack([disc(80, 80, 30), disc(70, 90, 25)]).long()
    adv = torch.stack([disc(82, 83, 20), torch.zeros(H, H, dtype=torch.bool)]).long()
    r = clinical_report("isic", gt, clean, adv)
    assert all(v.shape == (2,) for v in r.values())
    assert torch.isclose(r["rel_area_change"][0], area(adv[:1] >= 1)[0] / area(clean[:1] >= 1)[0] - 1)
    assert float(r["rel_area_change"][1]) == -1.0
    assert torch.isclose(r["centroid_shift_px"][0], torch.tensor(math.hypot(2, 3)), atol=1e-3)
    assert math.isnan(float(r["compactness_adv"][1]))
    s = summarize_clinical(r)
    assert float(s["n_compactness_adv"]) == 1.0 and float(s["n_compactness_clean"]) == 2.0
    assert torch.isclose(s["compactness_adv"], r["compactness_adv"][0])
    assert not any(math.isnan(float(v)) for k, v in s.items() if k != "centroid_shift_px" and not k.startswith("centroid"))


def test_report_input_validation() -> None:
    x = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="Unknown task"):
        clinical_report("retina", x, x, x)
    with pytest.raises(ValueError, match="must match"):
        clinical_report("isic", x, x, torch.zeros(1, 8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        vcdr(torch.zeros(8, 8))
