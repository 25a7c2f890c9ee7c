"""Benchmark of the input-transformation defenses (prints; not a test).

Times batched Frequency Refinement (and the other defenses) on a batch of images against one
forward pass of a U-Net on the same batch and prints the ratios (FR target: < 10 % of the U-Net
forward), plus the max abs error of the batched FR against a straightforward per-block reference.

    PYTHONPATH=. python benchmarks/bench_defenses.py [--batch 32] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lightning_seg.defenses import build_defense, frequency_refinement


def get_unet() -> tuple[nn.Module, str]:
    """The project's default model (conf/model/*.yaml as composed by the CLI: what `fit` trains)."""
    try:
        from lightning_seg.config import compose, to_plain
        from lightning_seg.models import build_model

        model = to_plain(compose([]).model)
        name = model.pop("name")
        desc = f"the default model config: {name} " + ", ".join(f"{k}={v}" for k, v in model.items() if k in ("width", "depth", "norm"))
        return build_model(name, **model), desc
    except (ImportError, AttributeError, KeyError):
        return _StandInUNet(), "stand-in U-Net defined in this benchmark (build_model unavailable)"


class _StandInUNet(nn.Module):
    """Small 4-level U-Net (width 16) used only when lightning_seg.models.build_model is missing."""

    def __init__(self, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        self.down = nn.ModuleList([block(3, chans[0])] + [block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([block(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def timeit(fn: Callable[[], object], repeats: int) -> float:
    """Best-of-``repeats`` wall time in seconds after one warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def reference_fr(x: np.ndarray, pd: float = 30.0, ac: float = 5.0, gd: float = 60.0) -> np.ndarray:
    """Per-block loop reference (float64): x [C,H,W] in [0,1]."""
    k = np.arange(8)
    d = np.sqrt(2 / 8) * np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16)
    d[0] /= np.sqrt(2)
    q = np.full((8, 8), gd)
    q[:4, :4] = ac
    q[:2, :2] = pd
    c, h, w = x.shape
    img = np.zeros((c, -(-h // 8) * 8, -(-w // 8) * 8))
    img[:, :h, :w] = x * 255.0
    for ch in range(c):
        for i in range(0, img.shape[1], 8):
            for j in range(0, img.shape[2], 8):
                coef = d @ img[ch, i : i + 8, j : j + 8] @ d.T
                img[ch, i : i + 8, j : j + 8] = d.T @ (q * np.round(coef / q)) @ d
    return np.clip(img[:, :h, :w] / 255.0, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # smoother, more image-like input
    model, model_desc = get_unet()
    model.eval()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {tuple(x.shape)} float32, CPU")
    print(f"model: {model_desc}")

    with torch.no_grad():
        t_model = timeit(lambda: model(x), args.repeats)
        print(f"{'U-Net forward (no_grad)':32s} {t_model * 1e3:9.1f} ms   ratio 1.000")
        defenses = [("fr", {}), ("jpeg", {"quality": 75}), ("bit_depth", {}), ("median", {}), ("gaussian", {})]
        for name, kw in defenses:
            d = build_defense(name, **kw)
            t = timeit(lambda d=d: d(x), args.repeats)
            flag = f"  (target < 0.10: {'PASS' if t / t_model < 0.10 else 'FAIL'})" if name == "fr" else ""
            print(f"{name + ' ' + str(kw or ''):32s} {t * 1e3:9.1f} ms   ratio {t / t_model:.3f}{flag}")

    # FR forward + backward (ste rounding) as used inside an adaptive attack step
    xg = x.clone().requires_grad_(True)
    t_bwd = timeit(lambda: torch.autograd.grad(frequency_refinement(xg, rounding="ste").sum(), xg), args.repeats)
    print(f"{'fr forward+backward (ste)':32s} {t_bwd * 1e3:9.1f} ms   ratio {t_bwd / t_model:.3f}")

    # correctness against the per-block reference on two images (loops are slow)
    sub = x[:2].double()
    t0 = time.perf_counter()
    ref = np.stack([reference_fr(img.numpy()) for img in sub])
    t_ref = time.perf_counter() - t0
    err64 = float(np.abs(frequency_refinement(sub).numpy() - ref).max())
    err32 = np.abs(frequency_refinement(sub.float()).double().numpy() - ref)
    print(f"FR vs per-block reference (2 images): max abs err float64 {err64:.2e} "
          f"({'PASS' if err64 < 1e-5 else 'FAIL'} < 1e-5); float32 max {err32.max():.2e}, 99.9th pct {np.quantile(err32, 0.999):.2e} "
          "(float32 can flip a round-half tie: one quantisation step on a few coefficients)")
    t_batched = timeit(lambda: frequency_refinement(sub), 1)
    print(f"per-block numpy reference {t_ref * 1e3:.1f} ms vs batched float64 {t_batched * 1e3:.1f} ms "
          f"(speed-up x{t_ref / t_batched:.0f})")


if __name__ == "__main__":
    main()
