"""Attack panels that explain themselves (matplotlib, Agg backend).

One row per attacked image: input | ground truth | clean prediction | target (targeted attacks) | adversarial image |
perturbation (amplified, factor printed) | adversarial prediction. Masks are drawn over the image in the colour-blind-safe
Okabe-Ito palette, with a legend naming the task's classes. The title carries the method, the image id, the IoU of the
adversarial prediction against the attack's reference, the perturbation's RMS and Linf (x 1/255) and L2 ([0,1] units),
and for glaucoma disc / cup the vCDR ground truth, clean -> adversarial. Fundus panels (tasks ``disc`` and
``disc_cup``) are cropped around the optic disc so that the cup is visible.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# Okabe & Ito (2008), colour-blind-safe: index = class id (0 background stays unpainted in overlays).
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7"}
PALETTE = np.array([[0, 0, 0], [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66]], dtype=np.uint8)
NOT_PREDICTED = np.array([128, 128, 128], np.uint8)  # border a valid-convolution network does not predict
FUNDUS_TASKS = ("disc", "disc_cup")
OVERLAY_ALPHA = 0.6


def columns(targeted: bool) -> tuple[str, ...]:
    """The panel's column titles (the perturbation's own title adds its amplification factor)."""
    return ("input", "ground truth", "clean prediction", *(("target",) if targeted else ()), "adversarial",
            "perturbation", "adv. prediction")


COLUMNS = columns(True)


def to_uint8(image: Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] -> uint8 HxWx3."""
    out = image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def colorize(mask: Tensor) -> np.ndarray:
    """Class-index map -> uint8 RGB in :data:`PALETTE` (negative values: grey, not predicted)."""
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    out = PALETTE[m.clip(0, len(PALETTE) - 1)]
    out[m < 0] = NOT_PREDICTED
    return out


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The classes >= 1 of ``mask`` painted over ``image`` (uint8 HxWx3) with opacity ``alpha``."""
    out = image.astype(np.float32)
    paint = mask != 0
    out[paint] = (1 - alpha) * out[paint] + alpha * colorize(mask)[paint]
    return out.round().astype(np.uint8)


def amplify(delta: Tensor) -> tuple[np.ndarray, float]:
    """Perturbation shown around mid-grey, multiplied by ``factor`` = 0.5 / Linf so that its largest value reaches
    black or white; returns (uint8 HxWx3, factor). The factor is printed on the panel: the picture is the perturbation
    ``factor`` times stronger than it is."""
    linf = float(delta.detach().abs().max())
    factor = 0.5 / linf if linf > 1e-12 else 1.0
    return to_uint8(0.5 + factor * delta), factor


def perturbation_norms(delta: Tensor) -> dict[str, float]:
    """RMS and Linf in 1/255 units, L2 over the whole [0,1] input (the project's unit convention)."""
    d = delta.detach().float()
    return {"rms_255": float(d.pow(2).mean().sqrt()) * 255, "linf_255": float(d.abs().max()) * 255,
            "l2": float(d.flatten().norm())}


def centre_mask(mask: Tensor, h: int, w: int, fill: int = -1) -> np.ndarray:
    """A (possibly smaller, valid-convolution) mask centred on the image size; the border is ``fill``."""
    m = mask.detach().cpu().numpy().astype(np.int64) if torch.is_tensor(mask) else np.asarray(mask, np.int64)
    mh, mw = m.shape
    if (mh, mw) == (h, w):
        return m
    top, left = (h - mh) // 2, (w - mw) // 2
    return np.pad(m, ((top, h - mh - top), (left, w - mw - left)), constant_values=fill)


def disc_crop(masks: list[np.ndarray], h: int, w: int, zoom: float = 2.5, min_side: int = 24) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a square around the optic disc (class >= 1 of ``masks``: ground truth and target),
    ``zoom`` times the disc's larger extent and at least ``min_side`` px; the whole image when no disc is drawn."""
    disc = np.zeros((h, w), bool)
    for m in masks:
        disc |= m >= 1
    if not disc.any():
        return 0, 0, h, w
    rows, cols = np.nonzero(disc)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    side = int(min(max(h, w), max(min_side, round(zoom * extent))))
    cy, cx = (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2
    top = int(np.clip(round(cy - side / 2), 0, max(0, h - side)))
    left = int(np.clip(round(cx - side / 2), 0, max(0, w - side)))
    return top, left, min(side, h), min(side, w)


def _vcdr(mask: np.ndarray) -> float:
    from lightning_seg.metrics.clinical import vcdr

    return float(vcdr(torch.as_tensor(np.clip(mask, 0, None))[None])[0])


def attack_figure(image: Tensor, label: Tensor, clean_pred: Tensor, adv: Tensor, adv_pred: Tensor, *,
                  target: Tensor | None = None, class_names: tuple[str, ...] = ("background", "foreground"),
                  task: str = "", key: str = "", method: str = "", iou: float | None = None) -> Any:
    """The panel of one attacked image as a matplotlib Figure (see the module docstring). ``target``: the targeted
    attack's target mask (None: untargeted, no target column). The figure's ``panel_info`` holds its columns, crop
    box (top, left, height, width), amplification factor, norms and vCDRs (tests and captions read it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    h, w = image.shape[-2:]
    gt, clean, advp = (centre_mask(m, h, w) for m in (label, clean_pred, adv_pred))
    tgt = None if target is None else centre_mask(target, h, w)
    img, adv_img = to_uint8(image), to_uint8(adv)
    pert, factor = amplify(adv - image)
    norms = perturbation_norms(adv - image)
    fundus = task in FUNDUS_TASKS
    top, left, ch, cw = disc_crop([gt] + ([tgt] if tgt is not None else []), h, w) if fundus else (0, 0, h, w)

    def crop(a: np.ndarray) -> np.ndarray:
        return a[top:top + ch, left:left + cw]

    tiles = [("input", img), ("ground truth", overlay(img, gt)), ("clean prediction", overlay(img, clean))]
    if tgt is not None:
        tiles.append(("target", overlay(img, tgt)))
    tiles += [("adversarial", adv_img), (f"perturbation x{factor:.0f}\n(grey = 0)", pert),
              ("adv. prediction", overlay(adv_img, advp))]
    parts = [p for p in (method, key) if p]
    if iou is not None:
        parts.append(f"IoU {iou:.3f}")
    parts.append(f"RMS {norms['rms_255']:.2f}/255, Linf {norms['linf_255']:.1f}/255, L2 {norms['l2']:.2f}")
    vcdrs = None
    if task == "disc_cup":
        vcdrs = {"gt": _vcdr(gt), "clean": _vcdr(clean), "adv": _vcdr(advp)}
        parts.append(f"vCDR {vcdrs['clean']:.2f} -> {vcdrs['adv']:.2f} (gt {vcdrs['gt']:.2f})")
    title = " | ".join(parts)

    fig = Figure(figsize=(1.9 * len(tiles), 2.9), dpi=100)
    axes = fig.subplots(1, len(tiles))
    for ax, (name, tile) in zip(axes, tiles):
        ax.imshow(crop(tile), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if (ch, cw) != (h, w):
        axes[0].set_xlabel(f"crop {ch}x{cw} of {h}x{w} px\naround the disc", fontsize=7)
    fig.suptitle(title, fontsize=9)
    handles = [Patch(facecolor=PALETTE[k] / 255, edgecolor="black", label=name) for k, name in enumerate(class_names) if k]
    if (gt < 0).any() or (advp < 0).any():
        handles.append(Patch(facecolor=NOT_PREDICTED / 255, edgecolor="black", label="not predicted (border)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.78, bottom=0.14, wspace=0.05)
    fig.panel_info = {"columns": [t[0].split("\n")[0].split(" x")[0] for t in tiles], "crop": (top, left, ch, cw),
                      "factor": factor, "norms": norms, "vcdr": vcdrs, "title": title}
    return fig


def figure_png(fig: Any) -> np.ndarray:
    """A matplotlib Figure rendered to uint8 RGB."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def attack_panel(image: Tensor, target: Tensor, adv: Tensor, adv_pred: Tensor, *, title: str = "", scale: int = 2,
                 label: Tensor | None = None, clean_pred: Tensor | None = None, targeted: bool = True,
                 class_names: tuple[str, ...] = ("background", "foreground"), task: str = "") -> np.ndarray:
    """One panel as uint8 RGB (see :func:`attack_figure`; ``target`` is the attack's reference: the target of a
    targeted attack, else the ground truth). ``scale`` is kept for old callers and ignored."""
    fig = attack_figure(image, label if label is not None else target, clean_pred if clean_pred is not None else target,
                        adv, adv_pred, target=target if targeted else None, class_names=class_names, task=task,
                        method=title)
    return figure_png(fig)


def save_png(array: np.ndarray, path) -> None:
    from lightning_seg.io import atomic_write

    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"), binary=True)


def save_panels(name: str, adv: Tensor, pred: Tensor, iou: Tensor, images: Tensor, reference: Tensor, n: int, run_dir: Path,
                keys: list[str], *, labels: Tensor | None = None, clean_pred: Tensor | None = None,
                targeted: bool = True, task: Any = None) -> list[Path]:
    """The first ``n`` attack panels of an attack as ``panels/<name>_<i>.png`` in ``run_dir``. ``reference`` is the
    attack's reference (the target of a targeted attack, else the ground truth); ``labels`` the ground truth and
    ``clean_pred`` the clean prediction (default: ``reference``); ``task`` a :class:`~lightning_seg.tasks.Task`."""
    import matplotlib

    matplotlib.use("Agg")
    class_names = task.class_names if task is not None else ("background", "foreground")
    task_name = task.name if task is not None else ""
    paths = []
    for i in range(min(n, len(adv))):
        gt = labels[i] if labels is not None else reference[i]
        clean = clean_pred[i] if clean_pred is not None else reference[i]
        fig = attack_figure(images[i], gt, clean, adv[i], pred[i], target=reference[i] if targeted else None,
                            class_names=class_names, task=task_name, key=keys[i] if i < len(keys) else str(i),
                            method=name, iou=float(iou[i]))
        path = run_dir / "panels" / f"{name}_{i:03d}.png"
        save_png(figure_png(fig), path)
        paths.append(path)
    return paths


__all__ = ["COLUMNS", "OKABE_ITO", "PALETTE", "amplify", "attack_figure", "attack_panel", "centre_mask", "colorize",
           "columns", "disc_crop", "figure_png", "overlay", "perturbation_norms", "save_panels", "save_png", "to_uint8"]
