"""Target-mask generators: geometry, clinical edits (vCDR), plausibility, seeds, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_seg.attacks.targets import (
    TARGETS,
    cup_enlarge,
    cup_shrink,
    derangement_pairs,
    enlarge,
    make_target,
    other_image,
    remove,
    rotate,
    scale,
    shift,
    vcdr,
)
from lightning_seg.registry import UnknownNameError

H = W = 64


def grid():
    return torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")


def lesions() -> torch.Tensor:
    """Batch of 3 lesion masks: a disk, an ellipse, an off-centre blob (union of two disks)."""
    yy, xx = grid()
    a = ((yy - 30) ** 2 + (xx - 28) ** 2) <= 10**2
    b = ((yy - 32) ** 2 / 14**2 + (xx - 30) ** 2 / 7**2) <= 1
    c = (((yy - 24) ** 2 + (xx - 22) ** 2) <= 8**2) | (((yy - 30) ** 2 + (xx - 30) ** 2) <= 7**2)
    return torch.stack([a, b, c]).long()


def optic() -> torch.Tensor:
    yy, xx = grid()
    disc = ((yy - 32) ** 2 / 20**2 + (xx - 30) ** 2 / 16**2) <= 1
    cup = ((yy - 33) ** 2 / 9**2 + (xx - 30) ** 2 / 7**2) <= 1
    cup2 = ((yy - 31) ** 2 / 12**2 + (xx - 31) ** 2 / 9**2) <= 1
    return torch.stack([disc.long() + cup.long(), disc.long() + cup2.long()])


def plausible(mask: np.ndarray) -> None:
    """One connected region, no holes, smooth boundary (a 3x3 opening/closing changes < 4 %
    or a few raster-corner pixels)."""
    fg = mask.astype(bool)
    _, n = ndimage.label(fg)
    assert n == 1, f"{n} connected components"
    assert np.array_equal(ndimage.binary_fill_holes(fg), fg), "holes"
    st = np.ones((3, 3), bool)
    changed = (ndimage.binary_opening(fg, st) ^ fg).sum() + (ndimage.binary_closing(fg, st) ^ fg).sum()
    assert changed <= max(0.04 * fg.sum(), 6), f"rough boundary: {changed} of {fg.sum()}"


def test_shift_is_exact_translation():
    m = lesions()
    out = shift(m, dy=-3.0, dx=5.0)
    assert torch.equal(out, torch.roll(m, shifts=(-3, 5), dims=(1, 2)))  # lesions stay inside


@pytest.mark.parametrize("factor", [0.6, 1.5])
def test_scale_area_and_centroid(factor):
    m = lesions()
    out = scale(m, factor=factor)
    ratio = out.flatten(1).sum(1).float() / m.flatten(1).sum(1).float()
    assert torch.allclose(ratio, torch.full_like(ratio, factor**2), rtol=0.12)
    for i in range(3):
        c0 = np.array(ndimage.center_of_mass(m[i].numpy()))
        c1 = np.array(ndimage.center_of_mass(out[i].numpy()))
        assert np.abs(c0 - c1).max() < 1.0
        plausible(out[i].numpy())


def test_rotate_ellipse_90():
    m = lesions()[1:2]  # vertical ellipse 14 x 7
    out = rotate(m, angle=90.0)
    ys, xs = torch.nonzero(out[0], as_tuple=True)
    assert (xs.max() - xs.min()) >= 1.8 * (ys.max() - ys.min())  # now horizontal (28 x 14)
    assert abs(int(out.sum()) - int(m.sum())) < 0.06 * int(m.sum())
    plausible(out[0].numpy())


def test_enlarge_disk():
    m = lesions()
    out = enlarge(m, radius=4)
    area = float(out[0].sum())
    assert abs(area - math.pi * 14**2) < 0.06 * area
    assert ((out == 1) | (m == 0)).all()  # only grows
    for i in range(3):
        plausible(out[i].numpy())


def test_remove_and_other_image():
    m = lesions()
    assert remove(m).sum() == 0
    o = other_image(m)
    assert torch.equal(o[0], m[1]) and torch.equal(o[2], m[0])
    with pytest.raises(ValueError, match=">= 2"):
        other_image(m[:1])
    pairs = derangement_pairs(5)
    assert pairs == sorted(pairs) and all(s != t for s, t in pairs) and sorted(t for _, t in pairs) == list(range(5))
    r = derangement_pairs(7, seed=3)
    assert r == derangement_pairs(7, seed=3) and all(s != t for s, t in r)


@pytest.mark.parametrize("fn,sign", [(cup_enlarge, 1.0), (cup_shrink, -1.0)])
def test_cup_vcdr_change(fn, sign):
    m = optic()
    before = vcdr(m)
    out = fn(m, delta=0.15)
    after = vcdr(out)
    d_disc = (m >= 1).sum(1).amax(1).float()
    assert torch.allclose(after, before + sign * 0.15, atol=1.5 / float(d_disc.min()))
    assert torch.equal(out >= 1, m >= 1)  # disc unchanged
    cup = out == 2
    assert (~cup | (m >= 1)).all()
    eroded = torch.from_numpy(ndimage.binary_erosion((m >= 1).numpy(), np.ones((1, 3, 3), bool)))
    assert (~cup | eroded).all()  # a rim remains around the cup
    for i in range(2):
        plausible(cup[i].numpy())
    rel = fn(m, factor=1.3)
    expect = before * 1.3 if sign > 0 else before / 1.3
    assert torch.allclose(vcdr(rel), expect, atol=1.5 / float(d_disc.min()))


def test_cup_to_reaches_a_vcdr_and_leaves_masks_past_it_alone():
    m = optic()
    before = vcdr(m)
    d_disc = (m >= 1).sum(1).amax(1).float()
    goal = float(before.max()) + 0.1  # above every image's vCDR: each cup grows to it
    up = cup_enlarge(m, to=goal)
    assert torch.allclose(vcdr(up), torch.full_like(before, goal), atol=1.5 / float(d_disc.min()))
    assert torch.equal(cup_enlarge(m, to=float(before.min()) - 0.05), m)  # already past the goal: unchanged
    assert torch.equal(cup_shrink(m, to=float(before.max()) + 0.05), m)
    with pytest.raises(ValueError, match="only one of"):
        cup_enlarge(m, delta=0.1, to=0.7)


def test_cup_enlarge_capped_inside_disc():
    m = optic()
    out = cup_enlarge(m, delta=0.9)
    assert (vcdr(out) < 1).all() and (vcdr(out) > vcdr(m)).all()
    assert torch.equal(out >= 1, m >= 1)
    nocup = (m >= 1).long()
    assert torch.equal(cup_enlarge(nocup), nocup)  # no cup: unchanged


def test_random_variants_seeded_and_per_image():
    m = lesions()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = shift(m, dy=(-4.0, 4.0), dx=(-4.0, 4.0), generator=g(1))
    b = shift(m, dy=(-4.0, 4.0), dx=(-4.0, 4.0), generator=g(1))
    c = shift(m, dy=(-4.0, 4.0), dx=(-4.0, 4.0), generator=g(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    s = scale(m[:1].expand(3, -1, -1).contiguous(), factor=(0.7, 1.4), generator=g(0))
    areas = s.flatten(1).sum(1)
    assert len(set(areas.tolist())) == 3  # different draws per image
    r = enlarge(m, radius=(1.0, 6.0), generator=g(0))
    assert (r.flatten(1).sum(1) >= m.flatten(1).sum(1)).all()
    o = cup_shrink(optic(), delta=(0.05, 0.2), generator=g(0))
    assert (vcdr(o) < vcdr(optic())).all()


def test_registry():
    assert set(TARGETS.names()) == {"other_image", "shift", "scale", "rotate", "enlarge", "remove", "cup_enlarge",
                                    "cup_shrink"}
    with pytest.raises(UnknownNameError, match="cup_enlarge"):
        TARGETS.get("cup_enlrge")
    assert torch.equal(make_target("remove", lesions()), torch.zeros_like(lesions()))
    with pytest.raises(ValueError, match="long"):
        shift(lesions().float())
