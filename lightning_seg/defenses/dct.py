"""Batched 8x8 block DCT helpers shared by Frequency Refinement and JPEG.

The orthonormal DCT-II matrix ``C[u, k] = a(u) cos((2k+1) u pi / 16)``, ``a(0) = sqrt(1/8)``,
``a(u>0) = sqrt(2/8)``, equals scipy's ``dct(norm='ortho')`` and has the scaling of the JPEG FDCT,
so quantisation tables are comparable between FR and JPEG. The 2-D transform of a
block ``B`` is ``C B C^T`` and its inverse ``C^T X C``; all blocks are processed by two matmuls per
direction on reshaped views of the image (no Python loop over blocks, no block permute).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_seg.defenses.base import round_with_mode


def dct_matrix(n: int = 8, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal DCT-II matrix ``C`` of size ``n x n`` (rows = frequencies u, columns = samples k)."""
    k = torch.arange(n, dtype=torch.float64)
    u = k[:, None]
    c = torch.cos((2 * k[None, :] + 1) * u * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    c[0] = c[0] / math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def blockwise_quantize(x: Tensor, q: Tensor, rounding: str = "exact") -> Tensor:
    """Per 8x8 block of every channel: ``X = C B C^T``, ``X_hat = Q * round(X / Q)``, ``C^T X_hat C``.

    ``x``: ``[B,C,H,W]`` with H, W multiples of 8, any value scale (the caller chooses 0..255 etc.);
    ``q``: ``[8,8]`` table, or ``[C,8,8]`` for one table per channel (JPEG luma/chroma).
    """
    b, c, h, w = x.shape
    if h % 8 or w % 8:
        raise ValueError(f"blockwise_quantize needs H, W multiples of 8, got {h}x{w}; pad first.")
    cmat = dct_matrix(8, dtype=x.dtype, device=x.device)
    q = q.to(dtype=x.dtype, device=x.device)
    # Coefficient layout [B, C, H/8, u, W/8, v]: no permute/copy of blocks is needed.
    q = q[None, :, None, :, None, :] if q.dim() == 3 else q.view(8, 1, 8)
    rows = b * c * (h // 8)
    coef = cmat @ x.reshape(rows, 8, w)  # C B: one [8,8] @ [8,W] GEMM per block row
    coef = (coef.reshape(-1, 8) @ cmat.T).reshape(b, c, h // 8, 8, w // 8, 8)  # (C B) C^T
    coef = q * round_with_mode(coef / q, rounding)
    out = cmat.T @ coef.reshape(rows, 8, w)  # C^T X
    return (out.reshape(-1, 8) @ cmat).reshape(b, c, h, w)  # (C^T X) C
