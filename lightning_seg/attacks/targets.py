"""Target-mask generators for targeted attacks (registry ``TARGETS``).

Every generator maps class-index masks ``[B,H,W]`` (long) to target masks of the same shape
and dtype, batched in torch on the masks' device:

    fn(masks, *, generator=None, **params) -> Tensor

A numeric parameter given as a pair ``(lo, hi)`` is drawn uniformly per image with
``generator`` (which must live on the masks' device); a plain number applies to every image.

* ``other_image``: the ASMA paper's protocol, the target is another image's mask (a fixed
  cyclic derangement of the batch; :func:`derangement_pairs` gives dataset index pairs).
* Lesion edits (ISIC, foreground = mask >= 1): ``shift`` (pixels), ``scale`` and ``rotate``
  (degrees) about the foreground centroid, ``enlarge`` (disk dilation by ``radius`` pixels),
  ``remove`` (empty target). Geometric edits warp the one-hot mask bilinearly and take the
  argmax, so boundaries stay smooth and a connected shape stays one connected shape.
* Optic edits (glaucoma ``disc_cup`` masks {0 bg, 1 rim, 2 cup}): ``cup_enlarge`` / ``cup_shrink``
  change the vertical cup-to-disc ratio (vCDR = D(cup) / D(disc), D = max
  column count) by ``delta`` (absolute) or ``factor`` (relative) by scaling the cup about its
  centroid; the cup is kept inside the disc eroded by one pixel (a rim always remains). Images
  without a cup are returned unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.metrics.clinical import vcdr, vertical_diameter
from lightning_seg.registry import Registry

TARGETS: Registry[Tensor] = Registry("target")

Param = float | Sequence[float]


def _check(masks: Tensor) -> None:
    if masks.dim() != 3 or masks.dtype != torch.long:
        raise ValueError(f"masks must be long class-index maps [B,H,W], got {masks.dtype} {tuple(masks.shape)}")


def _draw(value: Param, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Per-image values: a number, or a (lo, hi) pair drawn uniformly with ``generator``."""
    if isinstance(value, (int, float)):
        return torch.full((n,), float(value), device=device)
    lo, hi = (float(v) for v in value)
    if hi < lo:
        raise ValueError(f"range ({lo}, {hi}) must have lo <= hi")
    u = torch.rand(n, generator=generator, device=device)
    return lo + (hi - lo) * u


def _centroid(binary: Tensor) -> tuple[Tensor, Tensor]:
    """(cy, cx) per image in pixels; the image centre for empty masks."""
    B, H, W = binary.shape
    b = binary.to(torch.float32)
    n = b.flatten(1).sum(1)
    ys = torch.arange(H, device=b.device, dtype=torch.float32)
    xs = torch.arange(W, device=b.device, dtype=torch.float32)
    cy = (b.sum(2) * ys).sum(1) / n.clamp_min(1)
    cx = (b.sum(1) * xs).sum(1) / n.clamp_min(1)
    empty = n == 0
    cy = torch.where(empty, torch.full_like(cy, (H - 1) / 2), cy)
    cx = torch.where(empty, torch.full_like(cx, (W - 1) / 2), cx)
    return cy, cx


def _warp(masks: Tensor, num_classes: int, cy: Tensor, cx: Tensor, scale: Tensor, angle_deg: Tensor,
          dy: Tensor, dx: Tensor) -> Tensor:
    """Similarity transform of the label map: output point p comes from input
    c + R(-a)(p - c - t) / s (rotation a about centroid c, scale s, translation t, in pixels)."""
    B, H, W = masks.shape
    dev = masks.device
    ys = torch.arange(H, device=dev, dtype=torch.float32).view(1, H, 1)
    xs = torch.arange(W, device=dev, dtype=torch.float32).view(1, 1, W)
    a = torch.deg2rad(angle_deg).view(B, 1, 1)
    s = scale.view(B, 1, 1)
    py = ys - cy.view(B, 1, 1) - dy.view(B, 1, 1)
    px = xs - cx.view(B, 1, 1) - dx.view(B, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    iy = (cos * py - sin * px) / s + cy.view(B, 1, 1)  # R(-a) in (y, x) coordinates
    ix = (sin * py + cos * px) / s + cx.view(B, 1, 1)
    grid = torch.stack([2 * ix / max(W - 1, 1) - 1, 2 * iy / max(H - 1, 1) - 1], dim=-1)
    onehot = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).to(torch.float32)
    fg = F.grid_sample(onehot[:, 1:], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    bg = 1 - fg.sum(1, keepdim=True)
    return torch.cat([bg, fg], 1).argmax(1)


def _nclass(masks: Tensor) -> int:
    return max(2, int(masks.max()) + 1) if masks.numel() else 2


@TARGETS.register("other_image")
def other_image(masks: Tensor, *, offset: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Target = the mask of image (i + offset) mod B (a fixed derangement for 0 < offset < B)."""
    _check(masks)
    B = masks.shape[0]
    if B < 2:
        raise ValueError(f"other_image aims each mask at another mask of the batch, but the batch holds {B} mask"
                         f"{'' if B == 1 else 's'}: it needs >= 2 (or use a target built from each mask, e.g. shift)")
    if offset % B == 0:
        raise ValueError(f"other_image offset={offset} is a multiple of the batch size {B}: each mask would be its own "
                         "target; use an offset that is not")
    return masks.roll(-offset, dims=0).clone()


def derangement_pairs(n: int, *, seed: int | None = None) -> list[tuple[int, int]]:
    """Sorted (source, target) dataset index pairs with source != target.

    seed None: the cyclic pairing i -> i + 1 (mod n); otherwise a seeded random derangement.
    """
    if n < 2:
        raise ValueError(f"derangement_pairs pairs each image with another one, but got {n} image"
                         f"{'' if n == 1 else 's'}: it needs n >= 2")
    if seed is None:
        return [(i, (i + 1) % n) for i in range(n)]
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return [(i, perm[i]) for i in range(n)]


@TARGETS.register("shift")
def shift(masks: Tensor, *, dy: Param = 0.0, dx: Param = 10.0, generator: torch.Generator | None = None) -> Tensor:
    """Translate the mask by (dy, dx) pixels (background enters at the border)."""
    _check(masks)
    B, dev = masks.shape[0], masks.device
    z = torch.zeros(B, device=dev)
    return _warp(masks, _nclass(masks), z, z, torch.ones(B, device=dev), z,
                 _draw(dy, B, generator, dev), _draw(dx, B, generator, dev))


@TARGETS.register("scale")
def scale(masks: Tensor, *, factor: Param = 1.2, generator: torch.Generator | None = None) -> Tensor:
    """Scale the foreground by ``factor`` about its centroid (>1 enlarges, <1 shrinks)."""
    _check(masks)
    B, dev = masks.shape[0], masks.device
    f = _draw(factor, B, generator, dev)
    if bool((f <= 0).any()):
        raise ValueError("scale factor must be > 0")
    cy, cx = _centroid(masks >= 1)
    z = torch.zeros(B, device=dev)
    return _warp(masks, _nclass(masks), cy, cx, f, z, z, z)


@TARGETS.register("rotate")
def rotate(masks: Tensor, *, angle: Param = 30.0, generator: torch.Generator | None = None) -> Tensor:
    """Rotate the foreground by ``angle`` degrees (counter-clockwise on screen) about its centroid."""
    _check(masks)
    B, dev = masks.shape[0], masks.device
    cy, cx = _centroid(masks >= 1)
    z = torch.zeros(B, device=dev)
    return _warp(masks, _nclass(masks), cy, cx, torch.ones(B, device=dev), -_draw(angle, B, generator, dev), z, z)


@TARGETS.register("enlarge")
def enlarge(masks: Tensor, *, radius: Param = 5.0, label: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Dilate class ``label`` by a disk of ``radius`` pixels (the dilated ring becomes ``label``)."""
    _check(masks)
    B, dev = masks.shape[0], masks.device
    r = _draw(radius, B, generator, dev).round().clamp_min(0)
    rmax = int(r.max())  # one sync, outside any attack loop
    if rmax == 0:
        return masks.clone()
    ys = torch.arange(-rmax, rmax + 1, device=dev, dtype=torch.float32)
    dist = (ys.view(-1, 1) ** 2 + ys.view(1, -1) ** 2).sqrt()  # [k,k]
    # per-image disk kernels as a grouped convolution (one group per image)
    kern = (dist.unsqueeze(0) <= r.view(B, 1, 1) + 1e-6).to(torch.float32).unsqueeze(1)  # [B,1,k,k]
    src = (masks == label).to(torch.float32).unsqueeze(0)  # [1,B,H,W]
    hit = F.conv2d(src, kern, padding=rmax, groups=B)[0] > 0.5
    return torch.where(hit, torch.full_like(masks, label), masks)


@TARGETS.register("remove")
def remove(masks: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Empty target: every pixel background (e.g. "erase the lesion")."""
    _check(masks)
    return torch.zeros_like(masks)


def _erode(binary: Tensor) -> Tensor:
    return -F.max_pool2d(-binary.to(torch.float32).unsqueeze(1), 3, stride=1, padding=1)[:, 0] > 0.5


def _cup_rescale(masks: Tensor, desired: Tensor) -> Tensor:
    _check(masks)
    B, dev = masks.shape[0], masks.device
    cup = masks == 2
    disc = masks >= 1
    d_cup = vertical_diameter(cup)
    d_disc = vertical_diameter(disc)
    has = d_cup > 0
    # keep at least a 1-pixel rim above and below and a 1-pixel cup
    desired = torch.minimum(desired, (d_disc - 2).clamp_min(1) / d_disc.clamp_min(1))
    desired = torch.maximum(desired, 1.0 / d_disc.clamp_min(1))
    s = torch.where(has, desired * d_disc / d_cup.clamp_min(1), torch.ones_like(d_cup))
    cy, cx = _centroid(cup)
    z = torch.zeros(B, device=dev)
    new_cup = _warp(cup.long(), 2, cy, cx, s, z, z, z) == 1
    new_cup = new_cup & _erode(disc)
    out = torch.where(disc, torch.ones_like(masks), torch.zeros_like(masks))
    out = torch.where(new_cup, torch.full_like(masks, 2), out)
    return torch.where(has.view(B, 1, 1), out, masks)


def _cup_desired(masks: Tensor, delta: Param | None, factor: Param | None, sign: float,
                 generator: torch.Generator | None, to: Param | None = None) -> Tensor:
    if sum(p is not None for p in (delta, factor, to)) > 1:
        raise ValueError("give only one of delta (absolute vCDR change), factor (relative) or to (vCDR to reach)")
    if delta is None and factor is None and to is None:
        delta = 0.2
    B, dev = masks.shape[0], masks.device
    cur = vcdr(masks)
    if to is not None:  # the smallest edit that reaches the vCDR `to`; masks already past it stay as they are
        goal = _draw(to, B, generator, dev)
        return torch.maximum(cur, goal) if sign > 0 else torch.minimum(cur, goal)
    if delta is not None:
        return cur + sign * _draw(delta, B, generator, dev)
    f = _draw(factor, B, generator, dev)
    return cur * (f if sign > 0 else 1.0 / f)


@TARGETS.register("cup_enlarge")
def cup_enlarge(masks: Tensor, *, delta: Param | None = None, factor: Param | None = None, to: Param | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Raise the vCDR by ``delta`` (absolute, default 0.2), multiply it by ``factor`` (>1), or raise it to at least
    ``to`` (e.g. 0.75: every eye looks glaucomatous at the 0.7 screening threshold); the cup stays inside the disc."""
    return _cup_rescale(masks, _cup_desired(masks, delta, factor, +1.0, generator, to))


@TARGETS.register("cup_shrink")
def cup_shrink(masks: Tensor, *, delta: Param | None = None, factor: Param | None = None, to: Param | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """Lower the vCDR by ``delta`` (absolute, default 0.2), divide it by ``factor`` (>1), or lower it to at most ``to``."""
    return _cup_rescale(masks, _cup_desired(masks, delta, factor, -1.0, generator, to))


def make_target(name: str, masks: Tensor, **params: object) -> Tensor:
    """Look up ``name`` in ``TARGETS`` and apply it (unknown names list close matches)."""
    return TARGETS.get(name)(masks, **params)


__all__ = [
    "TARGETS", "cup_enlarge", "cup_shrink", "derangement_pairs", "enlarge", "make_target", "other_image", "remove",
    "rotate", "scale", "shift", "vcdr", "vertical_diameter",
]

