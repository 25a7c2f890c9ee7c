"""Preview grids of images with ground-truth and predicted mask contours.

Used for README pictures and logged sample panels. Numpy only (no matplotlib / cv2),
so it runs anywhere the package runs.

Conventions: images uint8 HxWx3 RGB (or float [0, 1] / torch tensors CxHxW, which are
converted), masks HxW class-index maps. Contours of ``mask >= k`` are drawn for every
class ``k >= 1``, so for disc/cup masks {0 bg, 1 rim, 2 cup} the outer contour is the
disc and the inner one the cup (disc = mask >= 1, cup = mask == 2, as the task's structures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["mask_contour", "preview_grid", "stack_grids"]

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies): ground truth in blues and green,
# predictions in orange, vermillion and yellow
_GT_COLORS = ((0, 114, 178), (86, 180, 233), (0, 158, 115))
_PRED_COLORS = ((230, 159, 0), (213, 94, 0), (240, 228, 66))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_image(img: Any) -> np.ndarray:
    a = _to_numpy(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))  # CxHxW -> HxWxC
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"image must be HxWx3, HxW or 3xHxW, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        # float images follow the project convention [0, 1]
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return a


def _as_mask(m: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    a = _to_numpy(m)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.shape != shape:
        raise ValueError(f"{what} must be HxW = {shape} class indices, got shape {a.shape}")
    return a.astype(np.int64)


def mask_contour(region: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary of a boolean region: pixels of the region with a 4-neighbour outside.

    Pixels on the image border count as boundary when the region touches the border.
    ``thickness`` > 1 repeats the peeling (thicker lines for upscaled previews).
    """
    region = np.asarray(region, dtype=bool)
    out = np.zeros_like(region)
    cur = region
    for _ in range(max(1, thickness)):
        p = np.pad(cur, 1, constant_values=False)
        interior = cur & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        out |= cur & ~interior
        cur = interior
    return out


def _draw(canvas: np.ndarray, mask: np.ndarray, colors: Sequence[tuple[int, int, int]],
          thickness: int) -> None:
    for k in range(1, int(mask.max(initial=0)) + 1):
        edge = mask_contour(mask >= k, thickness)
        canvas[edge] = colors[(k - 1) % len(colors)]


def preview_grid(images: Sequence[Any] | np.ndarray, masks: Sequence[Any] | np.ndarray,
                 preds: Sequence[Any] | np.ndarray | None = None, *, ncols: int | None = None,
                 scale: int = 1, pad: int = 2, overlay: float = 0.0) -> np.ndarray:
    """Tile images with mask contours (and prediction contours) into one uint8 RGB grid.

    Args:
        images: N images (uint8 HxWx3, float [0, 1] HxWx3 / 3xHxW, or a stacked array
            / tensor [N, ...]). All must share one size.
        masks: N ground-truth class-index maps HxW; contours of ``mask >= k`` for k >= 1
            in Okabe-Ito blue / sky blue.
        preds: optional N predicted class-index maps (e.g. ``logits.argmax(1)``);
            contours in orange / vermillion, drawn on top of the ground truth.
        ncols: tiles per row (default: ceil(sqrt(N))).
        scale: integer nearest-neighbour upscaling before drawing (thin, readable
            contours on small images).
        pad: pixels of white space between tiles.
        overlay: if > 0, tint ground-truth foreground with this opacity (0..1).

    Returns:
        uint8 array [rows * (H*scale + pad) - pad, cols * (W*scale + pad) - pad, 3].
    """
    n = len(images)
    if n == 0:
        raise ValueError("preview_grid needs at least one image")
    if len(masks) != n or (preds is not None and len(preds) != n):
        raise ValueError(f"images, masks and preds must have the same length, got {n}, "
                         f"{len(masks)}, {None if preds is None else len(preds)}")
    if scale < 1 or pad < 0 or not 0.0 <= overlay <= 1.0:
        raise ValueError(f"need scale >= 1, pad >= 0, 0 <= overlay <= 1; got {scale}, {pad}, {overlay}")
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    tiles = []
    for i in range(n):
        img = _as_image(images[i])
        hw = img.shape[:2]
        m = _as_mask(masks[i], hw, "mask")
        pr = None if preds is None else _as_mask(preds[i], hw, "pred")
        if scale > 1:
            img = img.repeat(scale, 0).repeat(scale, 1)
            m = m.repeat(scale, 0).repeat(scale, 1)
            pr = None if pr is None else pr.repeat(scale, 0).repeat(scale, 1)
        tile = img.copy()
        if overlay > 0:
            fg = m > 0
            tile[fg] = ((1 - overlay) * tile[fg] + overlay * np.array(_GT_COLORS[0])).astype(np.uint8)
        th = max(1, scale // 2)
        _draw(tile, m, _GT_COLORS, th)
        if pr is not None:
            _draw(tile, pr, _PRED_COLORS, th)
        tiles.append(tile)
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("preview_grid needs images of one size; resize them first")
    grid = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = t
    return grid


def stack_grids(grids: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Grids of different widths one under the other, left-aligned on white with ``gap`` white rows below each."""
    width = max(g.shape[1] for g in grids)
    return np.concatenate([np.pad(g, ((0, gap), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids])
