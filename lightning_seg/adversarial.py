"""Attacks inside the training loop: per-batch adversarial evaluation and its DDP-exact aggregation.

Pure functions and metric objects used by the validation callback (``callbacks/adversarial_validation.py``)
and the adversarial-training hook (``lightning_seg/adv_training.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_seg.attacks import AttackResult, build_attack
from lightning_seg.clinical import CALLBACK_KEYS, CLINICAL_TASK, callback_values
from lightning_seg.metrics import per_image_dice
from lightning_seg.targets import make_target
from lightning_seg.tasks import Task

BASE_KEYS = ("success", "iou", "pixel_acc", "l2", "linf")


def build_named_attack(name: str, sections: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """An attack from a key of the config's ``attack`` section (e.g. ``asma_paper``) or a registered name."""
    params = dict((sections or {}).get(name, {}))
    registered = params.pop("name", name)
    params.update(overrides)
    return build_attack(registered, **params)


def bind_task(attack: Any, task: Task) -> Any:
    """Give an attack that scores Dice itself (synthesis: ``structures`` = None) the task's structures, so that its
    Dice is the project's reporting Dice (glaucoma: disc = {rim, cup} and cup, REFERENCE 1.1)."""
    config = getattr(attack, "config", None)
    if config is not None and hasattr(config, "structures") and config.structures is None:
        config.structures = [list(ids) for _, ids in task.structures]
    return attack


def is_targeted(attack: Any) -> bool:
    return bool(getattr(attack, "targeted", getattr(attack.config, "targeted", True)))


def attack_batch(attack: Any, net: nn.Module, images: Tensor, labels: Tensor, task: Task, target: str,
                 generator: torch.Generator | None = None) -> tuple[AttackResult, dict[str, Tensor]] | None:
    """Attack one batch; per-image values: success, IoU / pixel accuracy vs the reference, L2, Linf, the
    robust Dice of the adversarial prediction vs the ground truth per structure, and the clinical read-outs
    ``clin_*`` (:func:`lightning_seg.clinical.callback_values`: vCDR and screening flips for disc_cup, shape
    changes for lesion / disc; may be NaN, which :class:`PerImageMeans` skips). For attacks that deform the
    anatomy (synthesis) the ground truth is the equally deformed label. ``None`` when a targeted
    ``other_image`` attack gets a single image (no other image to take the target from)."""
    if is_targeted(attack):
        if target == "other_image" and images.shape[0] < 2:
            return None
        reference = make_target(target, labels, generator=generator)
    else:
        reference = labels
    result = attack(net, images, reference)
    values = {k: getattr(result, k).double() for k in BASE_KEYS}
    gt = result.extras.get("adv_labels", labels)
    dice = per_image_dice(result.pred, gt, task)
    for j, name in enumerate(task.structure_names):
        values[f"robust_dice_{name}"] = dice[:, j].double()
    with torch.no_grad():
        clean_pred = net(images).argmax(1)  # net is in eval mode here (the callback runs in validation)
    clinical = callback_values(CLINICAL_TASK[task.name], gt, clean_pred, result.pred)
    values |= {f"clin_{k}": v.double() for k, v in clinical.items()}
    return result, values


def metric_keys(task: Task, eps_sweep: tuple[float, ...] = ()) -> tuple[str, ...]:
    sweep = tuple(k for eps in eps_sweep for k in (f"{sweep_tag(eps)}/dice", f"{sweep_tag(eps)}/iou"))
    clinical = tuple(f"clin_{k}" for k in CALLBACK_KEYS[CLINICAL_TASK[task.name]])
    return (*BASE_KEYS, *(f"robust_dice_{s}" for s in task.structure_names), *clinical, *sweep)


def sweep_tag(eps: float) -> str:
    """Metric name part for a budget: 4/255 -> 'pgd_eps4'."""
    return f"pgd_eps{eps * 255:g}"


def sweep_batch(net: nn.Module, images: Tensor, labels: Tensor, task: Task, eps_sweep: tuple[float, ...], steps: int) -> dict[str, Tensor]:
    """Per-image robust Dice (mean over structures) and IoU vs the ground truth under untargeted Linf PGD per budget."""
    from lightning_seg.attacks import per_image_iou

    out = {}
    for eps in eps_sweep:
        result = build_attack("pgd", eps=eps, alpha=2.5 * eps / steps, steps=steps, targeted=False)(net, images, labels)
        out[f"{sweep_tag(eps)}/dice"] = per_image_dice(result.pred, labels, task).mean(1).double()
        out[f"{sweep_tag(eps)}/iou"] = per_image_iou(result.pred, labels, num_classes=task.num_classes).double()
    return out


class PerImageMeans(Metric):
    """Means over images of per-image values, as sums and counts: exact under DDP whatever the number of
    batches per rank (``compute()`` all-reduces the sums; every rank must call it). NaN values (undefined
    read-outs, e.g. the compactness of an empty prediction) are skipped: each key has its own count of
    defined values; a key with none gives NaN. ``images`` counts all images."""

    full_state_update = False

    def __init__(self, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.keys = keys
        for k in keys:
            self.add_state(f"sum_{k}", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"n_{k}", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: dict[str, Tensor]) -> None:  # type: ignore[override]
        for k in self.keys:
            v = values[k].double()
            defined = ~torch.isnan(v)
            setattr(self, f"sum_{k}", getattr(self, f"sum_{k}") + torch.where(defined, v, torch.zeros_like(v)).sum())
            setattr(self, f"n_{k}", getattr(self, f"n_{k}") + defined.sum())
        self.count += values[self.keys[0]].numel()

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        out = {}
        for k in self.keys:
            n = getattr(self, f"n_{k}")
            mean = getattr(self, f"sum_{k}") / n.clamp_min(1)
            out[k] = torch.where(n > 0, mean, torch.full_like(mean, float("nan"))).float()
        return out | {"images": self.count.float()}
