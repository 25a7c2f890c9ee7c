"""Attacks inside the training loop: per-batch adversarial evaluation for the validation callback
(``callbacks/adversarial_validation.py``), as per-image values that :class:`PerImageMeans` averages exactly under DDP.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_seg.attacks import AttackResult, is_targeted
from lightning_seg.attacks.targets import make_target
from lightning_seg.evaluation import units
from lightning_seg.evaluation.clinical import CALLBACK_KEYS, callback_values
from lightning_seg.evaluation.inference import on_grid, predict, run_attack
from lightning_seg.evaluation.robustness import robust_sweep
from lightning_seg.metrics.clinical import CLINICAL_TASK
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task

# the units of the attack command's reports (lightning_seg.evaluation.units): success as a percentage, Linf and RMS x255,
# L2 in [0,1] units
BASE_KEYS = (units.SUCCESS_PCT, "iou", "pixel_acc", units.L2, units.LINF, units.RMS)


def attack_batch(attack: Any, net: nn.Module, images: Tensor, labels: Tensor, task: Task, target: str, *,
                 valid: Tensor | None = None, sizes: Tensor | None = None) -> tuple[AttackResult, dict[str, Tensor]] | None:
    """Attack one batch; per-image values: success (0 or 100: its mean is the success rate in percent), IoU / pixel
    accuracy vs the reference, L2 ([0,1] units), Linf and RMS (x255), the
    robust Dice of the adversarial prediction vs the ground truth per structure, and the clinical read-outs
    ``clin_*`` (:func:`lightning_seg.evaluation.clinical.callback_values`: vCDR and screening flips for disc_cup, shape
    changes for lesion / disc; may be NaN, which :class:`PerImageMeans` skips). For attacks that deform the
    anatomy (synthesis) the ground truth is the equally deformed label. ``None`` when a targeted
    ``other_image`` attack gets a single image (no other image to take the target from). ``valid`` / ``sizes``: the
    batch's ``valid`` and ``orig_size`` (padding excluded, clinical read-outs in the original aspect ratio)."""
    if is_targeted(attack):
        if target == "other_image" and images.shape[0] < 2:
            return None
        reference = make_target(target, labels)
    else:
        reference = labels
    result = run_attack(attack, net, images, reference, valid)
    values = {units.SUCCESS_PCT: 100.0 * result.success.double(), "iou": result.iou.double(),
              "pixel_acc": result.pixel_acc.double(), units.L2: result.l2.double(),
              units.LINF: units.X255 * result.linf.double(), units.RMS: units.X255 * result.rms.double()}
    gt = result.extras.get("adv_labels", labels)
    dice = per_image_dice(result.pred, gt, task, None if valid is None else on_grid(valid, gt))
    for j, name in enumerate(task.structure_names):
        values[f"robust_dice_{name}"] = dice[:, j].double()
    clinical = callback_values(CLINICAL_TASK[task.name], gt, predict(net, images, valid=valid), result.pred, sizes=sizes,
                               valid=valid)
    values |= {f"clin_{k}": v.double() for k, v in clinical.items()}
    return result, values


def metric_keys(task: Task, eps_sweep: tuple[float, ...] = ()) -> tuple[str, ...]:
    sweep = tuple(k for eps in eps_sweep for k in (f"{sweep_tag(eps)}/dice", f"{sweep_tag(eps)}/iou"))
    clinical = tuple(f"clin_{k}" for k in CALLBACK_KEYS[CLINICAL_TASK[task.name]])
    return (*BASE_KEYS, *(f"robust_dice_{s}" for s in task.structure_names), *clinical, *sweep)


def sweep_tag(eps: float) -> str:
    """Metric name part for a budget: 4/255 -> 'pgd_eps4'."""
    return f"pgd_eps{eps * 255:g}"


def sweep_batch(net: nn.Module, images: Tensor, labels: Tensor, task: Task, eps_sweep: tuple[float, ...], steps: int,
                sections: dict[str, Any] | None = None, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image robust Dice (mean over structures) and IoU vs the ground truth under untargeted PGD per budget
    (:func:`robust_sweep`, with the ``attack.pgd`` hyper-parameters of ``sections``)."""
    out = {}
    for s in robust_sweep(net, images, labels, task, eps_sweep, steps=steps, sections=sections, valid=valid):
        out[f"{sweep_tag(s.eps)}/dice"] = s.dice.mean(1).double()
        out[f"{sweep_tag(s.eps)}/iou"] = s.iou.double()
    return out
