"""Smooth, differentiable, batched image transforms: deformation + bias field + noise.

Used by the Chen-style synthesis attack (:mod:`lightning_seg.attacks.synthesis`) and meant
to double as (adversarial) data augmentation in training. Our own torch implementation;
the design follows the transform table of AdvChain (Chen Chen et al., MedIA 2022,
cherise215/advchain) -- ideas, not code.

A transform ``T`` maps an image ``x`` ([B,C,H,W] in [0,1]) to

    x' = clamp( b(p) * x(phi(p)) + alpha * delta , 0, 1 )          (T = noise o bias o morph, as AdvChain chains them)

* **morph** ``phi``: diffeomorphic warp from a stationary velocity field (SVF). The velocity
  lives on a coarse grid of ``ceil(H/morph_spacing) x ceil(W/morph_spacing)`` control points in
  *normalised* coordinates ([-1,1] spans the image, the AdvChain unit). Budget (AdvChain
  scale): per-sample L2 norm of the coarse grid ``||v||_2 <= eps_morph``. The grid is
  upsampled bicubically to full resolution, converted to pixels, and integrated by scaling
  and squaring (``ss_steps`` halvings), giving ``phi = exp(v)``. Because the norm is taken
  over the whole coarse grid, the pixel displacement it allows depends on the grid size;
  hence the pixel bound ``max_disp_px`` on top, and the reported ``max_disp_px`` of a
  result. The coarse grid is Gaussian-smoothed (sigma 1 control point, as AdvChain) before
  upsampling.
* **bias**: multiplicative field ``b = exp(alpha * S(c))``, ``S`` the uniform cubic B-spline
  through log-bias control points ``c`` (``bias_cells`` spline cells per axis, AdvChain
  spacing H/2 => 2), the same field for all channels. ``c`` is clamped to
  ``[log(1-eps_bias), log(1+eps_bias)]``; the B-spline basis is non-negative and sums to one,
  so ``S(c)`` stays in that interval and ``|b - 1| <= eps_bias`` holds exactly.
* **noise**: additive ``delta`` with per-sample ``||delta||_2 <= eps_noise`` over all
  channels and pixels in [0,1] units; by default ``eps_noise = noise_std * sqrt(C*H*W)``, i.e.
  a per-value RMS of at most ``noise_std``, so that one budget fits every image size.

The defaults of :class:`TransformConfig` are the project's synthesis budgets (those of
``attack=synthesis``; :func:`lightning_seg.attacks.synthesis.synthesis` takes its budget defaults
from here).

Setting ``eps_morph``, ``eps_bias`` or the noise budget to 0 disables that component. ``alpha`` ([B], in [0,1])
scales all components together: velocity * alpha, log-bias * alpha, noise * alpha (``scale``).

Warping uses our own bilinear sampler in pixel coordinates with border padding (the same
arithmetic as ``grid_sample(..., align_corners=True, padding_mode="border")``), because
``grid_sample`` is not exactly the identity at a zero displacement (float round-off of the
normalised grid, about 1e-5); ours is exact. Labels are warped with the same sampler on the
one-hot encoding followed by argmax (``label_mode="bilinear"``, ties go to the lower class)
or by nearest neighbour (``label_mode="nearest"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TransformConfig",
    "SmoothTransform",
    "sample_random_transform",
    "identity_transform",
    "integrate_velocity",
    "bspline_field",
    "bilinear_sample",
    "warp_labels",
    "jacobian_determinant",
    "ssim",
]


@dataclass(frozen=True)
class TransformConfig:
    """Budgets and resolution of a :class:`SmoothTransform` (units in the module docstring).

    eps_bias: bound on |b - 1| (0 disables the bias field).
    bias_cells: cubic B-spline cells per axis for the bias field (control points = cells + 3).
    eps_morph: per-sample L2 bound of the coarse velocity grid, normalised coordinates
        (AdvChain scale; 0 disables the deformation).
    morph_spacing: pixels per coarse velocity control point (grid = ceil(H/spacing), >= 2).
    ss_steps: scaling-and-squaring steps (velocity divided by 2**ss_steps, then squared).
    velocity_sigma: Gaussian smoothing of the coarse velocity grid, in control-point units.
    noise_std: bound on the per-value RMS of the additive noise in [0,1] units (0 disables it).
    eps_noise: per-sample L2 bound of the noise instead (None: ``noise_std * sqrt(C*H*W)``, see
        :meth:`noise_radius`; 0 disables it).
    label_mode: "bilinear" (one-hot, bilinear, argmax) or "nearest".
    max_disp_px: hard bound on the displacement in pixels (None: only the eps_morph bound). The
        full-resolution velocity is rescaled per image so that max |v| <= max_disp_px; the flow
        then moves no point further than max_disp_px (also after scaling and squaring).
    diffeomorphic: integrate the velocity by scaling and squaring (True) or use it directly as
        the displacement (False: smooth but may fold at large magnitudes).
    """

    eps_bias: float = 0.3
    bias_cells: int = 2
    eps_morph: float = 1.5
    morph_spacing: int = 16
    ss_steps: int = 8
    velocity_sigma: float = 1.0
    noise_std: float = 0.01
    eps_noise: float | None = None
    label_mode: str = "bilinear"
    max_disp_px: float | None = 6.0
    diffeomorphic: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps_bias < 1.0:
            raise ValueError(f"eps_bias={self.eps_bias} must be in [0, 1) so that 1 - eps_bias > 0")
        if self.eps_morph < 0 or self.noise_std < 0 or (self.eps_noise is not None and self.eps_noise < 0):
            raise ValueError(f"eps_morph={self.eps_morph}, noise_std={self.noise_std} and eps_noise={self.eps_noise} "
                             "must be >= 0")
        if self.bias_cells < 1 or self.morph_spacing < 1 or self.ss_steps < 0:
            raise ValueError("bias_cells and morph_spacing must be >= 1 and ss_steps >= 0")
        if self.max_disp_px is not None and self.max_disp_px <= 0:
            raise ValueError(f"max_disp_px={self.max_disp_px} must be > 0 (or None for no pixel bound)")
        if self.label_mode not in ("bilinear", "nearest"):
            raise ValueError(f"label_mode={self.label_mode!r}; use 'bilinear' or 'nearest'")

    def velocity_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = image_size
        return max(2, math.ceil(h / self.morph_spacing)), max(2, math.ceil(w / self.morph_spacing))

    def noise_radius(self, numel: int) -> float:
        """Per-sample L2 bound of the noise for samples of ``numel`` values (C*H*W)."""
        return self.eps_noise if self.eps_noise is not None else self.noise_std * math.sqrt(numel)

    def bias_grid(self) -> tuple[int, int]:
        return self.bias_cells + 3, self.bias_cells + 3

    @property
    def log_bias_bounds(self) -> tuple[float, float]:
        return math.log1p(-self.eps_bias), math.log1p(self.eps_bias)


# ----------------------------------------------------------------------------- primitives


def _per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm over all but the batch dim, shaped for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project_l2(t: Tensor, radius: float) -> Tensor:
    """Project each sample onto the L2 ball of ``radius`` (no host sync)."""
    norm = _per_sample_norm(t)
    return t * torch.clamp(radius / norm.clamp_min(1e-12), max=1.0)


def bilinear_sample(x: Tensor, pos_y: Tensor, pos_x: Tensor) -> Tensor:
    """Sample ``x`` [B,C,H,W] at pixel positions ``pos_y``, ``pos_x`` [B,h,w] (border padding).

    Differentiable w.r.t. ``x`` and the positions; exact at integer positions.
    """
    b, c, h, w = x.shape
    py = pos_y.clamp(0, h - 1)
    px = pos_x.clamp(0, w - 1)
    y0 = py.floor()
    x0 = px.floor()
    wy = (py - y0).unsqueeze(1)
    wx = (px - x0).unsqueeze(1)
    y0l = y0.long()
    x0l = x0.long()
    y1l = (y0l + 1).clamp(max=h - 1)
    x1l = (x0l + 1).clamp(max=w - 1)
    flat = x.reshape(b, c, h * w)

    def gather(yy: Tensor, xx: Tensor) -> Tensor:
        idx = (yy * w + xx).reshape(b, 1, -1).expand(b, c, -1)
        return flat.gather(2, idx).reshape(b, c, *pos_y.shape[1:])

    top = gather(y0l, x0l) * (1 - wx) + gather(y0l, x1l) * wx
    bottom = gather(y1l, x0l) * (1 - wx) + gather(y1l, x1l) * wx
    return top * (1 - wy) + bottom * wy


def _identity_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    ys = torch.arange(h, device=device, dtype=dtype).view(1, h, 1).expand(1, h, w)
    xs = torch.arange(w, device=device, dtype=dtype).view(1, 1, w).expand(1, h, w)
    return ys, xs


def _warp(x: Tensor, disp: Tensor) -> Tensor:
    """Backward warp: out(p) = x(p + disp(p)); ``disp`` [B,2,H,W] in pixels, (dy, dx)."""
    ys, xs = _identity_grid(x.shape[-2], x.shape[-1], x.device, disp.dtype)
    return bilinear_sample(x, ys + disp[:, 0], xs + disp[:, 1])


def _gaussian_smooth(v: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (replicate padding, so a constant field stays constant)."""
    if sigma <= 0:
        return v
    k = int(2 * math.ceil(3 * sigma) + 1)
    coords = torch.arange(k, device=v.device, dtype=v.dtype) - (k - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c, p = v.shape[1], (k - 1) // 2
    v = F.conv2d(F.pad(v, (p, p, 0, 0), mode="replicate"), g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(F.pad(v, (0, 0, p, p), mode="replicate"), g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def integrate_velocity(
    velocity: Tensor, image_size: tuple[int, int], ss_steps: int = TransformConfig.ss_steps,
    sigma: float = TransformConfig.velocity_sigma,
    max_disp_px: float | None = None, diffeomorphic: bool = True, alpha: Tensor | None = None,
) -> Tensor:
    """Displacement [B,2,H,W] in pixels (dy, dx) of ``phi = exp(v)`` by scaling and squaring.

    ``velocity`` [B,2,gh,gw] in normalised coordinates; Gaussian-smoothed on the coarse grid
    (``sigma`` in control-point units, as AdvChain; without it an i.i.d. grid at 256x256 and
    eps 1.5 folds numerically), upsampled bicubically (C1 smooth) to the image size, converted
    to pixels, divided by 2**ss_steps, then composed with itself ss_steps times:
    u <- u + u o (id + u). A zero velocity gives exactly zero.
    ``max_disp_px``: the pixel velocity is rescaled per image to max |v| <= max_disp_px; each
    squaring at most doubles max |u|, so the final displacement obeys the same bound.
    ``diffeomorphic=False`` returns the (bounded) pixel velocity itself as the displacement.
    ``alpha`` [B] scales the bounded velocity (after the bound, so the magnitude stays monotone in alpha).
    """
    h, w = image_size
    v = F.interpolate(_gaussian_smooth(velocity, sigma), size=(h, w), mode="bicubic", align_corners=True)
    to_px = torch.tensor([(h - 1) / 2.0, (w - 1) / 2.0], device=v.device, dtype=v.dtype).view(1, 2, 1, 1)
    v = v * to_px
    if max_disp_px is not None:
        peak = v.norm(dim=1).flatten(1).amax(1).view(-1, 1, 1, 1)
        v = v * torch.clamp(max_disp_px / peak.clamp_min(1e-12), max=1.0)
    if alpha is not None:
        v = v * alpha.view(-1, 1, 1, 1)
    if not diffeomorphic:
        return v
    u = v / (2**ss_steps)
    for _ in range(ss_steps):
        u = u + _warp(u, u)
    return u


def _cubic_bspline(t: Tensor) -> Tensor:
    a = t.abs()
    inner = (4 - 6 * a**2 + 3 * a**3) / 6
    outer = (2 - a).clamp_min(0) ** 3 / 6
    return torch.where(a < 1, inner, outer)


def _bspline_basis(n_pix: int, cells: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[n_pix, cells+3] uniform cubic B-spline basis; knots at (i-1)*s, s = (n_pix-1)/cells.

    Rows are non-negative and sum to one on [0, n_pix-1] (partition of unity).
    """
    s = max(n_pix - 1, 1) / cells
    pos = torch.arange(n_pix, device=device, dtype=dtype).view(-1, 1)
    knots = (torch.arange(cells + 3, device=device, dtype=dtype) - 1).view(1, -1) * s
    return _cubic_bspline((pos - knots) / s)


def bspline_field(ctrl: Tensor, image_size: tuple[int, int], cells: int) -> Tensor:
    """Evaluate the tensor-product cubic B-spline of ``ctrl`` [B,1,cells+3,cells+3] -> [B,1,H,W]."""
    h, w = image_size
    by = _bspline_basis(h, cells, ctrl.device, ctrl.dtype)
    bx = _bspline_basis(w, cells, ctrl.device, ctrl.dtype)
    return torch.einsum("hi,bcij,wj->bchw", by, ctrl, bx)


def warp_labels(labels: Tensor, disp: Tensor, num_classes: int, mode: str = "bilinear") -> Tensor:
    """Warp class-index labels [B,H,W] with ``disp`` [B,2,H,W] (pixels) -> long [B,H,W]."""
    if mode == "nearest":
        ys, xs = _identity_grid(labels.shape[-2], labels.shape[-1], labels.device, disp.dtype)
        py = (ys + disp[:, 0]).round()
        px = (xs + disp[:, 1]).round()
        return bilinear_sample(labels.unsqueeze(1).to(disp.dtype), py, px).squeeze(1).round().long()
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).to(disp.dtype)
    return _warp(onehot, disp).argmax(dim=1)


def jacobian_determinant(disp: Tensor) -> Tensor:
    """det(d phi / d p) of phi(p) = p + disp(p) by forward differences -> [B,H-1,W-1]; > 0: no folding."""
    dy, dx = disp[:, 0], disp[:, 1]
    ddy_dy = dy[:, 1:, :-1] - dy[:, :-1, :-1]
    ddy_dx = dy[:, :-1, 1:] - dy[:, :-1, :-1]
    ddx_dy = dx[:, 1:, :-1] - dx[:, :-1, :-1]
    ddx_dx = dx[:, :-1, 1:] - dx[:, :-1, :-1]
    return (1 + ddy_dy) * (1 + ddx_dx) - ddy_dx * ddx_dy


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image [B] (Wang et al. 2004; Gaussian window, valid region, K1 0.01, K2 0.03)."""
    c = x.shape[1]
    window = min(window, x.shape[-2], x.shape[-1])
    coords = torch.arange(window, device=x.device, dtype=x.dtype) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx**2
    vy = filt(y * y) - my**2
    cxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------- transform


@dataclass
class SmoothTransform:
    """Parameters of a batch of transforms plus a per-image scale ``alpha`` [B].

    velocity: [B,2,gh,gw] normalised coords, ||.||_2 <= eps_morph, or None (disabled).
    log_bias: [B,1,cells+3,cells+3] in [log(1-eps_bias), log(1+eps_bias)], or None.
    noise: [B,C,H,W] with ||.||_2 <= eps_noise, or None.
    """

    config: TransformConfig
    image_size: tuple[int, int]
    velocity: Tensor | None
    log_bias: Tensor | None
    noise: Tensor | None
    alpha: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.alpha is None:
            ref = next((p for p in (self.velocity, self.log_bias, self.noise) if p is not None), None)
            if ref is None:
                raise ValueError("SmoothTransform needs at least one component; all eps_* are 0")
            self.alpha = torch.ones(ref.shape[0], device=ref.device, dtype=ref.dtype)

    # --- parameter handling
    def parameters(self) -> list[Tensor]:
        """The active parameter tensors (velocity, log_bias, noise order, None skipped)."""
        return [p for p in (self.velocity, self.log_bias, self.noise) if p is not None]

    def requires_grad_(self, flag: bool = True) -> SmoothTransform:
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def detach(self) -> SmoothTransform:
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return SmoothTransform(self.config, self.image_size, d(self.velocity), d(self.log_bias), d(self.noise),
                               self.alpha.detach())

    def scale(self, alpha: float | Tensor) -> SmoothTransform:
        """Same parameters, all components scaled by ``alpha`` (float or [B]) on top of the current alpha."""
        a = torch.as_tensor(alpha, device=self.alpha.device, dtype=self.alpha.dtype)
        return SmoothTransform(self.config, self.image_size, self.velocity, self.log_bias, self.noise,
                               self.alpha * a.expand_as(self.alpha))

    @torch.no_grad()
    def project_(self) -> SmoothTransform:
        """Put every component back inside its budget (in place)."""
        cfg = self.config
        if self.velocity is not None:
            self.velocity.copy_(_project_l2(self.velocity, cfg.eps_morph))
        if self.log_bias is not None:
            lo, hi = cfg.log_bias_bounds
            self.log_bias.clamp_(lo, hi)
        if self.noise is not None:
            self.noise.copy_(_project_l2(self.noise, cfg.noise_radius(self.noise[0].numel())))
        return self

    # --- fields
    def _a(self, ndim: int) -> Tensor:
        return self.alpha.view(-1, *([1] * (ndim - 1)))

    def displacement(self) -> Tensor | None:
        """[B,2,H,W] pixel displacement (dy, dx) of the backward map, or None if morph is off."""
        if self.velocity is None:
            return None
        cfg = self.config
        return integrate_velocity(self.velocity, self.image_size, cfg.ss_steps, cfg.velocity_sigma,
                                  cfg.max_disp_px, cfg.diffeomorphic, alpha=self.alpha)

    def bias_field(self) -> Tensor | None:
        """[B,1,H,W] multiplicative field b, or None if the bias is off."""
        if self.log_bias is None:
            return None
        return torch.exp(bspline_field(self.log_bias * self._a(4), self.image_size, self.config.bias_cells))

    # --- application
    def apply(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        num_classes: int | None = None,
        disp: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Transform images [B,C,H,W] in [0,1] (-> clamped to [0,1]) and warp labels / mask consistently.

        Labels [B,H,W] long get only the geometric part; ``num_classes`` defaults to
        labels.max()+1 (a host sync; pass it inside loops). ``mask`` [B,H,W] bool: a pixel
        counts after warping if its bilinear weight of counted pixels is >= 0.5.
        ``disp`` may pass a precomputed :meth:`displacement` to avoid integrating twice.
        """
        if tuple(images.shape[-2:]) != tuple(self.image_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])} but the transform was built for {self.image_size}")
        if disp is None:
            disp = self.displacement()
        out = images if disp is None else _warp(images, disp)
        bias = self.bias_field()
        if bias is not None:
            out = out * bias
        if self.noise is not None:
            out = out + self.noise * self._a(4)
        out = out.clamp(0, 1)
        new_labels = labels
        new_mask = mask
        if disp is not None:
            if labels is not None:
                k = int(labels.max()) + 1 if num_classes is None else num_classes
                new_labels = warp_labels(labels, disp.detach(), k, self.config.label_mode)
            if mask is not None:
                new_mask = _warp(mask.unsqueeze(1).to(disp.dtype), disp.detach()).squeeze(1) >= 0.5
        return out, new_labels, new_mask

    @torch.no_grad()
    def realism(self, images: Tensor, adv_images: Tensor) -> dict[str, Tensor]:
        """Per-image realism measures [B]: max_bias (max |b-1|), max_disp_px, min_jacobian, noise_l2, ssim."""
        b = images.shape[0]
        zeros = torch.zeros(b, device=images.device, dtype=images.dtype)
        disp = self.displacement()
        bias = self.bias_field()
        return {
            "max_bias": zeros if bias is None else (bias - 1).abs().flatten(1).amax(1),
            "max_disp_px": zeros if disp is None else disp.norm(dim=1).flatten(1).amax(1),
            "min_jacobian": zeros + 1 if disp is None else jacobian_determinant(disp).flatten(1).amin(1),
            "noise_l2": zeros if self.noise is None else (self.noise * self._a(4)).flatten(1).norm(dim=1),
            "ssim": ssim(images, adv_images),
        }


def identity_transform(
    batch_size: int,
    image_size: tuple[int, int],
    *,
    channels: int = 3,
    config: TransformConfig | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SmoothTransform:
    """All-zero parameters: ``apply`` returns its inputs exactly (up to the [0,1] clamp)."""
    cfg = config or TransformConfig()
    gh, gw = cfg.velocity_grid(image_size)
    ch, cw = cfg.bias_grid()
    z = lambda *s: torch.zeros(batch_size, *s, device=device, dtype=dtype)  # noqa: E731
    return SmoothTransform(
        cfg,
        tuple(image_size),  # type: ignore[arg-type]
        z(2, gh, gw) if cfg.eps_morph > 0 else None,
        z(1, ch, cw) if cfg.eps_bias > 0 else None,
        z(channels, *image_size) if cfg.noise_radius(channels * image_size[0] * image_size[1]) > 0 else None,
    )


def sample_random_transform(
    batch_size: int,
    image_size: tuple[int, int],
    *,
    channels: int = 3,
    config: TransformConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SmoothTransform:
    """Random transform at full budget, as AdvChain initialises its adversarial transforms.

    velocity: Gaussian direction rescaled to ||v||_2 = eps_morph; log-bias control points
    ~ U[log(1-eps_bias), log(1+eps_bias)]; noise: Gaussian direction with ||delta||_2 =
    eps_noise. Drawn on the generator's device (CPU by default) and moved to ``device``,
    so a seeded CPU generator gives the same transform on every device.
    """
    cfg = config or TransformConfig()
    gdev = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else gdev

    def randn(*shape: int) -> Tensor:
        return torch.randn(batch_size, *shape, generator=generator, device=gdev, dtype=dtype).to(device)

    def on_sphere(t: Tensor, radius: float) -> Tensor:
        return t * (radius / _per_sample_norm(t).clamp_min(1e-12))

    velocity = log_bias = noise = None
    if cfg.eps_morph > 0:
        velocity = on_sphere(randn(2, *cfg.velocity_grid(image_size)), cfg.eps_morph)
    if cfg.eps_bias > 0:
        lo, hi = cfg.log_bias_bounds
        u = torch.rand(batch_size, 1, *cfg.bias_grid(), generator=generator, device=gdev, dtype=dtype).to(device)
        log_bias = lo + (hi - lo) * u
    eps_noise = cfg.noise_radius(channels * image_size[0] * image_size[1])
    if eps_noise > 0:
        noise = on_sphere(randn(channels, *image_size), eps_noise)
    return SmoothTransform(cfg, tuple(image_size), velocity, log_bias, noise)  # type: ignore[arg-type]
