"""Frequency Refinement (FR) defense as a batched, device-agnostic torch module.

Liu, Jiang, et al., "Defending Deep Learning-based Biomedical Image Segmentation from Adversarial
Attacks: A Low-cost Frequency Refinement Approach", MICCAI 2020 (LNCS 12264, pp. 342-351); public
code ``qiliu08/frequency-refinement-defense``. Re-implemented from the description,
not vendored (the repository has no licence).

Algorithm, as the paper's code defines it (no YCbCr, no chroma subsampling, no -128 level shift):

1. ``v = 255 x`` for each RGB channel independently;
2. zero-pad bottom/right to a multiple of 8 (the repo's 'padding' mode);
3. per 8x8 block: ``X = C B C^T`` with C the orthonormal DCT-II;
4. ``X_hat = Q * round(X / Q)`` with the three-band table Q (:func:`fr_quant_table`);
5. ``B_hat = C^T X_hat C``; re-assemble, **crop back** to H x W (the repo does not crop; it is a
   no-op at its 224 x 224), ``/255``, clamp to [0,1].

``round`` has zero gradient almost everywhere, so ``rounding='exact'`` masks gradients; evaluate the
defense with BPDA (``rounding='ste'`` or :class:`DefendedModel` ``gradient='bpda'``) or the cubic
surrogate (Shin & Song 2017), as Athalye et al. (ICML 2018) prescribe for non-differentiable defenses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.defenses.base import Defense, check_images, check_rounding, register_defense, signature_defaults
from lightning_seg.defenses.dct import blockwise_quantize


def fr_quant_table(
    pd: float = 30.0, ac: float = 5.0, gd: float = 60.0, *, dtype: torch.dtype = torch.float64, device=None
) -> Tensor:
    """Three-band 8x8 FR quantisation table, index (u, v) 0-based (u vertical, v horizontal frequency).

    Filled with ``gd`` ("global defense", max(u,v) >= 4, 48 entries), top-left 4x4 overwritten with
    ``ac`` ("accuracy compensation", 2 <= max(u,v) <= 3, 12 entries), top-left 2x2 with ``pd``
    ("priority defense", max(u,v) <= 1, 4 entries incl. DC). Defaults: the repo's CLI (30, 5, 60);
    its class default uses gd = 80.
    """
    for key, val in (("pd", pd), ("ac", ac), ("gd", gd)):
        if not val > 0:
            raise ValueError(f"FR quantisation step {key}={val!r} must be > 0.")
    q = torch.full((8, 8), float(gd), dtype=dtype, device=device)
    q[:4, :4] = float(ac)
    q[:2, :2] = float(pd)
    return q


def frequency_refinement(
    x: Tensor,
    pd: float = 30.0,
    ac: float = 5.0,
    gd: float = 60.0,
    rounding: str = "exact",
    *,
    q: Tensor | None = None,
) -> Tensor:
    """Apply FR to images ``x`` ``[B,C,H,W]`` in [0,1] (any H, W; float32/64; CPU or CUDA).

    ``q`` (``[8,8]``) overrides the three-band table built from ``pd, ac, gd``.
    Returns images of the same shape and dtype, in [0,1].
    """
    check_images(x, "frequency_refinement")
    check_rounding(rounding)
    if q is None:
        q = fr_quant_table(pd, ac, gd, dtype=x.dtype, device=x.device)
    elif tuple(q.shape) != (8, 8):
        raise ValueError(f"FR table q must have shape (8, 8), got {tuple(q.shape)}.")
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    v = x * 255.0
    if ph or pw:  # zero padding bottom/right, as the reference code does
        v = F.pad(v, (0, pw, 0, ph))
    v = blockwise_quantize(v, q, rounding)
    v = v[..., :h, :w]
    return (v / 255.0).clamp(0.0, 1.0)


_FR = signature_defaults(frequency_refinement)


@register_defense("fr")
class FrequencyRefinement(Defense):
    """Frequency Refinement (Liu et al., MICCAI 2020) as a module; see :func:`frequency_refinement`."""

    rounds = True


    def __init__(self, pd: float = _FR["pd"], ac: float = _FR["ac"], gd: float = _FR["gd"],
                 rounding: str = _FR["rounding"]) -> None:
        super().__init__()
        self.pd, self.ac, self.gd = float(pd), float(ac), float(gd)
        self.rounding = check_rounding(rounding)
        # float64 buffer: cast to the input dtype/device per call (moves with .to(device)).
        self.register_buffer("q", fr_quant_table(pd, ac, gd), persistent=False)

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        return frequency_refinement(x, rounding=rounding or self.rounding, q=self.q.to(x.dtype))

    def extra_repr(self) -> str:
        return f"pd={self.pd}, ac={self.ac}, gd={self.gd}, rounding={self.rounding!r}"
