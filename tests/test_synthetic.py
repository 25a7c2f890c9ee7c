"""Tests of the procedural synthetic ISIC-like and fundus generators (datamodules/synthetic.py)."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lightning_seg.datamodules.synthetic import (
    _draw_fundus,
    _draw_isic,
    fundus_vcdr_from_mask,
    synth_fundus,
    synth_fundus_params,
    synth_isic,
    synth_isic_params,
)
from scipy import ndimage

from lightning_seg.viz.preview import mask_contour, preview_grid

SIZES = (64, 128, 256)


def _touches_background(region: np.ndarray, background: np.ndarray) -> bool:
    p = np.pad(background, 1)
    nb = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return bool((region & nb).any())


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("gen", [synth_isic, synth_fundus])
def test_deterministic_and_order_independent(gen):
    a_img, a_m = gen(7, seed=3)
    gen(2, seed=3)
    gen(7, seed=4)  # other calls in between must not matter
    b_img, b_m = gen(7, seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_m.tobytes() == b_m.tobytes()
    c_img, c_m = gen(7, seed=4)
    d_img, d_m = gen(8, seed=3)
    assert c_img.tobytes() != a_img.tobytes() and not np.array_equal(c_m, a_m)
    assert d_img.tobytes() != a_img.tobytes() and not np.array_equal(d_m, a_m)


def test_same_bytes_in_a_fresh_process():
    # a new interpreter (as in a DataLoader worker) must produce the identical sample;
    # the module is loaded by path so the check does not pay for the package imports
    path = Path(__file__).resolve().parents[1] / "datamodules" / "synthetic.py"
    code = (
        "import hashlib, importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('synthetic', {str(path)!r})\n"
        "s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s)\n"
        "for f in (s.synth_isic, s.synth_fundus):\n"
        "    i, m = f(11, seed=5)\n"
        "    print(hashlib.sha256(i.tobytes() + m.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = []
    for f in (synth_isic, synth_fundus):
        i, m = f(11, seed=5)
        expected.append(hashlib.sha256(i.tobytes() + m.tobytes()).hexdigest())
    assert out.stdout.split() == expected


def test_isic_and_fundus_streams_independent_of_each_other():
    # same (seed, index) must not reuse one random stream for both data sets
    p = synth_isic_params(0)
    q = synth_fundus_params(0)
    assert p["area_frac"] != q["vcdr"]


# ------------------------------------------------------------ dtype / shape / values
@pytest.mark.parametrize("size", SIZES)
def test_isic_dtype_shape_values(size):
    for i in range(3):
        img, m = synth_isic(i, size=size)
        assert img.dtype == np.uint8 and img.shape == (size, size, 3)
        assert m.dtype == np.uint8 and m.shape == (size, size)
        assert set(np.unique(m)) == {0, 1}
        assert img.std() > 5  # not a flat image


@pytest.mark.parametrize("size", SIZES)
def test_fundus_dtype_shape_values(size):
    for i in range(3):
        img, m = synth_fundus(i, size=size)
        assert img.dtype == np.uint8 and img.shape == (size, size, 3)
        assert m.dtype == np.uint8 and m.shape == (size, size)
        assert set(np.unique(m)) == {0, 1, 2}
        img_d, m_d = synth_fundus(i, size=size, task="disc")
        assert set(np.unique(m_d)) == {0, 1}
        np.testing.assert_array_equal(m_d, (m >= 1).astype(np.uint8))
        np.testing.assert_array_equal(img_d, img)  # the task changes the labels only


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="task"):
        synth_fundus(0, task="cup")
    with pytest.raises(ValueError, match="index"):
        synth_isic(-1)
    with pytest.raises(ValueError, match="size"):
        synth_isic(0, size=4)
    with pytest.raises(ValueError, match="seed"):
        synth_fundus(0, seed=-2)
    with pytest.raises(ValueError, match="size must be >= 32"):
        synth_fundus(0, size=24)


def test_masks_never_empty_at_the_smallest_sizes():
    for i in range(150):
        _, m = synth_fundus(i, size=32)
        assert (m == 2).any() and (m == 1).any() and (m == 0).any(), f"index {i}"
        _, m = synth_isic(i, size=16)
        assert m.any() and not m.all(), f"index {i}"


# ---------------------------------------------------------------------- ISIC masks
def _isic_mask_reference(p: dict, size: int) -> np.ndarray:
    """Independent float64 re-implementation of the lesion indicator from the params."""
    t = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(t, t)
    dx, dy = x - p["center"][0], y - p["center"][1]
    ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
    u = (ca * dx + sa * dy) / p["scale"]
    v = (-sa * dx + ca * dy) / (p["scale"] * p["aspect"])
    th = np.arctan2(v, u)
    k = np.arange(2, 2 + len(p["amps"]))
    r = 1 + np.sum(p["amps"][:, None, None] * np.cos(k[:, None, None] * th + p["phases"][:, None, None]), 0)
    return (np.hypot(u, v) < r).astype(np.uint8)


@pytest.mark.parametrize("size", [64, 128])
def test_isic_mask_is_the_analytic_lesion(size):
    for i in range(10):
        _, m = synth_isic(i, size=size)
        ref = _isic_mask_reference(synth_isic_params(i), size)
        # only float ties exactly on the boundary may differ
        assert np.count_nonzero(m != ref) <= 2


def test_isic_lesion_single_component_nonempty_and_sized():
    fracs = []
    for size in (64, 128):
        for i in range(60):
            _, m = synth_isic(i, seed=1, size=size)
            _, n = ndimage.label(m)
            assert n == 1, f"index {i} size {size}: {n} components"
            fracs.append(m.mean())
    fracs = np.array(fracs)
    assert fracs.min() >= 0.05 and fracs.max() <= 0.45
    assert fracs.max() - fracs.min() > 0.2  # scale actually varies


def test_isic_area_matches_params_and_lesion_mostly_inside_image():
    for i in range(20):
        p = synth_isic_params(i)
        _, m = synth_isic(i, size=256)
        assert abs(m.mean() - p["area_frac"]) < 0.01
    # the lesion rarely touches the border (only lesions too big to fit)
    touching = sum(bool(synth_isic(i, size=64)[1][[0, -1], :].any() or synth_isic(i, size=64)[1][:, [0, -1]].any())
                   for i in range(40))
    assert touching <= 8


def test_hairs_do_not_change_the_mask():
    changed = 0
    for i in range(12):
        img_h, m_h = _draw_isic(i, 0, 128, hairs=True)
        img_n, m_n = _draw_isic(i, 0, 128, hairs=False)
        np.testing.assert_array_equal(m_h, m_n)
        assert np.mean(img_h == img_n) > 0.5  # same scene, only the hairs differ
        changed += int(np.abs(img_h.astype(int) - img_n.astype(int)).max() > 40)
        np.testing.assert_array_equal(img_h, synth_isic(i, size=128)[0])  # public = with hairs
    assert changed >= 3  # hairs are actually drawn (dark lines) in a good part of the set


def test_isic_lesion_is_darker_than_skin():
    def gap(img: np.ndarray, m: np.ndarray) -> float:
        lum = img.astype(float).mean(-1)
        return lum[~ndimage.binary_dilation(m, iterations=3)].mean() - lum[ndimage.binary_erosion(m, iterations=3)].mean()

    full = [gap(*synth_isic(i, contrast=(1.0, 1.0))) for i in range(10)]
    faint = [gap(*synth_isic(i)) for i in range(10)]  # the default: faint lesions, darker on average only
    assert min(full) > 15
    assert 2 < np.mean(faint) < 0.5 * np.mean(full)


def test_isic_not_separable_by_one_global_grey_threshold():
    # realism: a single global luminance threshold must not segment the set perfectly
    imgs, masks = zip(*[synth_isic(i, size=64) for i in range(32)])
    lum = np.stack(imgs).astype(float).mean(-1)
    gt = np.stack(masks).astype(bool)
    best = 0.0
    for thr in range(10, 250, 5):
        pred = lum < thr
        best = max(best, 2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
    assert best < 0.88


# -------------------------------------------------------------------- fundus masks
def test_cup_strictly_inside_disc():
    for i in range(40):
        p = synth_fundus_params(i)
        for size in (64, 256):
            _, m = synth_fundus(i, size=size)
            assert (m == 2).any() and (m == 1).any()
            if size == 256:  # a rim at least one pixel wide separates cup and background
                assert not _touches_background(m == 2, m == 0), f"index {i}"
        # analytic: in the disc frame the cup lies within radius 0.88 < 1
        au = p["cup_axes"][0] / p["disc_axes"][0]
        bv = p["cup_axes"][1] / p["disc_axes"][1]
        assert math.hypot(*p["cup_offset_disc_frame"]) + max(au, bv) <= 0.88 + 1e-9


def _ellipse_ref(c, axes, angle, size):
    t = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(t, t)
    dx, dy = x - c[0], y - c[1]
    ca, sa = math.cos(angle), math.sin(angle)
    u = (ca * dx + sa * dy) / axes[0]
    v = (-sa * dx + ca * dy) / axes[1]
    return u * u + v * v < 1


def test_fundus_mask_is_the_analytic_disc_and_cup():
    for i in range(10):
        p = synth_fundus_params(i)
        _, m = synth_fundus(i, size=128)
        disc = _ellipse_ref(p["disc_center"], p["disc_axes"], p["angle"], 128)
        cup = _ellipse_ref(p["cup_center"], p["cup_axes"], p["angle"], 128)
        assert np.count_nonzero((m >= 1) != disc) <= 1
        assert np.count_nonzero((m == 2) != cup) <= 1


@pytest.mark.parametrize("size", [128, 256])
def test_vcdr_from_mask_matches_params(size):
    for i in range(40):
        p = synth_fundus_params(i)
        _, m = synth_fundus(i, size=size)
        disc_px = p["disc_height"] * size
        # column-max heights are exact up to about one pixel for cup and disc each
        assert abs(fundus_vcdr_from_mask(m) - p["vcdr"]) <= 2.0 / disc_px, f"index {i}"


def test_vcdr_params_are_consistent_and_cover_screening_thresholds():
    v = []
    for i in range(400):
        p = synth_fundus_params(i, seed=2)
        a, b = p["disc_axes"]
        ac, bc = p["cup_axes"]
        phi = p["angle"]
        h_d = 2 * math.sqrt((a * math.sin(phi)) ** 2 + (b * math.cos(phi)) ** 2)
        h_c = 2 * math.sqrt((ac * math.sin(phi)) ** 2 + (bc * math.cos(phi)) ** 2)
        assert math.isclose(p["vcdr"], h_c / h_d, rel_tol=1e-9)
        assert b > a  # slightly vertical disc
        v.append(p["vcdr"])
    v = np.array(v)
    assert v.min() >= 0.3 and v.max() <= 0.8
    # roughly uniform: each fifth of [0.3, 0.8] holds 20 % +- 7 %
    hist, _ = np.histogram(v, bins=5, range=(0.3, 0.8))
    assert np.all(np.abs(hist / v.size - 0.2) < 0.07)
    assert 0.25 < (v >= 0.6).mean() < 0.55 and 0.1 < (v >= 0.7).mean() < 0.35


def test_disc_position_varies_and_disc_is_bright():
    xs = [synth_fundus_params(i)["disc_center"][0] for i in range(40)]
    assert min(xs) < 0.4 and max(xs) > 0.6  # left and right eyes
    for i in range(8):
        img, m = synth_fundus(i)
        lum = img.astype(float).mean(-1)
        fov = lum > 20
        assert lum[m >= 1].mean() > lum[fov & (m == 0)].mean() + 40
        assert lum[m == 2].mean() > lum[m == 1].mean()  # pale cup
        assert img[0, 0].max() < 30  # dark corner outside the field of view


def test_vessels_cross_the_disc_rim_and_do_not_change_the_mask():
    hits = 0
    for i in range(8):
        img_v, m_v = _draw_fundus(i, 0, 256, "disc_cup", vessels=True)
        img_n, m_n = _draw_fundus(i, 0, 256, "disc_cup", vessels=False)
        np.testing.assert_array_equal(m_v, m_n)
        assert np.mean(img_v == img_n) > 0.5  # same scene, only the vessels differ
        np.testing.assert_array_equal(img_v, synth_fundus(i, size=256)[0])  # public = with vessels
        # rim pixels away from the disc edge that vessels darken clearly (green channel)
        inner_rim = ndimage.binary_erosion(m_v >= 1, iterations=3) & (m_v == 1)
        drop = img_n[..., 1].astype(int) - img_v[..., 1].astype(int)
        hits += int((drop[inner_rim] > 30).mean() > 0.02)
    assert hits >= 6


def test_same_scene_at_every_size():
    # geometry does not depend on the output size
    p = synth_isic_params(4)
    fr = [synth_isic(4, size=s)[1].mean() for s in SIZES]
    assert max(fr) - min(fr) < 0.02 and abs(fr[-1] - p["area_frac"]) < 0.01
    v = [fundus_vcdr_from_mask(synth_fundus(4, size=s)[1]) for s in SIZES]
    assert max(v) - min(v) < 0.15


# ------------------------------------------------------------------------ preview
def test_preview_grid_draws_gt_and_pred_contours():
    imgs, masks = zip(*[synth_fundus(i, size=64) for i in range(3)])
    preds = [np.zeros_like(masks[0]), masks[1], masks[2]]
    g = preview_grid(imgs, masks, preds, ncols=3, pad=2)
    assert g.dtype == np.uint8 and g.shape == (64, 3 * 64 + 4, 3)
    tile0 = g[:, :64]
    edge = mask_contour(masks[0] >= 1)
    assert (tile0[edge] == (0, 114, 178)).all(axis=-1).mean() > 0.5  # disc contour in Okabe-Ito blue
    assert not (tile0 == (230, 159, 0)).all(-1).any()  # empty prediction -> no orange
    tile1 = g[:, 66:130]
    assert (tile1 == (230, 159, 0)).all(-1).any()  # prediction contour in Okabe-Ito orange


def test_preview_grid_accepts_float_chw_tensors():
    torch = pytest.importorskip("torch")
    img, m = synth_isic(0, size=32)
    x = torch.tensor(img).permute(2, 0, 1).float()[None] / 255
    g = preview_grid(x, torch.tensor(m)[None], scale=2, pad=0)
    assert g.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="same length"):
        preview_grid([img, img], [m])


def test_mask_contour_of_a_square():
    r = np.zeros((6, 6), bool)
    r[1:5, 1:5] = True
    c = mask_contour(r)
    assert c.sum() == 12 and not c[2:4, 2:4].any()


def test_isic_contrast_option_fades_the_lesion_only():
    from lightning_seg.datamodules.synthetic import synth_isic

    img, mask = synth_isic(3, seed=0, size=48, contrast=(1.0, 1.0))
    faint, faint_mask = synth_isic(3, seed=0, size=48, contrast=(0.3, 0.3))
    assert (mask == faint_mask).all()
    inside, outside = mask.astype(bool), ~mask.astype(bool)
    gap = lambda im: abs(float(im[outside].mean()) - float(im[inside].mean()))  # noqa: E731
    assert gap(faint) < 0.5 * gap(img)
    with pytest.raises(ValueError, match="contrast"):
        synth_isic(3, seed=0, size=48, contrast=(0.0, 1.0))


def test_isic_contrast_reaches_the_generator_through_data_options():
    from lightning_seg.datamodules import build_datamodule

    dm = build_datamodule("isic", image_size=32, num_train=2, num_val=1, num_test=1, options={"contrast": [0.3, 0.3]})
    dm.setup()
    assert dm.dataset("train")[(0, 0)]["image"].shape[-1] == 32
    with pytest.raises(ValueError, match="contrst.*allowed: contrast"):
        build_datamodule("isic", options={"contrst": [0.3, 1.0]})
