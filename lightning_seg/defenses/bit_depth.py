"""Bit-depth reduction (feature squeezing; Xu, Evans, Qi, NDSS 2018).

``x <- round(x * (2^b - 1)) / (2^b - 1)``; b = 5 for colour images (paper value unverified).
"""

from __future__ import annotations

from torch import Tensor

from lightning_seg.defenses.base import (
    Defense,
    check_images,
    check_rounding,
    register_defense,
    round_with_mode,
    signature_defaults,
)


def bit_depth_reduction(x: Tensor, bits: int = 5, rounding: str = "exact") -> Tensor:
    """Quantise ``x`` ``[B,C,H,W]`` in [0,1] to ``2**bits`` evenly spaced levels (0 and 1 included)."""
    check_images(x, "bit_depth_reduction")
    check_rounding(rounding)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bit depth bits={bits!r} must be an int in 1..16.")
    levels = float(2**bits - 1)
    return (round_with_mode(x.clamp(0.0, 1.0) * levels, rounding) / levels).clamp(0.0, 1.0)


_BITS = signature_defaults(bit_depth_reduction)


@register_defense("bit_depth")
class BitDepth(Defense):
    """Bit-depth reduction module; see :func:`bit_depth_reduction`."""

    rounds = True
    ste_is_bpda = True  # round(L x) / L with a straight-through rounding is x on [0,1]: the BPDA-identity gradient


    def __init__(self, bits: int = _BITS["bits"], rounding: str = _BITS["rounding"]) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bit depth bits={bits!r} must be an int in 1..16.")
        self.bits = bits
        self.rounding = check_rounding(rounding)

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        return bit_depth_reduction(x, self.bits, rounding or self.rounding)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rounding={self.rounding!r}"
