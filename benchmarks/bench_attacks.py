"""Side-by-side cost of the attack engine (not a test; prints ratios measured in one run).

    PYTHONPATH=. python benchmarks/bench_attacks.py [--size 96] [--iters 40] [--batch 4] [--threads 1]

Rows (same model, same batch, same process):
1. ASMA cost per iteration vs the floor (one forward + one input-gradient backward).
2. Early-stopped ASMA (efficient schedule) vs ``paper_exact`` (two forwards, fixed count):
   time to reach the target IoU.
3. Peak memory of ASMA vs batch size (CUDA: max_memory_allocated; CPU: peak-RSS growth in a
   fresh subprocess per batch size, since tracemalloc does not see torch's allocator).

Model: the project's default U-Net (``conf/model/unet.yaml``), trained for a few seconds on
synthetic disks (a random net barely depends on its input); the ASMA target is another image's
clean prediction.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from lightning_seg.attacks import asma
from lightning_seg.attacks.measure import per_image_iou
from tests.helpers.toy_models import synthetic_disks, train_quick


def get_model() -> tuple[nn.Module, str]:
    """The default segmenter of the project (``conf/model`` via the config schema): the floor is its cost."""
    from lightning_seg.config import compose, to_plain
    from lightning_seg.models import build_model

    params = to_plain(compose(["logger=none"]).model)
    return build_model(params.pop("name"), **params), f"default UNet({params['width']=}, {params['depth']=})"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def floor_step(model, x, t):
    d = torch.zeros_like(x, requires_grad=True)
    z = model(x + d)
    (g,) = torch.autograd.grad(z.gather(1, t.unsqueeze(1)).sum(), d)
    return g


def peak_memory(batch: int, size: int, dev: torch.device) -> float:
    """Peak memory (MB) of 5 ASMA iterations at ``batch``.

    CUDA: max_memory_allocated. CPU: a fresh subprocess per batch size reports the growth of
    its peak RSS (ru_maxrss) across the attack, after a warm-up forward (tracemalloc cannot see
    torch's allocator)."""
    if dev.type == "cuda":
        model, _ = get_model()
        model = model.to(dev).eval()
        xb = torch.rand(batch, 3, size, size, device=dev)
        tb = torch.randint(0, 2, (batch, size, size), device=dev)
        torch.cuda.reset_peak_memory_stats()
        asma(model, xb, tb, tau=1e-4, max_iter=5)
        return torch.cuda.max_memory_allocated() / 2**20
    out = subprocess.run([sys.executable, __file__, "--mem-child", str(batch), "--size", str(size)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def mem_child(batch: int, size: int) -> None:
    torch.set_num_threads(1)
    model, _ = get_model()
    model.eval()  # memory does not depend on the weights
    xb = torch.rand(batch, 3, size, size)
    tb = torch.randint(0, 2, (batch, size, size))
    with torch.no_grad():
        model(xb[:1])  # warm-up: allocator and kernels
    try:  # reset the peak-RSS counter (Linux >= 4.0); fall back to ru_maxrss otherwise
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _status_kib("VmRSS")
    asma(model, xb, tb, tau=1e-4, max_iter=5)
    after = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024)


def _status_kib(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        mem_child(args.mem_child, args.size)
        return
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, desc = get_model()
    B, S, n = args.batch, args.size, args.iters
    model = model.to(dev)
    train_quick(model, S, steps=60, device=dev)
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = synthetic_disks(B, S, torch.Generator().manual_seed(1))
    x = x.to(dev)
    with torch.no_grad():
        clean = model(x).argmax(1)
    t = clean.roll(1, 0)  # ASMA protocol: another image's (predicted) mask as target
    print(f"device={dev} model={desc} batch={B} size={S} iters={n} threads={torch.get_num_threads()}")

    # 1. per-iteration cost vs the floor
    t_floor = timed(lambda: [floor_step(model, x, t) for _ in range(n)], dev) / n
    t_eff = timed(lambda: asma(model, x, t, tau=1e-4, beta=1e-4, max_iter=n), dev) / n
    t_rel = timed(lambda: asma(model, x, t, step="relative", step_size=0.02, max_iter=n), dev) / n  # project default
    t_pap = timed(lambda: asma(model, x, t, tau=1e-4, beta=1e-4, max_iter=n, paper_exact=True), dev) / n
    print("\n[1] cost per iteration (batch of %d)" % B)
    print(f"  floor (1 fwd + 1 input-grad bwd) {t_floor * 1e3:8.2f} ms   1.00x")
    print(f"  asma efficient (raw step)        {t_eff * 1e3:8.2f} ms   {t_eff / t_floor:.2f}x")
    print(f"  asma efficient (relative step)   {t_rel * 1e3:8.2f} ms   {t_rel / t_floor:.2f}x")
    print(f"  asma paper_exact                 {t_pap * 1e3:8.2f} ms   {t_pap / t_floor:.2f}x")

    # 2. time to target: early stop vs the paper's fixed schedule. The target IoU is what the
    # paper schedule reaches on every image (random nets reach different levels), minus 0.05.
    kw = dict(step="normalized", step_size=2.0, max_iter=4 * n)
    t_paper = timed(lambda: asma(model, x, t, paper_exact=True, **kw), dev, repeats=2)
    r_paper = asma(model, x, t, paper_exact=True, **kw)
    thr = max(float(r_paper.iou.min()) - 0.05, 0.0)
    r_early = asma(model, x, t, iou_threshold=thr, **kw)
    t_early = timed(lambda: asma(model, x, t, iou_threshold=thr, **kw), dev, repeats=2)
    iou0 = per_image_iou(clean, t).mean()
    print(f"\n[2] time to target IoU >= {thr:.2f} (normalized step 2.0, clean IoU {iou0:.2f})")
    print(f"  paper_exact  : {t_paper:7.3f} s  final IoU {[round(v, 2) for v in r_paper.iou.tolist()]}  "
          f"iters {4 * n}, fwd {r_paper.forwards}")
    print(f"  early-stopped: {t_early:7.3f} s  success {r_early.success.float().mean():.2f}  "
          f"iters/img {r_early.iterations.tolist()}, fwd {r_early.forwards}")
    print(f"  ratio paper/early = {t_paper / t_early:.2f}x")

    # 3. peak memory vs batch size
    print("\n[3] peak memory of 5 ASMA iterations vs batch size")
    base = None
    for b in (1, 4, 16):
        mb = peak_memory(b, S, dev)
        base = base or max(mb, 1e-6)
        print(f"  batch {b:3d}: {mb:8.1f} MB   {mb / base:.2f}x of batch 1")


if __name__ == "__main__":
    main()
