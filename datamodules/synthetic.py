"""Procedural synthetic ISIC-like (dermoscopy) and fundus (optic disc / cup) samples.

These generators are the default, offline data of the project: every sample is drawn
on the fly from ``(seed, index)`` so data loaders need no files and tests never touch
real data.

Design rules
------------
* Determinism: all randomness comes from ``np.random.default_rng([seed, index, TAG])``
  (PCG64 streams are identical across processes and platforms), so a sample does not
  depend on call order or worker id. Geometry is sampled from one stream and rendering
  noise from a second one (``[seed, index, TAG, 1]``); geometry and appearance therefore
  do not depend on the output ``size`` (the same scene is rasterised at any size).
* Exact masks: the mask is the indicator of the same analytic region (star-shaped
  Fourier blob for the lesion, ellipses for disc and cup) that draws the image. The
  anti-aliased image edge uses ``alpha = clip(0.5 + d / w, 0, 1)`` of the same signed
  distance ``d``, and the mask is exactly ``d > 0`` (i.e. ``alpha > 0.5``). Masks are
  computed with numpy only; OpenCV is used for image-only effects (hairs, vessels,
  blur), which never enter a mask.
* Class conventions (project-wide): ISIC {0 background, 1 lesion}; fundus task
  ``disc_cup`` {0 background, 1 rim, 2 cup}, task ``disc`` {0, 1}.
* vCDR follows the REFUGE challenge evaluation code (ignaciorlando/refuge-evaluation): vertical
  diameter = max over columns of the number of mask pixels; the analytic value
  reported by :func:`synth_fundus_params` is the ratio of the vertical extents of the
  (rotated) cup and disc ellipses.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from lightning_seg.config import DataConfig

__all__ = [
    "synth_isic",
    "synth_isic_params",
    "synth_fundus",
    "synth_fundus_params",
    "fundus_vcdr_from_mask",
]

# Dataset tags keep the ISIC and fundus streams independent for the same (seed, index).
_TAG_ISIC = 0x151C
_TAG_FUNDUS = 0xF0D5
_FUNDUS_TASKS = ("disc_cup", "disc")
# Lesion contrast of the embedded ISIC default: the lesion colour is blended towards the skin by
# U[0.1, 0.3]. Faint lesions make a segmenter about as fragile under attack as the ASMA paper's U-Net
# on real ISIC images while it still segments them about as well as real ISIC models do; full-contrast
# lesions make it far more robust than on real data (docs/experiments.md, "Lesion contrast and fragility").
ISIC_CONTRAST = (0.1, 0.3)
_FUNDUS_MIN_SIZE = 32  # smallest size with a non-empty cup for every sample (checked)

# Lesion boundary: r(theta) = 1 + sum_k a_k cos(k theta + phi_k), k = 2.._N_HARM.
_N_HARM = 9


# ----------------------------------------------------------------------------- helpers
def _check_args(index: int, seed: int, size: int) -> None:
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an int >= 16 (pixels), got {size!r}")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in the unit square, x to the right, y downwards."""
    # float32: the per-pixel fields dominate the cost; masks are defined on these same
    # float32 fields, so image and mask stay consistent.
    t = ((np.arange(size, dtype=np.float32) + np.float32(0.5)) / np.float32(size))
    return t[None, :], t[:, None]


def _lowfreq(rng: np.random.Generator, size: int, grid: int, channels: int) -> np.ndarray:
    """Smooth noise: a ``grid x grid`` Gaussian lattice upsampled bicubically.

    The lattice is drawn independently of ``size`` so the pattern is the same scene at
    every resolution.
    """
    lat = rng.standard_normal((grid, grid, channels)).astype(np.float32)
    up = cv2.resize(lat, (size, size), interpolation=cv2.INTER_CUBIC)
    return up.reshape(size, size, channels)


_NOISE_TILE = 256
_noise_cache: list[np.ndarray] = []


def _sensor_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit Gaussian noise [size, size, 3]: a random crop / flip of a fixed tile.

    Drawing 3 * size^2 normals per sample costs more than the whole rest of the image
    at 128 px; a crop at a random offset of one fixed (seeded) wrap-padded tile is just
    as deterministic and indistinguishable at the amplitudes used here.
    """
    oy, ox, flip = (int(v) for v in rng.integers(0, _NOISE_TILE, 3))
    if size > _NOISE_TILE:
        return rng.standard_normal((size, size, 3), dtype=np.float32)
    if not _noise_cache:
        tile = np.random.default_rng(0x5E1).standard_normal((_NOISE_TILE, _NOISE_TILE, 3), dtype=np.float32)
        _noise_cache.append(np.pad(tile, ((0, _NOISE_TILE), (0, _NOISE_TILE), (0, 0)), mode="wrap"))
    crop = _noise_cache[0][oy: oy + size, ox: ox + size]
    return crop[::-1] if flip & 1 else crop


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.2:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px,
                            borderType=cv2.BORDER_REFLECT)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _coverage_canvas(size: int, ss: int) -> np.ndarray:
    return np.zeros((size * ss, size * ss), dtype=np.uint8)


def _downsample_coverage(canvas: np.ndarray, size: int) -> np.ndarray:
    """Supersampled uint8 line canvas -> float coverage in [0, 1] at ``size``."""
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * (1.0 / 255.0)


def _fourier_radius(cos1: np.ndarray, sin1: np.ndarray, amps: np.ndarray,
                    phases: np.ndarray) -> np.ndarray:
    """r(theta) = 1 + sum_k a_k cos(k theta + phi_k), k = 2..; evaluated from cos/sin.

    cos(k theta) and sin(k theta) come from the angle-addition recurrence, so no
    per-pixel trigonometric call is needed (the generator runs inside data loaders).
    """
    r = np.ones_like(cos1)
    ck, sk = cos1, sin1
    for j in range(1, len(amps) + 1):  # harmonic k = j + 1
        ck, sk = ck * cos1 - sk * sin1, sk * cos1 + ck * sin1
        a, p = amps[j - 1], phases[j - 1]
        r += a * (ck * math.cos(p) - sk * math.sin(p))
    return r


# ------------------------------------------------------------------------------- ISIC
def synth_isic_params(index: int, *, seed: int = DataConfig.data_seed) -> dict[str, Any]:
    """Sampled lesion geometry (unit-square coordinates, independent of image size).

    Keys: ``center`` (x, y), ``scale`` (major semi-axis of the base ellipse),
    ``aspect`` (minor / major), ``angle`` (rad), ``amps``/``phases`` of harmonics
    2..12 of the radial function, ``area_frac`` (analytic lesion area / image area).
    The lesion is star-shaped around ``center`` with r(theta) >= 0.5 > 0, hence one
    connected region.
    """
    _check_args(index, seed, 16)
    rng = np.random.default_rng([int(seed), int(index), _TAG_ISIC])
    k = np.arange(2, _N_HARM + 1, dtype=np.float64)
    # Power-law envelope: low harmonics give the overall irregular shape, high ones
    # the finer border notches; the total bound keeps r(theta) >= 0.5 (star-shaped).
    raw = rng.uniform(0.2, 1.0, k.size) * k ** -1.6
    total = rng.uniform(0.12, 0.5)
    amps = raw / raw.sum() * total
    phases = rng.uniform(0.0, 2.0 * math.pi, k.size)
    aspect = float(rng.uniform(0.6, 1.0))
    angle = float(rng.uniform(0.0, math.pi))
    area_frac = float(rng.uniform(0.07, 0.40))
    # Area of {rho < r(theta)} in the ellipse frame is pi (1 + sum a_k^2 / 2); scale so
    # the lesion covers ``area_frac`` of the unit square.
    base_area = math.pi * (1.0 + 0.5 * float(np.sum(amps ** 2)))
    scale = math.sqrt(area_frac / (aspect * base_area))
    # Bounding box of the boundary curve, then a centre that keeps it inside the image
    # (2 % margin); lesions too big to fit are centred (they touch the border least).
    th = np.linspace(0.0, 2.0 * math.pi, 360, endpoint=False)
    r = _fourier_radius(np.cos(th), np.sin(th), amps, phases)
    ex, ey = scale * r * np.cos(th), scale * aspect * r * np.sin(th)
    ca, sa = math.cos(angle), math.sin(angle)
    bx, by = ca * ex - sa * ey, sa * ex + ca * ey
    center = []
    for lo_ext, hi_ext in ((bx.min(), bx.max()), (by.min(), by.max())):
        lo, hi = 0.02 - lo_ext, 0.98 - hi_ext
        center.append(float(rng.uniform(lo, hi)) if lo < hi else 0.5 - 0.5 * (lo_ext + hi_ext))
    return {
        "center": (center[0], center[1]),
        "scale": scale,
        "aspect": aspect,
        "angle": angle,
        "amps": amps,
        "phases": phases,
        "area_frac": area_frac,
    }


def _isic_geometry(p: dict[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (t, d_px): normalised radius rho / r(theta) and signed distance proxy.

    ``d_px > 0`` exactly inside the lesion; it approximates the distance to the border
    in pixels (used only for the anti-aliasing ramp of the image).
    """
    x, y = _grid(size)
    dx, dy = x - p["center"][0], y - p["center"][1]
    ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
    u = (ca * dx + sa * dy) / p["scale"]
    v = (-sa * dx + ca * dy) / (p["scale"] * p["aspect"])
    rho = np.sqrt(u * u + v * v)
    safe = np.maximum(rho, 1e-12)
    r = _fourier_radius(u / safe, v / safe, p["amps"], p["phases"])
    t = rho / r
    d_px = (r - rho) * p["scale"] * math.sqrt(p["aspect"]) * size
    return t, d_px


def _draw_isic(index: int, seed: int, size: int, hairs: bool = True, contrast: tuple[float, float] = ISIC_CONTRAST
               ) -> tuple[np.ndarray, np.ndarray]:
    p = synth_isic_params(index, seed=seed)
    rng = np.random.default_rng([int(seed), int(index), _TAG_ISIC, 1])
    t, d_px = _isic_geometry(p, size)
    mask = (d_px > 0).astype(np.uint8)
    t = t.astype(np.float32)

    # --- skin: tone from light pink-beige to tanned brown, smooth + fine texture
    tone = rng.uniform(0.0, 1.0)
    light = np.array([0.93, 0.76, 0.70], np.float32)
    dark = np.array([0.58, 0.40, 0.30], np.float32)
    skin_col = light + tone * (dark - light) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    lf = _lowfreq(rng, size, 5, 3)
    skin = skin_col * (1.0 + 0.05 * lf[..., :1] + 0.02 * lf)

    # --- lesion colours: brown base relative to the skin, darker core, multi-tone
    darkness = rng.uniform(0.0, 1.0)  # 0 light tan ... 1 very dark brown
    tan = np.array([0.66, 0.45, 0.32], np.float32)
    dbrown = np.array([0.26, 0.15, 0.10], np.float32)
    base = (tan + darkness * (dbrown - tan)) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    base = np.minimum(base, skin_col * 0.8)  # a lesion is always darker than its skin
    core_dark = rng.uniform(0.3, 0.7)  # core reaches ~ (1 - core_dark) of base
    core_w = rng.uniform(0.35, 0.8)
    core = 1.0 - core_dark * np.exp(-(t / core_w) ** 2)
    lesion = base * core[..., None]
    # smooth colour variation inside the lesion (uneven pigmentation)
    lf_l = _lowfreq(rng, size, 6, 3)
    lesion = lesion * (1.0 + 0.12 * lf_l[..., :1] + 0.03 * lf_l)
    # reddish (vascular / inflamed) and blue-grey (regression veil) areas
    red = np.array([0.78, 0.40, 0.40], np.float32)
    blue = np.array([0.46, 0.46, 0.54], np.float32)
    lf2 = _lowfreq(rng, size, 5, 2)
    w_red = np.clip((lf2[..., 0] - rng.uniform(0.3, 1.5)) * 1.5, 0, 1) * rng.uniform(0.3, 0.8)
    w_blue = np.clip((lf2[..., 1] - rng.uniform(0.5, 1.8)) * 1.5, 0, 1) * rng.uniform(0.15, 0.45)
    if w_red.max() > 0:  # most lesions have none: skip the full-frame blend
        lesion = lesion + w_red[..., None] * (red * base.mean() * 1.6 - lesion)
    if w_blue.max() > 0:
        lesion = lesion + w_blue[..., None] * (blue * base.mean() * 1.4 - lesion)
    # pigment network: a warped reticular pattern, strongest away from the core
    freq = rng.uniform(10.0, 18.0)
    x, y = _grid(size)
    warp = _lowfreq(rng, size, 6, 2) * 0.04
    net = (np.cos(2 * np.pi * freq * (x + warp[..., 0])) *
           np.cos(2 * np.pi * freq * (y + warp[..., 1]))).astype(np.float32)
    lesion = lesion * (1.0 - rng.uniform(0.0, 0.15) * np.clip(net, 0, 1) * np.clip(t, 0, 1))[..., None]
    # periphery fades slightly towards the skin (border of a naevus is not a step)
    fade = (rng.uniform(0.0, 0.35) * np.clip(t, 0, 1) ** 4)[..., None]
    lesion = lesion + fade * (skin - lesion)
    lo, hi = contrast
    if (lo, hi) != (1.0, 1.0):  # own stream: the other draws stay the same whatever the range
        c = np.random.default_rng([int(seed), int(index), _TAG_ISIC, 2]).uniform(lo, hi)
        lesion = skin + np.float32(c) * (lesion - skin)

    # globules: small dark dots inside the lesion
    glob = _coverage_canvas(size, 2)
    n_glob = int(rng.integers(0, 14))
    cx, cy = p["center"]
    ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
    th = rng.uniform(0, 2 * math.pi, n_glob)
    rad = _fourier_radius(np.cos(th), np.sin(th), p["amps"], p["phases"]) * rng.uniform(0.1, 0.75, n_glob)
    ex, ey = p["scale"] * rad * np.cos(th), p["scale"] * p["aspect"] * rad * np.sin(th)
    gx, gy = cx + ca * ex - sa * ey, cy + sa * ex + ca * ey
    gr = rng.uniform(0.006, 0.014, n_glob)
    fp = size * 2 * 16  # 2x supersampling, cv2 fixed point (shift=4)
    for i in range(n_glob):
        cv2.circle(glob, (int(gx[i] * fp), int(gy[i] * fp)), max(1, int(gr[i] * fp)), 255, -1,
                   cv2.LINE_AA, shift=4)
    g = _downsample_coverage(glob, size)[..., None] * rng.uniform(0.4, 0.8)
    lesion = lesion * (1.0 - 0.6 * g)

    # --- composite with an anti-aliased border: alpha > 0.5 <=> mask
    edge_w = rng.uniform(1.0, 3.5) * size / 128.0
    alpha = np.clip(0.5 + d_px / edge_w, 0.0, 1.0).astype(np.float32)[..., None]
    img = skin + alpha * (lesion - skin)

    # --- hairs: thin dark curved lines over skin and lesion (never in the mask)
    n_hair = int(rng.integers(1, 16)) if rng.uniform() < 0.6 else 0
    hair_col = np.array([0.12, 0.08, 0.06], np.float32) * rng.uniform(0.5, 1.5)
    hair_params = []
    for _ in range(n_hair):
        x0, y0 = rng.uniform(-0.1, 1.1, 2)
        ang = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.3, 1.2)
        bend = rng.uniform(-0.25, 0.25) * length
        width = rng.uniform(0.003, 0.008)
        hair_params.append((x0, y0, ang, length, bend, width))
    if hairs and n_hair:
        ss = 2
        canvas = _coverage_canvas(size, ss)
        s = np.linspace(0.0, 1.0, 24)[:, None]
        for x0, y0, ang, length, bend, width in hair_params:
            d = np.array([math.cos(ang), math.sin(ang)])
            nrm = np.array([-d[1], d[0]])
            p0 = np.array([x0, y0])
            p2 = p0 + length * d
            p1 = 0.5 * (p0 + p2) + bend * nrm
            pts = (1 - s) ** 2 * p0 + 2 * s * (1 - s) * p1 + s ** 2 * p2  # quadratic Bezier
            pts = np.round(pts * size * ss * 16).astype(np.int32)
            th_px = max(1, int(round(width * size * ss)))
            cv2.polylines(canvas, [pts], False, 255, th_px, cv2.LINE_AA, shift=4)
        h = _downsample_coverage(canvas, size)[..., None] * 0.9
        img = img + h * (hair_col - img)

    # --- dermoscope optics: vignetting (dark corners), sometimes a dark round field
    rc = np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2).astype(np.float32) / math.sqrt(0.5)
    vig = 1.0 - rng.uniform(0.1, 0.45) * rc ** rng.uniform(2.0, 4.0)
    if rng.uniform() < 0.3:
        r0 = rng.uniform(0.9, 1.0)  # in units of the half-diagonal: only corners
        vig = vig * np.clip(1.0 - (rc - r0) / 0.06, 0.05, 1.0)
    img = img * vig[..., None]
    img = img * rng.uniform(0.8, 1.1)  # exposure

    img = _blur(img.astype(np.float32), rng.uniform(0.4, 1.0) * size / 128.0)
    img = img + _sensor_noise(rng, size) * 0.012
    return _to_uint8(img), mask


def synth_isic(index: int, *, seed: int = DataConfig.data_seed, size: int = DataConfig.image_size,
               contrast: tuple[float, float] | list[float] = ISIC_CONTRAST) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like sample: uint8 HxWx3 RGB image and uint8 HxW mask {0, 1}.

    Skin with low-frequency colour variation and fine texture, one irregular lesion
    (star-shaped radial Fourier blob: single connected region, 7-40 % of the image),
    darker core, reddish / blue-grey areas, pigment network, globules, hairs (image
    only), vignetting, blur and sensor noise. Deterministic in ``(seed, index)``.
    ``contrast=(lo, hi)``: the lesion colour is blended towards the skin by a factor drawn
    uniformly in [lo, hi] per image (1 = as drawn; default ``ISIC_CONTRAST``: faint lesions). The mask
    does not change.
    """
    _check_args(index, seed, size)
    lo, hi = (float(c) for c in contrast)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"contrast must be (lo, hi) with 0 < lo <= hi <= 1, got {tuple(contrast)!r}")
    return _draw_isic(int(index), int(seed), int(size), hairs=True, contrast=(lo, hi))


# ----------------------------------------------------------------------------- fundus
def _ellipse_height(a: float, b: float, phi: float) -> float:
    """Vertical extent of an ellipse with semi-axes (a, b) rotated by ``phi``."""
    return 2.0 * math.sqrt((a * math.sin(phi)) ** 2 + (b * math.cos(phi)) ** 2)


def synth_fundus_params(index: int, *, seed: int = DataConfig.data_seed) -> dict[str, Any]:
    """Sampled fundus geometry in unit-square coordinates (independent of image size).

    Keys: ``side`` (+1 disc right of the fovea, -1 left), ``fov_center``,
    ``fov_radius``, ``fovea``, ``disc_center``, ``disc_axes`` (a horizontal, b
    vertical semi-axes before rotation), ``angle`` (rad, shared by disc and cup),
    ``cup_center``, ``cup_axes``, ``cup_offset_disc_frame`` (cup centre in the frame
    where the disc is the unit circle), ``vcdr`` (true vertical cup-to-disc ratio = vertical
    extent of the cup / vertical extent of the disc, as in the REFUGE evaluation), ``disc_height`` and
    ``cup_height``. ``vcdr`` is uniform in [0.3, 0.8]; the cup lies strictly inside the
    disc (in the disc frame: |c| + max cup semi-axis <= 0.88).
    """
    _check_args(index, seed, 16)
    rng = np.random.default_rng([int(seed), int(index), _TAG_FUNDUS])
    side = 1 if rng.uniform() < 0.5 else -1
    fov_center = (0.5 + float(rng.uniform(-0.01, 0.01)), 0.5 + float(rng.uniform(-0.01, 0.01)))
    fov_radius = float(rng.uniform(0.46, 0.5))
    # macula-centred view: fovea near the centre, disc 0.14-0.24 to the nasal side
    fovea = (fov_center[0] + float(rng.uniform(-0.04, 0.04)),
             fov_center[1] + float(rng.uniform(-0.03, 0.05)))
    b_d = float(rng.uniform(0.075, 0.10))
    a_d = b_d * float(rng.uniform(0.82, 0.97))  # discs are slightly vertically oval
    angle = float(rng.uniform(-0.2, 0.2))
    disc_center = (fovea[0] + side * float(rng.uniform(0.16, 0.24)),
                   fovea[1] - float(rng.uniform(0.0, 0.06)))
    vcdr = float(rng.uniform(0.3, 0.8))
    # Cup in the disc frame (disc = unit circle): semi-axes (au, bv) with au = k bv;
    # bv solves height(cup) = vcdr * height(disc) for the shared rotation.
    k = float(rng.uniform(0.85, 1.15))
    h_d = _ellipse_height(a_d, b_d, angle)
    # rim of at least 12 % of the disc radius everywhere (the cup is strictly inside)
    margin = 0.12
    for _ in range(4):  # clamp the cup width; the height depends weakly on k
        bv = vcdr * h_d / _ellipse_height(k * a_d, b_d, angle)
        k = min(k, (1.0 - margin) / bv)
    bv = vcdr * h_d / _ellipse_height(k * a_d, b_d, angle)
    au = k * bv
    room = max(0.0, 1.0 - margin - max(au, bv))
    off_r = room * float(rng.uniform(0.0, 1.0)) ** 0.5
    # cups sit mostly temporally (towards the fovea) inside the disc
    off_t = float(rng.normal(math.pi if side > 0 else 0.0, 0.6))
    cu, cv_ = off_r * math.cos(off_t), off_r * math.sin(off_t)
    ca, sa = math.cos(angle), math.sin(angle)
    ox, oy = cu * a_d, cv_ * b_d  # disc-frame offset -> image offset (rotated)
    cup_center = (disc_center[0] + ca * ox - sa * oy, disc_center[1] + sa * ox + ca * oy)
    cup_axes = (au * a_d, bv * b_d)
    return {
        "side": side,
        "fov_center": fov_center,
        "fov_radius": fov_radius,
        "fovea": fovea,
        "disc_center": disc_center,
        "disc_axes": (a_d, b_d),
        "angle": angle,
        "cup_center": cup_center,
        "cup_axes": cup_axes,
        "cup_offset_disc_frame": (cu, cv_),
        "vcdr": _ellipse_height(*cup_axes, angle) / h_d,
        "disc_height": h_d,
        "cup_height": _ellipse_height(*cup_axes, angle),
    }


def _ellipse_field(center: tuple[float, float], axes: tuple[float, float], angle: float,
                   size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rho, d_px): normalised ellipse radius (inside <=> rho < 1) and a distance proxy."""
    x, y = _grid(size)
    dx, dy = x - center[0], y - center[1]
    ca, sa = math.cos(angle), math.sin(angle)
    u = (ca * dx + sa * dy) / axes[0]
    v = (-sa * dx + ca * dy) / axes[1]
    rho = np.sqrt(u * u + v * v)
    d_px = (1.0 - rho) * min(axes) * size
    return rho, d_px


def _fundus_mask(p: dict[str, Any], size: int, task: str) -> np.ndarray:
    _, d_disc = _ellipse_field(p["disc_center"], p["disc_axes"], p["angle"], size)
    _, d_cup = _ellipse_field(p["cup_center"], p["cup_axes"], p["angle"], size)
    disc = d_disc > 0
    if task == "disc":
        return disc.astype(np.uint8)
    # cup is analytically inside the disc; the '&' only guards float ties at the rim
    return disc.astype(np.uint8) + ((d_cup > 0) & disc).astype(np.uint8)


def _vessel_tree(rng: np.random.Generator, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Branching random-walk vessel tree, vectorised per branching generation.

    Returns ``pts`` [B, S + 1, 2] (unit coordinates), ``widths`` [B, S] and ``length``
    [B] (number of valid steps per branch). Four trunks leave the cup (superior /
    inferior x temporal / nasal); temporal arcades bend towards the macula. At random
    steps a thinner child leaves at 25-70 deg and the parent thins (Murray-like); all
    vessels taper and stop at the field-of-view border.
    """
    side = p["side"]
    fc, fr = p["fov_center"], p["fov_radius"]
    n_steps, step, max_depth, max_children = 60, 0.018, 4, 16
    vert = np.array([-1.0, -1.0, 1.0, 1.0])
    temporal = np.array([1.0, 0.0, 1.0, 0.0])
    tr = rng.uniform(size=(4, 3))
    ang0 = vert * np.pi / 2 + side * vert * np.where(temporal > 0, 0.15 + 0.3 * tr[:, 0], -(0.5 + 0.5 * tr[:, 0]))
    w0 = np.where(temporal > 0, 0.011 + 0.004 * tr[:, 1], 0.007 + 0.003 * tr[:, 1])
    # arcades turn from vertical towards the temporal side, around the macula
    curv = np.where(temporal > 0, side * vert * (0.02 + 0.015 * tr[:, 2]), -side * vert * 0.03 * tr[:, 2])
    # central retinal vessels emerge at the nasal side of the cup
    x0 = np.full(4, p["cup_center"][0] + side * 0.6 * p["cup_axes"][0])
    y0 = np.full(4, p["cup_center"][1])
    r2 = (fr + 0.02) ** 2
    all_pts, all_w, all_n = [], [], []
    for depth in range(max_depth + 1):
        nb = x0.size
        if nb == 0:
            break
        ang = ang0[:, None] + np.cumsum(curv[:, None] + rng.normal(0.0, 0.09, (nb, n_steps)), axis=1)
        pts = np.empty((nb, n_steps + 1, 2))
        pts[:, 0, 0], pts[:, 0, 1] = x0, y0
        pts[:, 1:, 0] = x0[:, None] + np.cumsum(step * np.cos(ang), axis=1)
        pts[:, 1:, 1] = y0[:, None] + np.cumsum(step * np.sin(ang), axis=1)
        split = rng.uniform(size=(nb, n_steps)) < (0.11 if depth < max_depth else -1.0)
        split_w = np.where(split, rng.uniform(0.8, 0.92, (nb, n_steps)), 1.0)
        w = w0[:, None] * np.cumprod(0.985 * split_w, axis=1)
        d2 = (pts[:, 1:, 0] - fc[0]) ** 2 + (pts[:, 1:, 1] - fc[1]) ** 2
        stop = (d2 > r2) | (w < 0.0025)
        n = np.where(stop.any(axis=1), np.argmax(stop, axis=1) + 1, n_steps)
        all_pts.append(pts), all_w.append(w), all_n.append(n)
        # children of this generation = next generation's branches
        c_sign = np.where(rng.uniform(size=(nb, n_steps)) < 0.5, 1.0, -1.0)
        c_ang = rng.uniform(0.45, 1.2, (nb, n_steps)) * c_sign
        c_w = rng.uniform(0.55, 0.75, (nb, n_steps))
        c_curv = rng.normal(0.0, 0.02, (nb, n_steps))
        valid = split & (np.arange(n_steps)[None, :] < (n - 1)[:, None])
        bi, ki = np.nonzero(valid)
        bi, ki = bi[:max_children], ki[:max_children]
        x0, y0 = pts[bi, ki + 1, 0], pts[bi, ki + 1, 1]
        ang0 = ang[bi, ki] + c_ang[bi, ki]
        w0 = w[bi, ki] / split_w[bi, ki] * c_w[bi, ki]
        curv = c_curv[bi, ki]
    return np.concatenate(all_pts), np.concatenate(all_w), np.concatenate(all_n)


def _draw_fundus(index: int, seed: int, size: int, task: str, vessels: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    p = synth_fundus_params(index, seed=seed)
    rng = np.random.default_rng([int(seed), int(index), _TAG_FUNDUS, 1])
    x, y = _grid(size)
    mask = _fundus_mask(p, size, task)

    # --- retina: orange-red base, illumination falloff, brighter around the disc,
    # darker macula, smooth choroidal texture
    base = np.array([rng.uniform(0.72, 0.92), rng.uniform(0.28, 0.42), rng.uniform(0.08, 0.18)],
                    np.float32)
    fc, fr = p["fov_center"], p["fov_radius"]
    rr = np.sqrt((x - fc[0]) ** 2 + (y - fc[1]) ** 2) / fr
    g_ang = rng.uniform(0, 2 * math.pi)
    lin = (math.cos(g_ang) * (x - 0.5) + math.sin(g_ang) * (y - 0.5)) * rng.uniform(0.0, 0.5)
    illum = 1.0 - rng.uniform(0.3, 0.55) * rr ** 2 + lin
    dcx, dcy = p["disc_center"]
    b_d = p["disc_axes"][1]
    dd2 = ((x - dcx) ** 2 + (y - dcy) ** 2) / (3.0 * b_d) ** 2
    illum = illum + rng.uniform(0.1, 0.25) * np.exp(-dd2)
    fx, fy = p["fovea"]
    df2 = ((x - fx) ** 2 + (y - fy) ** 2) / (1.3 * b_d) ** 2
    illum = illum - rng.uniform(0.15, 0.3) * np.exp(-df2)
    illum = illum.astype(np.float32)
    tex = _lowfreq(rng, size, 9, 3)
    img = base * illum[..., None] * (1.0 + 0.03 * tex[..., :1] + 0.015 * tex)

    # --- optic disc (yellow-orange rim) and cup (brighter, pale), anti-aliased
    rho_d, d_disc = _ellipse_field(p["disc_center"], p["disc_axes"], p["angle"], size)
    _, d_cup = _ellipse_field(p["cup_center"], p["cup_axes"], p["angle"], size)
    disc_col = np.array([rng.uniform(0.92, 1.0), rng.uniform(0.62, 0.78), rng.uniform(0.32, 0.48)],
                        np.float32)
    cup_col = np.array([1.0, rng.uniform(0.86, 0.95), rng.uniform(0.62, 0.8)], np.float32)
    rim_shade = (1.0 - 0.12 * np.clip(rho_d, 0, 1) ** 2).astype(np.float32)[..., None]
    w_d = rng.uniform(1.0, 2.5) * size / 128.0
    w_c = rng.uniform(1.5, 3.5) * size / 128.0
    a_disc = np.clip(0.5 + d_disc / w_d, 0, 1).astype(np.float32)[..., None]
    a_cup = np.clip(0.5 + d_cup / w_c, 0, 1).astype(np.float32)[..., None]
    img = img + a_disc * (disc_col * rim_shade * rng.uniform(0.9, 1.05) - img)
    img = img + a_cup * rng.uniform(0.6, 0.9) * (cup_col - img)

    # --- vessels: darker red tree from the cup across the rim to the periphery
    ss = 3
    canvas = _coverage_canvas(size, ss)
    scale = size * ss * 16  # cv2 fixed-point (shift=4) coordinates
    pts, w, n = _vessel_tree(rng, p)
    th_px = np.maximum(1, np.round(w * (size * ss))).astype(np.int64)
    ipts = np.round(pts * scale).astype(np.int32)
    # group runs of equal integer thickness (cv2 thickness is integral): one
    # polylines call per thickness value
    runs: dict[int, list[np.ndarray]] = {}
    for bi in range(th_px.shape[0]):
        t_b = th_px[bi, : n[bi]]
        bounds = [0, *(np.flatnonzero(t_b[1:] != t_b[:-1]) + 1).tolist(), int(n[bi])]
        for a0, a1 in zip(bounds[:-1], bounds[1:]):
            runs.setdefault(int(t_b[a0]), []).append(ipts[bi, a0: a1 + 1])
    for th, polys in runs.items():
        cv2.polylines(canvas, polys, False, 255, th, cv2.LINE_AA, shift=4)
    vcov = _downsample_coverage(canvas, size)[..., None]
    vessel_col = np.array([0.45, 0.07, 0.04], np.float32) * illum[..., None]
    # vessels dive into the excavation: fainter over the cup, which stays the palest area
    vcov = vcov * (1.0 - 0.6 * a_cup)
    v_opacity = rng.uniform(0.6, 0.85)  # always drawn: later draws must not shift
    v_opacity = v_opacity if vessels else 0.0
    img = img + vcov * v_opacity * (vessel_col - img)

    # --- dark circular field of view, blur, noise
    w_f = 1.5 * size / 128.0
    a_fov = np.clip(0.5 + (1.0 - rr) * fr * size / w_f, 0, 1).astype(np.float32)[..., None]
    img = img * a_fov + (1 - a_fov) * 0.015
    img = img * rng.uniform(0.85, 1.1)
    img = _blur(img.astype(np.float32), rng.uniform(0.5, 1.0) * size / 128.0)
    img = img + _sensor_noise(rng, size) * 0.01
    return _to_uint8(img), mask


def synth_fundus(index: int, *, seed: int = DataConfig.data_seed, size: int = DataConfig.image_size,
                 task: str = _FUNDUS_TASKS[0]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One macula-centred fundus-like sample: uint8 HxWx3 RGB image and uint8 HxW mask.

    ``task="disc_cup"``: mask {0 background, 1 rim, 2 cup} (disc = mask >= 1);
    ``task="disc"``: mask {0, 1}. ``size`` >= 32 (smaller cups may hit no pixel centre). Dark circular FOV, orange-red retina with luminance
    gradient and darker macula, yellow optic disc with a pale cup (vCDR uniform in
    [0.3, 0.8], see :func:`synth_fundus_params`), a branching vessel tree crossing the
    rim (image only), blur and noise. Deterministic in ``(seed, index)``.
    """
    _check_args(index, seed, size)
    if size < _FUNDUS_MIN_SIZE:  # small cups fall between pixel centres below this
        raise ValueError(f"synth_fundus size must be >= {_FUNDUS_MIN_SIZE} pixels so that the cup and rim "
                         f"masks are never empty, got {size}")
    if task not in _FUNDUS_TASKS:
        raise ValueError(f"task must be one of {_FUNDUS_TASKS}, got {task!r}")
    return _draw_fundus(int(index), int(seed), int(size), task)


def fundus_vcdr_from_mask(mask: np.ndarray) -> float:
    """vCDR of a {0 bg, 1 rim, 2 cup} mask as the REFUGE evaluation code computes it: D(cup) / (D(disc) + 1e-7).

    D(M) is the max over image columns of the number of mask pixels in that column.
    """
    disc = np.asarray(mask) >= 1
    cup = np.asarray(mask) == 2
    return float(cup.sum(axis=0).max()) / (float(disc.sum(axis=0).max()) + 1e-7)
