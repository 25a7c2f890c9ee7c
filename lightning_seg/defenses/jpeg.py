"""JPEG compression (encode + decode) as a batched torch module, following the IJG/libjpeg baseline.

Steps (Wallace 1992 / ITU-T T.81; IJG libjpeg defaults, as used by Pillow):

1. ``255 x`` -> YCbCr (JFIF full range, Y in 0..255, Cb/Cr centred at 128);
2. edge-replicate pad to a multiple of 16 (libjpeg replicates the last row/column);
3. 4:2:0 chroma subsampling by 2x2 box averaging (libjpeg ``h2v2_downsample``);
4. level shift -128, 8x8 orthonormal DCT-II, ``Q * round(X / Q)`` with the IJG standard luminance /
   chrominance tables (T.81 Annex K) scaled by quality: ``s = 5000/q`` (q < 50) else ``200 - 2q``,
   ``Q = clip(floor((Q50 * s + 50) / 100), 1, 255)`` (baseline tables);
5. inverse DCT, +128, chroma upsampling with libjpeg's "fancy" triangle filter (weights 3/4, 1/4 =
   bilinear with ``align_corners=False``), YCbCr -> RGB, crop, ``/255``, clamp [0,1].

Not bit-identical to libjpeg (integer DCT, uint8 rounding of intermediate planes), but close: the
tests require > 33 dB PSNR against Pillow. Rounding modes as in
:func:`~lightning_seg.defenses.base.round_with_mode`; ``exact`` masks gradients (use BPDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.defenses.base import Defense, check_images, check_rounding, register_defense, signature_defaults
from lightning_seg.defenses.dct import blockwise_quantize

# ITU-T T.81 Annex K.1 / IJG jcparam.c standard tables (quality 50), row-major (u vertical, v horizontal).
JPEG_LUMA_Q50 = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
JPEG_CHROMA_Q50 = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

# JFIF (ITU-R BT.601 full range) colour transform.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136286, -0.714136286),
    (1.0, 1.772, 0.0),
)


def jpeg_quant_tables(quality: int = 75, *, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor]:
    """IJG-scaled (luma, chroma) 8x8 tables for ``quality`` in 1..100 (libjpeg ``jpeg_set_quality``)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an int in 1..100, got {quality!r}.")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    out = []
    for base in (JPEG_LUMA_Q50, JPEG_CHROMA_Q50):
        t = torch.tensor(base, dtype=torch.int64)
        t = torch.clamp((t * scale + 50) // 100, 1, 255)  # integer division = floor, as in libjpeg
        out.append(t.to(dtype=dtype, device=device))
    return out[0], out[1]


def _color(x: Tensor, m: tuple[tuple[float, ...], ...]) -> Tensor:
    mat = torch.tensor(m, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", mat, x)


def jpeg(x: Tensor, quality: int = 75, rounding: str = "exact", subsampling: bool = True) -> Tensor:
    """JPEG-compress and decompress RGB images ``x`` ``[B,3,H,W]`` in [0,1]; same shape/dtype out.

    ``subsampling=True`` is 4:2:0 (Pillow/libjpeg default), ``False`` is 4:4:4.
    """
    check_images(x, "jpeg")
    check_rounding(rounding)
    if x.shape[1] != 3:
        raise ValueError(f"jpeg expects RGB images [B,3,H,W], got {x.shape[1]} channels.")
    q_luma, q_chroma = jpeg_quant_tables(quality, dtype=x.dtype, device=x.device)
    h, w = x.shape[-2:]
    mcu = 16 if subsampling else 8
    ph, pw = (-h) % mcu, (-w) % mcu
    ycc = _color(x * 255.0, _RGB_TO_YCBCR)
    ycc = ycc + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[None, :, None, None]
    if ph or pw:
        ycc = F.pad(ycc, (0, pw, 0, ph), mode="replicate")
    ycc = ycc - 128.0  # level shift of all components before the DCT
    y, cbcr = ycc[:, :1], ycc[:, 1:]
    if subsampling:
        cbcr = F.avg_pool2d(cbcr, 2)
    y = blockwise_quantize(y, q_luma, rounding)
    cbcr = blockwise_quantize(cbcr, q_chroma, rounding)
    if subsampling:
        cbcr = F.interpolate(cbcr, scale_factor=2, mode="bilinear", align_corners=False)
    ycc = torch.cat([y, cbcr], dim=1) + 128.0
    ycc = ycc[..., :h, :w] - torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[None, :, None, None]
    rgb = _color(ycc, _YCBCR_TO_RGB)
    return (rgb / 255.0).clamp(0.0, 1.0)


_JPEG = signature_defaults(jpeg)


@register_defense("jpeg")
class JPEG(Defense):
    """JPEG compression defense (Das et al. 2017; Guo et al. ICLR 2018 used q = 75); see :func:`jpeg`."""

    rounds = True


    def __init__(self, quality: int = _JPEG["quality"], rounding: str = _JPEG["rounding"],
                 subsampling: bool = _JPEG["subsampling"]) -> None:
        super().__init__()
        jpeg_quant_tables(quality)  # validate early
        self.quality = quality
        self.rounding = check_rounding(rounding)
        self.subsampling = bool(subsampling)

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        return jpeg(x, self.quality, rounding or self.rounding, self.subsampling)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, rounding={self.rounding!r}, subsampling={self.subsampling}"
