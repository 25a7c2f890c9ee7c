"""What it takes to make a fundus segmenter draw a disc where the image has none (not a test; prints a table).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fundus_disc_budget.py --ckpt <glaucoma fit>/checkpoints/best.ckpt \\
        [--num-images 64] [--eps 8,16,32,64,255] [--norm linf] [--steps 100]

The images of the validation split, each aimed at another eye's mask (the ``attack`` command's seeded derangement),
are grouped by the IoU of the two ground-truth discs (foreground = disc, cup included). On the pairs whose discs do
not touch, ASMA's target asks the model to erase the image's disc and to draw one in an empty part of the fundus.
This script attacks exactly those pairs with targeted APGD (cross-entropy towards the target mask, ``--steps`` steps,
best iterate) in L-inf (or L2) balls of growing radius and prints, per radius: the share of pairs that reach the
target (IoU >= 0.95, the attack command's success), the same for any radius up to this one (a perturbation found in
a smaller ball lies in the larger one; APGD's first step is 2 eps, which on large radii needs more steps), the mean IoU against the target, the mean IoU of the predicted
disc with the target's disc (does a disc appear where it should?) and the share of pairs whose predicted disc covers
at least half of the target's disc. A radius of 255/255 is an unbounded attack (only the [0, 1] box).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.checkpoint_inputs import checkpoint_inputs
from lightning_seg.attacks import apgd

SUCCESS = 0.95


def foreground_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two foreground (label > 0) masks [B,h,w]; both empty counts as 1."""
    a, b = a > 0, b > 0
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="a glaucoma fit checkpoint (its stored config gives the data)")
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--eps", default="8,16,32,64,255",
                    help="increasing radii in units of 1/255 (L-inf) or [0,1] L2 units")
    ap.add_argument("--norm", choices=("linf", "l2"), default="linf")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seeds APGD's random starts (one generator for the run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = Path(args.ckpt)
    inputs, net, stored = checkpoint_inputs(ckpt, args.num_images)
    disc_overlap = foreground_iou(inputs.labels, inputs.targets)
    apart = (disc_overlap == 0).nonzero().squeeze(1)
    n = inputs.images.shape[0]
    print(f"checkpoint {ckpt} (task {stored.task}); {n} validation images aimed at another eye's mask; "
          f"{apart.numel()} pairs whose ground-truth discs do not touch ({100 * apart.numel() / n:.0f} %); targeted "
          f"APGD, cross-entropy, {args.steps} steps, {args.norm}")
    if apart.numel() == 0:
        return
    x0, tgt = inputs.images[apart], inputs.targets[apart]
    print("\n| radius | reach the target (IoU >= 0.95) | within this radius (any run so far) | IoU vs target | IoU of the "
          "predicted disc with the target's disc | predicted disc covers >= half the target's disc |")
    print("|---|---|---|---|---|---|")
    reached = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    generator = torch.Generator(device=x0.device).manual_seed(args.seed)
    for e in (float(v) for v in args.eps.split(",")):
        eps = e / 255 if args.norm == "linf" else e
        ious, discs, covers = [], [], []
        for i in range(0, x0.shape[0], args.batch_size):
            xb, tb = x0[i:i + args.batch_size], tgt[i:i + args.batch_size]
            res = apgd(net, xb, tb, eps=min(eps, 1.0) if args.norm == "linf" else eps, norm=args.norm,
                       steps=args.steps, loss="ce", targeted=True, generator=generator)
            pred = res.pred  # targeted: res.iou is against the target, on every pixel
            ious.append(res.iou)
            discs.append(foreground_iou(pred, tb))
            inter = ((pred > 0) & (tb > 0)).flatten(1).sum(1).float()
            covers.append(inter >= 0.5 * (tb > 0).flatten(1).sum(1).float())
        iou, disc, cover = torch.cat(ious), torch.cat(discs), torch.cat(covers)
        # a perturbation found in a smaller ball lies in this one too (radii in increasing order)
        reached |= iou >= SUCCESS
        unit = f"{e:g}/255" if args.norm == "linf" else f"{e:g} (L2)"
        print(f"| {unit} | {int((iou >= SUCCESS).sum())} / {iou.numel()} | {int(reached.sum())} / {iou.numel()} | "
              f"{iou.mean():.3f} | {disc.mean():.3f} | {int(cover.sum())} / {cover.numel()} |", flush=True)


if __name__ == "__main__":
    main()
