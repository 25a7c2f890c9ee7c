"""Attack image panels: input | target | adversarial image | amplified perturbation | adversarial prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

# class id -> RGB: background black, lesion / rim green, cup blue (same colours as the W&B overlays)
PALETTE = np.array([[0, 0, 0], [60, 200, 90], [70, 120, 255], [240, 200, 40]], dtype=np.uint8)
COLUMNS = ("input", "target", "adversarial", "perturbation", "adv. prediction")


def to_uint8(image: Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] -> uint8 HxWx3."""
    return (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def colorize(mask: Tensor) -> np.ndarray:
    return PALETTE[mask.detach().cpu().numpy().clip(0, len(PALETTE) - 1)]


def amplify(delta: Tensor) -> np.ndarray:
    """Perturbation mapped to [0,1] around grey, scaled by its own Linf so that it is visible."""
    scale = delta.abs().max().clamp_min(1e-12)
    return to_uint8(0.5 + 0.5 * delta / scale)


def attack_panel(image: Tensor, target: Tensor, adv: Tensor, adv_pred: Tensor, *, title: str = "", scale: int = 2) -> np.ndarray:
    """One row of five tiles with column headers (and a title line), uint8 RGB."""
    h, w = image.shape[-2:]
    tiles = [to_uint8(image), _fit(colorize(target), h, w), to_uint8(adv), amplify(adv - image), _fit(colorize(adv_pred), h, w)]
    tiles = [np.kron(t, np.ones((scale, scale, 1), dtype=np.uint8)) for t in tiles]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
    header = Image.new("RGB", (row.shape[1], 28 if title else 14), "white")
    draw = ImageDraw.Draw(header)
    tile_w = tiles[0].shape[1] + 4
    for i, name in enumerate(COLUMNS):
        draw.text((i * tile_w + 2, header.height - 13), name, fill=(0, 0, 0))
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(header), row], axis=0)


def _fit(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad a (possibly smaller, valid-conv) mask tile to the image size, centred."""
    th, tw = tile.shape[:2]
    if (th, tw) == (h, w):
        return tile
    top, left = (h - th) // 2, (w - tw) // 2
    return np.pad(tile, ((top, h - th - top), (left, w - tw - left), (0, 0)), constant_values=128)


def save_png(array: np.ndarray, path) -> None:
    from lightning_seg.io import atomic_write

    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"), binary=True)


def save_panels(name: str, adv: Tensor, pred: Tensor, iou: Tensor, images: Tensor, reference: Tensor, n: int, run_dir: Path,
                keys: list[str]) -> list[Path]:
    """The first ``n`` attack panels of an attack as ``panels/<name>_<i>.png`` in ``run_dir``."""
    paths = []
    for i in range(min(n, len(adv))):
        panel = attack_panel(images[i], reference[i], adv[i], pred[i], title=f"{name} | {keys[i]} | IoU {float(iou[i]):.3f}")
        path = run_dir / "panels" / f"{name}_{i:03d}.png"
        save_png(panel, path)
        paths.append(path)
    return paths


__all__ = ["COLUMNS", "PALETTE", "amplify", "attack_panel", "colorize", "save_panels", "save_png", "to_uint8"]
