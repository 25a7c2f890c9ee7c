"""The README's model-family table from the runs of ``benchmarks/model_families.sh``.

    python benchmarks/model_families.py OUT

Reads ``OUT/fit/<family>/results.json`` (best val Dice over the 64 validation images, epochs, parameters from the run's
config), ``OUT/attack/<family>/summary.csv`` (ASMA on 32 validation images) and ``OUT/times.tsv`` (wall times) and
prints one markdown row per family.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from lightning_seg.training.checkpoint import load_module

TITLES = {"unet": "built-in U-Net", "monai_unet": "MONAI UNet", "monai_attention_unet": "MONAI AttentionUnet",
          "monai_segresnet": "MONAI SegResNet"}


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"


def _success_pct(asma: dict[str, str]) -> float:
    """Success in percent (``success_pct``; summaries written before the units change hold ``success_rate``)."""
    return float(asma["success_pct"]) if "success_pct" in asma else 100 * float(asma["success_rate"])


def _rms_x255(asma: dict[str, str]) -> float:
    return float(asma["rms_x255_mean"]) if "rms_x255_mean" in asma else 255 * float(asma["rms_mean"])


def row(out: Path, name: str, settings: str, times: tuple[int, int] | None) -> str:
    fit = json.loads((out / "fit" / name / "results.json").read_text())
    with open(out / "attack" / name / "summary.csv", newline="") as f:
        asma = next(r for r in csv.DictReader(f) if r["method"] == "asma")
    module = load_module(str(out / "fit" / name / "checkpoints" / "best.ckpt"))
    params = sum(p.numel() for p in module.net.parameters()) / 1e6
    wall = f"{_minutes(times[0])} + {_minutes(times[1])}" if times else "?"
    return (f"| {TITLES.get(name, name)} | `{settings}` | {params:.2f} M | {fit['best_val_dice']:.3f} | "
            f"{float(asma['clean_dice_lesion_mean']):.3f} | {_success_pct(asma):.0f} % | "
            f"{_rms_x255(asma):.2f} | {float(asma['iterations_mean']):.0f} | "
            f"{float(asma['seconds']):.0f} s | {wall} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    torch.set_num_threads(1)
    times: dict[str, tuple[int, int]] = {}
    settings: dict[str, str] = {}
    for line in (out / "times.tsv").read_text().splitlines() if (out / "times.tsv").is_file() else []:
        name, fit_s, attack_s, model = line.split("\t")
        times[name], settings[name] = (int(fit_s), int(attack_s)), model
    print("| model | overrides | parameters | val Dice (64) | clean Dice (32 attacked) | ASMA success | RMS (x255) | "
          "iterations | ASMA time | wall time (fit + attack) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in TITLES:
        if (out / "attack" / name / "summary.csv").is_file():
            print(row(out, name, settings.get(name, "?"), times.get(name)))


if __name__ == "__main__":
    main()
