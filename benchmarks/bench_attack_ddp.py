"""The ``attack`` command on one process and on 2 DDP processes (CPU, gloo), side by side, on the same split.

Trains a small model once, then runs ``python -m lightning_seg attack`` twice on its val split: ``trainer=cpu`` (one
process, all cores) and ``trainer=ddp_cpu trainer.strategy=ddp`` (2 processes, each half of the cores; the real
``ddp`` launcher, which re-executes the command for rank 1). Prints the wall time of each command (start-up and
data loading included), the attack phase's seconds (results.json ``seconds``: per process), the ratio, and whether
the two merged per_image.csv agree (same images, success and iterations; scores within 1e-4).
Not a test: the numbers depend on the machine and its load. Run: ``python benchmarks/bench_attack_ddp.py``
(``--images 96 --size 64``; a bigger split shows the speed-up better, start-up costs a few seconds per process).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli(*args: str) -> float:
    start = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run([sys.executable, "-m", "lightning_seg", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _only(folder: Path) -> Path:
    (run,) = list(folder.iterdir())
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images in the val split (all attacked)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--iters", type=int, default=20, help="ASMA iterations and PGD steps")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_attack_ddp_"))
    data = [f"data.image_size={args.size}", "data.num_train=32", f"data.num_val={args.images}", "data.num_test=2",
            "model.width=8", "model.depth=3", "logger=none", "trainer.enable_progress_bar=false"]
    _cli("fit", *data, "trainer.max_epochs=1", f"run.output_dir={root / 'fit'}")
    ckpt = next((root / "fit").rglob("last.ckpt"))
    attack = ["attack", f"run.ckpt={ckpt}", *data, "attack=[asma,pgd]", f"attack.asma.max_iter={args.iters}",
              f"attack.pgd.steps={args.iters}", "attack.pgd.random_start=false", "attack_eval.batch_size=8",
              "attack_eval.panels=0"]
    wall_one = _cli(*attack, "trainer=cpu", f"run.output_dir={root / 'one'}")
    wall_two = _cli(*attack, "trainer=ddp_cpu", "trainer.strategy=ddp", f"run.output_dir={root / 'two'}")
    runs = {k: _only(root / k / "attack") for k in ("one", "two")}
    seconds = {k: sum(s["seconds"] for s in json.loads((r / "results.json").read_text())["summary"])
               for k, r in runs.items()}
    rows = {k: list(csv.DictReader((r / "per_image.csv").open())) for k, r in runs.items()}
    same = len(rows["one"]) == len(rows["two"]) and all(
        (a["image"], a["success"], a["iterations"]) == (b["image"], b["success"], b["iterations"])
        and abs(float(a["iou"]) - float(b["iou"])) < 1e-4 and abs(float(a["l2"]) - float(b["l2"])) < 1e-4
        for a, b in zip(rows["one"], rows["two"]))
    print(f"{args.images} val images of {args.size}x{args.size}, asma + pgd x {args.iters} iterations, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'':<24}{'1 process':>12}{'2 DDP processes':>18}{'ratio 1/2':>12}")
    print(f"{'command wall time (s)':<24}{wall_one:>12.1f}{wall_two:>18.1f}{wall_one / wall_two:>12.2f}")
    print(f"{'attack phase (s)':<24}{seconds['one']:>12.1f}{seconds['two']:>18.1f}"
          f"{seconds['one'] / seconds['two']:>12.2f}")
    print(f"merged per_image.csv equal: {same} ({len(rows['one'])} rows)")


if __name__ == "__main__":
    main()
