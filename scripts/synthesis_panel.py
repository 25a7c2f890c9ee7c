"""README panel of the synthesis attack: input | deformed + biased | deformation grid | bias field | deformed label |
prediction, one row per image, for a trained checkpoint.

    python scripts/synthesis_panel.py runs/fit/<run> [--n 3] [--dice-drop 0.2] [--out docs/synthesis_panel.png]

Uses the registered attack (``conf/attack/synthesis.yaml`` defaults, the task's structures) on the first images of
the validation split of the checkpoint's data.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from lightning_seg.attacks import build_attack
from lightning_seg.attacks.config import bind_task
from lightning_seg.attacks.deformations import bilinear_sample
from lightning_seg.config import compose
from lightning_seg.runs import resolve_checkpoint
from lightning_seg.training.checkpoint import load_checkpoint_config, load_module
from lightning_seg.training.trainer import build_datamodule_from
from lightning_seg.viz.panels import colorize, save_png, to_uint8

COLUMNS = ("input", "deformed + bias", "deformation grid", "bias field", "deformed label", "prediction")


def grid_image(disp: torch.Tensor, spacing: int = 8) -> np.ndarray:
    """A regular grid warped by the displacement [2,H,W] (backward map), dark lines on white."""
    h, w = disp.shape[-2:]
    g = torch.ones(1, 1, h, w)
    g[..., ::spacing, :] = 0
    g[..., :, ::spacing] = 0
    ys = torch.arange(h).float().view(h, 1).expand(h, w)
    xs = torch.arange(w).float().view(1, w).expand(h, w)
    warped = bilinear_sample(g, (ys + disp[0]).unsqueeze(0), (xs + disp[1]).unsqueeze(0))[0, 0]
    return to_uint8(warped.clamp(0, 1).expand(3, h, w))


def bias_image(bias: torch.Tensor, eps: float) -> np.ndarray:
    """Bias field [H,W] mapped from [1-eps, 1+eps] to black..white (grey = 1)."""
    v = ((bias - (1 - eps)) / (2 * eps)).clamp(0, 1)
    return to_uint8(v.expand(3, *v.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--dice-drop", type=float, default=0.2)
    parser.add_argument("--out", default="docs/synthesis_panel.png")
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    ckpt = resolve_checkpoint(args.ckpt, "runs")
    stored = load_checkpoint_config(ckpt) or {}
    cfg = compose(["attack=[synthesis]"], base={"seed": stored.get("seed", 0), "data": stored["data"]} if stored else None)
    module = load_module(str(ckpt))
    dm = build_datamodule_from(cfg)
    dm.setup()
    ds = dm.dataset("val")
    items = [ds[(i, 0)] for i in range(args.n)]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["mask"] for it in items])
    params = {k: v for k, v in dict(cfg.attack.synthesis).items() if k != "name"}
    atk = bind_task(build_attack("synthesis", **{**params, "dice_drop": args.dice_drop}), module.task)
    res = atk(module.net, x, y)
    t = res.extras["transform"]
    disp, bias = t.displacement(), t.bias_field()
    rows = []
    for i in range(args.n):
        tiles = [to_uint8(x[i]), to_uint8(res.adv[i]), grid_image(disp[i]), bias_image(bias[i, 0], atk.config.eps_bias),
                 colorize(res.extras["adv_labels"][i]), colorize(res.pred[i])]
        tiles = [np.kron(tl, np.ones((args.scale, args.scale, 1), dtype=np.uint8)) for tl in tiles]
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        row = np.concatenate([a for tl in tiles for a in (tl, gap)][:-1], axis=1)
        e = res.extras
        text = (f"Dice {float(e['dice_clean'][i]):.2f} -> {float(e['dice_adv'][i]):.2f} (asked -{args.dice_drop:g}), "
                f"max disp {float(e['max_disp_px'][i]):.1f} px, max |b-1| {float(e['max_bias'][i]):.2f}, "
                f"min det J {float(e['min_jacobian'][i]):.2f}, SSIM {float(e['ssim'][i]):.2f}")
        header = Image.new("RGB", (row.shape[1], 14), "white")
        ImageDraw.Draw(header).text((2, 1), text, fill=(0, 0, 0))
        rows.append(np.concatenate([np.asarray(header), row], axis=0))
    tile_w = x.shape[-1] * args.scale + 4
    top = Image.new("RGB", (rows[0].shape[1], 14), "white")
    for j, name in enumerate(COLUMNS):
        ImageDraw.Draw(top).text((j * tile_w + 2, 1), name, fill=(0, 0, 0))
    save_png(np.concatenate([np.asarray(top), *rows], axis=0), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
