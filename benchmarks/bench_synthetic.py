"""Cost of the on-the-fly synthetic samples (not a test; prints times measured in one run).

    PYTHONPATH=. python benchmarks/bench_synthetic.py [--n 100] [--sizes 64 96 128 256]

For each size, ms per sample (best of 3 rounds of ``--n`` samples, process CPU time and
wall time) of ``synth_isic`` and ``synth_fundus``, side by side with the file-based
alternative: decoding the same image from an in-memory PNG (``cv2.imdecode``, which
every real-data loader pays at least). Ratio > 1 means generation costs more than decoding.
The module is loaded by path so the numbers do not include the package imports.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import cv2

_PATH = Path(__file__).resolve().parents[1] / "datamodules" / "synthetic.py"
_spec = importlib.util.spec_from_file_location("synthetic", _PATH)
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)


def _best(fn, n: int, rounds: int = 3) -> tuple[float, float]:
    best_cpu, best_wall = float("inf"), float("inf")
    for r in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        best_cpu = min(best_cpu, (time.process_time() - c0) / n)
        best_wall = min(best_wall, (time.perf_counter() - w0) / n)
    return best_cpu * 1e3, best_wall * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 256])
    args = ap.parse_args()
    print(f"{'generator':14s} {'size':>5s} {'cpu ms':>8s} {'wall ms':>8s} {'png decode ms':>14s} {'ratio':>6s}")
    for size in args.sizes:
        for name in ("synth_isic", "synth_fundus"):
            gen = getattr(synthetic, name)
            gen(0, size=size)  # warm-up (noise tile, cv2 init)
            cpu, wall = _best(lambda i: gen(i, size=size), args.n)
            pngs = [cv2.imencode(".png", gen(i, size=size)[0])[1] for i in range(8)]
            _, dec = _best(lambda i: cv2.imdecode(pngs[i % 8], cv2.IMREAD_COLOR), args.n)
            print(f"{name:14s} {size:5d} {cpu:8.2f} {wall:8.2f} {dec:14.2f} {wall / dec:6.1f}")


if __name__ == "__main__":
    main()
