"""APGD's cost per iteration against the floor, and SEA with / without early stopping (not a test; prints ratios
measured in one run).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_apgd_speed.py [--size 128] [--batch 8] [--iters 4] [--repeats 3]
        [--sea-size 64] [--sea-steps 20] [--eps 8/255] [--sea-eps 96/255] [--break-level 0.05] [--threads 1]

Rows (same process, same model):

1. Floor: one forward plus one ``torch.autograd.grad`` backward w.r.t. the input (eval mode, frozen parameters, as
   inside every attack) on the batch, per iteration. APGD per iteration: the marginal cost
   ``(t(apgd, 2n steps) - t(apgd, n steps)) / n``, which removes the fixed costs (input checks, the start's forward, the
   final forward of the result); the plain ``t(apgd, n) / n`` is printed too. Target: at most 1.15x the floor.
2. SEA (three members, staged radius) with early stopping of broken images (default ``early_stop = 0.0``: images at
   Dice 0 skip the later members) against the three members run separately (``early_stop=None``, the same work as
   three separate SEA runs of one loss each), and with a looser break level (``--break-level``): wall time,
   backwards, forwards and the worst-case Dice side by side. The toy model keeps a few foreground pixels even at
   large budgets (Dice rarely exactly 0), hence the large default ``--sea-eps`` and the second, looser level.

Model: the project's default U-Net (``conf/model``), trained for a few seconds on synthetic disks (a random net barely
depends on its input, and every image would be "broken" from the start). Timings: best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lightning_seg.attacks import apgd, parse_fraction, sea
from tests.helpers.toy_models import synthetic_disks, train_quick


def get_model() -> tuple[torch.nn.Module, str]:
    from lightning_seg.config import compose, to_plain
    from lightning_seg.models import build_model

    params = to_plain(compose(["logger=none"]).model)
    return build_model(params.pop("name"), **params), f"default UNet(width={params['width']}, depth={params['depth']})"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device, repeats: int) -> float:
    return timed_result(fn, dev, repeats)[0]


def timed_result(fn, dev: torch.device, repeats: int):
    """(best wall time of ``repeats`` calls, the last call's return value)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        out = fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, out


def floor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """n x (one forward + one input-gradient backward): the least any gradient attack can cost per iteration."""
    for _ in range(n):
        d = torch.zeros_like(x, requires_grad=True)
        z = model(x + d)
        torch.autograd.grad(F.cross_entropy(z, y), d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=4, help="n: APGD is timed at n and 2n steps")
    ap.add_argument("--sea-size", type=int, default=64)
    ap.add_argument("--sea-steps", type=int, default=20)
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--sea-eps", default="96/255", help="SEA's budget: large enough to break part of the batch")
    ap.add_argument("--break-level", type=float, default=0.05, help="a second, looser early_stop to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, desc = get_model()
    model = model.to(dev)
    train_quick(model, args.sea_size, steps=60, device=dev)  # fully convolutional: the weights work at any size
    for p in model.parameters():
        p.requires_grad_(False)
    B, S, n, eps = args.batch, args.size, args.iters, parse_fraction(args.eps)
    x, y = synthetic_disks(B, S, torch.Generator().manual_seed(1))
    x, y = x.to(dev), y.to(dev)
    print(f"device={dev} model={desc} threads={torch.get_num_threads()} repeats={args.repeats}")

    # 1. APGD per iteration vs the floor; rounds interleave the three timings so that a change of machine load
    # between them (shared CPUs) does not masquerade as overhead; best of the rounds for each
    with torch.no_grad():
        model(x)  # warm-up
    run = lambda k: apgd(model, x, y, eps=eps, steps=k, generator=torch.Generator(device=dev).manual_seed(0))
    t_floor = t_n = t_2n = float("inf")
    ratios = []
    for _ in range(args.repeats):
        f = timed(lambda: floor(model, x, y, n), dev, 1) / n
        a = timed(lambda: run(n), dev, 1)
        b = timed(lambda: run(2 * n), dev, 1)
        ratios.append((b - a) / n / f)
        t_floor, t_n, t_2n = min(t_floor, f), min(t_n, a), min(t_2n, b)
    marginal = (t_2n - t_n) / n
    print(f"\n[1] APGD (loss ce, eps {args.eps}) per iteration, batch {B} x 3 x {S} x {S}")
    print(f"  floor (1 fwd + 1 input-grad bwd)      {t_floor * 1e3:9.1f} ms   1.00x")
    print(f"  apgd marginal (t(2n) - t(n)) / n     {marginal * 1e3:9.1f} ms   {marginal / t_floor:.2f}x   "
          f"(per round: {', '.join(f'{r:.2f}x' for r in ratios)})")
    print(f"  apgd whole run t(2n) / 2n, fixed costs included {t_2n / (2 * n) * 1e3:9.1f} ms   "
          f"{t_2n / (2 * n) / t_floor:.2f}x  (2n = {2 * n}: {2 * n + 2} forwards, {2 * n} backwards)")

    # 2. SEA with and without early stopping
    xs, ys = synthetic_disks(B, args.sea_size, torch.Generator().manual_seed(2))
    xs, ys = xs.to(dev), ys.to(dev)
    kw = {"eps": parse_fraction(args.sea_eps), "steps": args.sea_steps}
    gen = lambda: torch.Generator(device=dev).manual_seed(0)
    results = {}
    times = {}
    for label, stop in (("separately (early_stop=None)", None), ("early stop (early_stop=0.0)", 0.0),
                        (f"early stop (early_stop={args.break_level})", args.break_level)):
        times[label], results[label] = timed_result(
            lambda s=stop: sea(model, xs, ys, early_stop=s, generator=gen(), **kw), dev, args.repeats)
    print(f"\n[2] SEA, 3 members x {args.sea_steps} steps, eps {args.sea_eps}, batch {B} x 3 x {args.sea_size}^2")
    base = next(iter(times))
    for label, r in results.items():
        print(f"  {label:30s} {times[label]:8.2f} s  {times[label] / times[base]:.2f}x   backwards {r.backwards:5d}  "
              f"forwards {r.forwards:5d}  worst-case Dice {float(r.extras['dice'].mean()):.3f}  "
              f"member images {r.extras['member_images'].sum(0).tolist()}  winners {r.extras['winner_counts']}")


if __name__ == "__main__":
    main()
