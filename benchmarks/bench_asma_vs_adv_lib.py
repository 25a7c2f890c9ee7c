"""The project's ASMA side by side with adv_lib's ``asma`` (not a test; prints ratios measured in one run).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_asma_vs_adv_lib.py --ckpt runs/fit/<run>/checkpoints/last.ckpt \\
        [--num-images 8] [--budget 300] [--threads 1] [--set key=value ...] [--skip-default]

Same checkpoint, same first ``--num-images`` validation images, same targets (another image's mask, the seeded
derangement of the ``attack`` command), one process. Three attacks:

1. the project's ``asma`` with its defaults (``attack=asma``; ``--set key=value`` overrides a keyword);
2. adv_lib's ``asma`` with its defaults (tau 1e-7, beta 1e-6, targeted=False, which it ignores: it always pushes
   towards the given labels);
3. adv_lib's ``asma`` with targeted=True and tau calibrated so that its first step has the same mean L2 length as
   the project's (``step_size``), beta / tau kept at 10. adv_lib sums the logit term over the batch, so its step is
   B times the per-image gradient: the calibration divides by B.

adv_lib runs for ``--budget`` iterations (it has no early stop). A wrapper around the model records, at every
forward adv_lib makes, each image's IoU against its target, the L2 of its perturbation and the time, so that the
iteration and wall time at which each image first reaches IoU >= 0.95 and its size there are known. Reported per
attack: success at fixed budgets, median iterations to the target, wall time and passes (forward + backward of one
image; adv_lib runs the whole batch until its last image gets there) until every image that gets there has got
there (the project: the whole call, shrink phase and refinement included), mean RMS (x255) on the images both reach (adv_lib:
at its first iterate with IoU >= 0.95, and the smallest over its iterates with IoU >= 0.95 within the budget).

adv_lib is an optional benchmark dependency (``pip install --no-deps adv_lib==0.2.8``). Its package imports visdom
and torchvision at import time, which do not install or import everywhere: this script loads only
``adv_lib/attacks/segmentation/asma.py`` from the installed files with importlib, with a stub ``visdom`` module in
``sys.modules`` (the attack uses visdom only for its optional plotting callback) and without running adv_lib's
package ``__init__``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_seg.attacks import asma
from lightning_seg.attacks.measure import class_map, per_image_iou

THRESHOLD = 0.95


def load_adv_lib_asma():
    """adv_lib's ``asma`` function from its installed file, with stub modules for what it imports at top level."""
    spec = importlib.util.find_spec("adv_lib")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("adv_lib is not installed: it is an optional benchmark dependency, install it with\n"
                 "    pip install --no-deps adv_lib==0.2.8\n(--no-deps: its visdom / torchvision requirements are "
                 "not needed for this benchmark)")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "attacks" / "segmentation" / "asma.py"
    if not path.is_file():
        sys.exit(f"adv_lib is installed at {root} but has no attacks/segmentation/asma.py (expected adv_lib 0.2.8)")
    # asma.py does `from adv_lib.utils.visdom_logger import VisdomLogger` (a type hint of its plotting callback);
    # stub that module chain so that neither adv_lib/__init__ nor visdom / torchvision are imported
    stubs = {"visdom": types.ModuleType("visdom"), "adv_lib": types.ModuleType("adv_lib"),
             "adv_lib.utils": types.ModuleType("adv_lib.utils"),
             "adv_lib.utils.visdom_logger": types.ModuleType("adv_lib.utils.visdom_logger")}
    stubs["adv_lib.utils.visdom_logger"].VisdomLogger = object
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        mod_spec = importlib.util.spec_from_file_location("adv_lib_asma_file", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod.asma, str(path)


class Recorder(nn.Module):
    """Wraps the model; at each forward records per-image IoU vs the target, L2 of the perturbation and the time."""

    def __init__(self, net: nn.Module, x0: Tensor, targets: Tensor) -> None:
        super().__init__()
        self.net, self.x0, self.targets = net, x0, targets
        self.iou: list[Tensor] = []
        self.l2: list[Tensor] = []
        self.t: list[float] = []
        self.t0 = time.perf_counter()

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        with torch.no_grad():
            k = max(int(z.shape[1]), 2)
            self.iou.append(per_image_iou(class_map(z), self.targets, torch.ones_like(self.targets, dtype=torch.bool),
                                          k).cpu())
            self.l2.append((x - self.x0).flatten(1).norm(dim=1).cpu())
        self.t.append(time.perf_counter() - self.t0)
        return z


def adv_lib_stats(rec: Recorder, numel: int, budgets: list[int]) -> dict:
    iou = torch.stack(rec.iou)  # [iters, B]
    l2 = torch.stack(rec.l2)
    hit = iou >= THRESHOLD
    reached = hit.any(0)
    first = torch.where(reached, hit.float().argmax(0), torch.full_like(reached, -1, dtype=torch.long))
    B = iou.shape[1]
    rms_first = torch.full((B,), float("nan"))
    rms_min = torch.full((B,), float("nan"))
    for i in range(B):
        if reached[i]:
            rms_first[i] = l2[first[i], i] / numel ** 0.5 * 255
            rms_min[i] = l2[hit[:, i], i].min() / numel ** 0.5 * 255
    t_all = max((rec.t[int(first[i])] for i in range(B) if reached[i]), default=float("nan"))
    iters = [int(first[i]) + 1 for i in range(B) if reached[i]]  # iterations done when the hit is seen
    # one forward + one backward of the whole batch per iteration, until the last image that gets there has got there
    passes = B * max(iters) if iters else float("nan")
    return {"reached": reached, "iters": iters, "time": t_all, "passes": passes, "rms_first": rms_first, "rms_min": rms_min,
            "at": {b: int(((first >= 0) & (first < b)).sum()) for b in budgets}}


def parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"none": None, "null": None, "true": True, "false": False}.get(v.lower(), v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="a fit checkpoint (its stored config gives the data)")
    ap.add_argument("--num-images", type=int, default=8)
    ap.add_argument("--budget", type=int, default=300, help="adv_lib iterations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="project asma keyword overrides, key=value")
    ap.add_argument("--skip-default", action="store_true", help="skip adv_lib with its own defaults (the slow run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adv_asma, adv_path = load_adv_lib_asma()

    from benchmarks.checkpoint_inputs import checkpoint_inputs

    ckpt = Path(args.ckpt)
    inputs, net, stored = checkpoint_inputs(ckpt, args.num_images)
    x0, tgt = inputs.images, inputs.targets
    B = x0.shape[0]
    numel = x0[0].numel()
    budgets = [b for b in (25, 50, 100, 200, 300, 500) if b <= args.budget]
    print(f"checkpoint {ckpt} ({stored.name}, task {stored.get('task', '-')}); {B} validation images "
          f"{tuple(x0.shape[1:])}, targets: other image's mask; {args.threads} thread(s); adv_lib from {adv_path}")

    kw = {kv.split("=", 1)[0]: parse_value(kv.split("=", 1)[1]) for kv in args.set}
    t = time.perf_counter()
    res = asma(net, x0, tgt, **kw)
    t_proj = time.perf_counter() - t
    ok = res.success.cpu()
    # steps before each image first reached the target (the shrink phase after it is in res.iterations)
    proj_iters = res.extras.get("iterations_to_target", res.iterations).cpu()
    proj_rms = (res.l2.cpu() / numel ** 0.5 * 255)
    # load-independent cost: a forward-only pass (bisection, the final evaluation) costs about a third of a
    # forward + backward
    proj_cost = res.backwards + (res.forwards - res.backwards) / 3
    print(f"\nproject asma {kw or '(defaults)'}: {int(ok.sum())}/{B} at IoU >= {THRESHOLD} in {t_proj:.1f} s, "
          f"median {statistics.median(proj_iters[ok].tolist()) if ok.any() else float('nan')} iterations to the "
          f"target ({statistics.median(res.iterations.cpu()[ok].tolist()) if ok.any() else float('nan')} with the "
          f"shrink phase, + refinement forwards), mean RMS {proj_rms[ok].mean():.2f}/255, "
          f"{res.forwards} forwards, {res.backwards} backwards, stalled {int(res.extras.get('stalled', torch.zeros(1)).sum())}")

    # the project's first step: L2 length step_size per image (relative step); adv_lib's: B * tau * ||g_i||
    d = torch.zeros_like(x0, requires_grad=True)
    z = net(x0 + d)
    pred = class_map(z)
    logit = z.gather(1, tgt.unsqueeze(1)).squeeze(1).mul(pred != tgt).sum()
    g = torch.autograd.grad(logit, d)[0].flatten(1).norm(dim=1)
    step_size = kw.get("step_size", 0.02)
    tau_cal = step_size / (B * float(g.mean()))

    runs = []
    if not args.skip_default:
        runs.append(("adv_lib defaults", {"targeted": False}))
    runs.append((f"adv_lib calibrated (tau {tau_cal:.3g}, beta {10 * tau_cal:.3g}, targeted)",
                 {"targeted": True, "τ": tau_cal, "β": 10 * tau_cal}))
    for name, extra in runs:
        rec = Recorder(net, x0, tgt)
        rec.t0 = time.perf_counter()
        adv_asma(rec, x0, tgt, num_steps=args.budget, **extra)
        st = adv_lib_stats(rec, numel, budgets)
        both = st["reached"] & ok
        proj_time_ratio = st["time"] / t_proj
        med = statistics.median(st["iters"]) if st["iters"] else float("nan")
        med_p = statistics.median(proj_iters[both].tolist()) if both.any() else float("nan")
        print(f"\n{name}, {args.budget} iterations:")
        print("  success at budget: " + ", ".join(
            f"{b}: adv_lib {st['at'][b]}/{B} vs project {int((ok & (proj_iters <= b)).sum())}/{B}" for b in budgets))
        print(f"  reached: adv_lib {int(st['reached'].sum())}/{B}, project {int(ok.sum())}/{B}, both {int(both.sum())}")
        print(f"  median iterations to IoU {THRESHOLD}: adv_lib {med}, project {med_p} (images both reach)")
        print(f"  wall time to the target (all that reach it): adv_lib {st['time']:.1f} s, project {t_proj:.1f} s "
              f"(whole call) -> project {proj_time_ratio:.2f}x faster")
        print(f"  passes to the target (forward + backward of one image; a forward alone counts 1/3): adv_lib "
              f"{st['passes']:.0f}, project {proj_cost:.0f} (whole call) -> project {st['passes'] / proj_cost:.2f}x fewer")
        if both.any():
            pr, af, am = proj_rms[both].mean(), st["rms_first"][both].mean(), st["rms_min"][both].mean()
            print(f"  mean RMS (x255) on the {int(both.sum())} images both reach: project {pr:.2f}, adv_lib at first hit "
                  f"{af:.2f} (ratio {pr / af:.2f}), adv_lib smallest iterate >= {THRESHOLD} {am:.2f} (ratio {pr / am:.2f})")


if __name__ == "__main__":
    main()
