"""Defense report: input-transformation defenses evaluated under two threat models (REFERENCE 1.3, 3.4-3.6, 5.4).

For an undefended network ``f`` and each defense ``g`` (a ``conf/defense/*.yaml`` section), under each attack:

- ``none (no defense)``: the attack on ``f``, predictions of ``f`` (the baseline; one row per attack);
- ``oblivious``: adversarial images crafted on ``f`` (the attacker ignores the defense), fed through ``g`` -- the FR
  repo's protocol;
- ``adaptive <GRADIENT>``: the same attack on ``f . g`` with the defense's attacker gradient (BPDA identity by default:
  forward through the real ``g``, backward as if ``g(x) = x``);
- ``adaptive EOT (n)``: randomised defenses only, the attack on ``f . g`` with logits averaged over n samples of ``g``.

Per row (means over images): clean Dice / IoU without and with the defense and the benign loss
``IoU(f(x)) - IoU(f(g(x)))``; defense efficiency = IoU of the defended prediction on the adversarial images against the
ground truth (FR repo / REFERENCE 5.4) and the Dice of the same; for targeted attacks the IoU of the defended prediction
against the target and the success rate; the perturbation's L2 / Linf. Only the adaptive rows support a robustness claim.

Sanity checks (REFERENCE 3.6.4), flagged in the report and used by the tests: transfer (oblivious) must not be stronger
than the white-box adaptive attack; robust Dice must not rise with the budget; an unbounded adaptive attack must drive
the defended Dice close to 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks import apsr, per_image_iou
from lightning_seg.attacks.config import build_named_attack, is_targeted
from lightning_seg.defenses import DefendedModel, defense_from_config
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task

BASELINE = "none (no defense)"
OBLIVIOUS = "oblivious"
# Sanity-check tolerances: differences of mean scores below these are noise (random starts, 16-image means).
TRANSFER_TOL = 0.02
MONOTONE_TOL = 0.02
UNBOUNDED_MAX_DICE = 0.1  # "close to 0": an unbounded adaptive attack leaves at most this mean Dice
UNBOUNDED_EPS = 1.0  # the whole [0,1] range: no budget at all
UNBOUNDED_STEPS = 50


# ----------------------------------------------------------------------------- building blocks
@torch.no_grad()
def predict(net: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Hard predictions ``[N,h,w]`` of ``net`` in eval mode (mode restored)."""
    was_training = net.training
    net.eval()
    try:
        return torch.cat([net(x).argmax(1) for x in images.split(batch_size)])
    finally:
        net.train(was_training)


def run_attack(attack: Any, net: nn.Module, images: Tensor, reference: Tensor, batch_size: int, progress: Any = None) -> Tensor:
    """Adversarial images of ``attack`` on ``net``, batch by batch."""
    adv = []
    for x, ref in zip(images.split(batch_size), reference.split(batch_size)):
        adv.append(attack(net, x, ref).adv)
        if progress is not None:
            progress.update(1)
    return torch.cat(adv)


def threat_models(section: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """``(label, gradient, eot_samples)`` of the adaptive attackers for a defense section."""
    defense, gradient, eot = defense_from_config(section)
    out = [(f"adaptive {gradient.upper()}", gradient, 1)]
    if defense is not None and getattr(defense, "randomized", False):
        n = max(eot, 2)
        out.append((f"adaptive EOT (n={n})", gradient, n))
    return out


def deployed(net: nn.Module, section: Mapping[str, Any]) -> nn.Module:
    """``net`` behind the defense as deployed (prediction averaged over the configured EOT samples)."""
    defense, gradient, eot = defense_from_config(section)
    return net if defense is None else DefendedModel(net, defense, gradient=gradient, eot_samples=eot)


def _success(attack: Any, pred: Tensor, reference: Tensor, iou_ref: Tensor) -> Tensor:
    """The attack's own success criterion on a (defended) prediction: IoU vs target >= success_threshold (ASMA
    family) or APSR >= adv_threshold (PGD family, adv_lib)."""
    config = getattr(attack, "config", None)
    if hasattr(config, "success_threshold"):
        return iou_ref >= config.success_threshold
    threshold = getattr(config, "adv_threshold", 0.99)
    return apsr(pred, reference, targeted=is_targeted(attack)) >= threshold


def score_row(defense: str, attack_name: str, threat: str, attack: Any, *, adv: Tensor, images: Tensor, pred: Tensor,
              clean_pred: Tensor, clean_pred_defended: Tensor, labels: Tensor, reference: Tensor, task: Task) -> dict[str, Any]:
    """One report row (means over images) from the defended prediction ``pred`` on the adversarial images ``adv``."""
    k = task.num_classes
    targeted = is_targeted(attack)
    clean_iou = per_image_iou(clean_pred, labels, num_classes=k)
    clean_iou_def = per_image_iou(clean_pred_defended, labels, num_classes=k)
    iou_gt = per_image_iou(pred, labels, num_classes=k)
    delta = (adv - images).flatten(1)
    row: dict[str, Any] = {
        "defense": defense, "attack": attack_name, "threat_model": threat, "targeted": targeted, "n": int(len(images)),
        "clean_dice": float(per_image_dice(clean_pred, labels, task).mean()),
        "clean_dice_defended": float(per_image_dice(clean_pred_defended, labels, task).mean()),
        "clean_iou": float(clean_iou.mean()), "clean_iou_defended": float(clean_iou_def.mean()),
        "benign_loss_iou": float((clean_iou - clean_iou_def).mean()),
        "efficiency_iou": float(iou_gt.mean()),  # FR repo's defense efficiency (REFERENCE 5.4)
        "dice_gt": float(per_image_dice(pred, labels, task).mean()),
        "target_iou": None, "success_rate": None,
        "l2": float(delta.norm(dim=1).mean()), "linf": float(delta.abs().amax(dim=1).mean()),
    }
    if targeted:
        iou_t = per_image_iou(pred, reference, num_classes=k)
        row["target_iou"] = float(iou_t.mean())
        row["success_rate"] = float(_success(attack, pred, reference, iou_t).double().mean())
    else:
        row["success_rate"] = float(_success(attack, pred, reference, iou_gt).double().mean())
    row["check"] = ""
    return row


# ----------------------------------------------------------------------------- sanity checks (pure)
def attack_strength(row: Mapping[str, Any]) -> float:
    """Higher = stronger attack: target IoU for targeted attacks, 1 - Dice vs ground truth for untargeted ones."""
    return float(row["target_iou"]) if row["targeted"] else 1.0 - float(row["dice_gt"])


def check_transfer(rows: list[dict[str, Any]], tol: float = TRANSFER_TOL) -> list[dict[str, Any]]:
    """Flag adaptive rows weaker than the oblivious (transfer) attack on the same defense and attack: a white-box
    attacker who knows the defense can always submit the transfer images, so this means the adaptive attack is
    too weak (bad gradient / too few steps), not that the defense is robust. Adds text to ``row['check']``."""
    for row in rows:
        if not row["threat_model"].startswith("adaptive"):
            continue
        transfer = [r for r in rows if r["threat_model"] == OBLIVIOUS and r["defense"] == row["defense"] and r["attack"] == row["attack"]]
        if transfer and attack_strength(transfer[0]) > attack_strength(row) + tol:
            _flag(row, f"transfer stronger than white-box ({attack_strength(transfer[0]):.3f} > {attack_strength(row):.3f})")
    return rows


def check_monotone(points: list[tuple[float, float]], tol: float = MONOTONE_TOL) -> list[str]:
    """Violations of 'robust Dice does not rise with the budget' in ``[(eps, dice), ...]``."""
    out = []
    pts = sorted(points)
    for (e0, d0), (e1, d1) in zip(pts, pts[1:]):
        if d1 > d0 + tol:
            out.append(f"Dice rises from {d0:.3f} at eps {e0 * 255:g}/255 to {d1:.3f} at {e1 * 255:g}/255")
    return out


def check_unbounded(dice: float, limit: float = UNBOUNDED_MAX_DICE) -> list[str]:
    """Violation of 'an unbounded adaptive attack drives Dice close to 0'."""
    return [] if dice <= limit else [f"unbounded adaptive attack leaves Dice {dice:.3f} > {limit}"]


def _flag(row: dict[str, Any], text: str) -> None:
    row["check"] = f"{row['check']}; {text}" if row["check"] else f"WARN: {text}"


def budget_sweep(net: nn.Module, images: Tensor, labels: Tensor, task: Task, eps_values: list[float], steps: int,
                 batch_size: int, sections: dict[str, Any] | None = None) -> list[tuple[float, float]]:
    """``[(eps, mean Dice vs ground truth)]`` under untargeted Linf PGD on ``net`` (eps 0 = clean)."""
    points = [(0.0, float(per_image_dice(predict(net, images, batch_size), labels, task).mean()))]
    for eps in eps_values:
        attack = build_named_attack("pgd", sections, eps=eps, alpha=2.5 * eps / steps, steps=steps, targeted=False)
        adv = run_attack(attack, net, images, labels, batch_size)
        points.append((eps, float(per_image_dice(predict(net, adv, batch_size), labels, task).mean())))
    return points


def unbounded_dice(net: nn.Module, images: Tensor, labels: Tensor, task: Task, batch_size: int,
                   sections: dict[str, Any] | None = None, steps: int = UNBOUNDED_STEPS) -> float:
    """Mean Dice vs ground truth after targeted PGD with no budget (eps = 1) toward an all-background mask.

    Targeted "erase everything" rather than untargeted CE ascent: maximising a mean CE can pile the loss on a few
    pixels and leave the rest correct, so only the targeted form must reach Dice ~ 0 on any working model."""
    attack = build_named_attack("pgd", sections, eps=UNBOUNDED_EPS, alpha=2.5 * UNBOUNDED_EPS / steps, steps=steps, targeted=True)
    adv = run_attack(attack, net, images, torch.zeros_like(labels), batch_size)
    return float(per_image_dice(predict(net, adv, batch_size), labels, task).mean())


# ----------------------------------------------------------------------------- the report
def defense_report(net: nn.Module, defenses: dict[str, Mapping[str, Any]], attacks: dict[str, Any], images: Tensor,
                   labels: Tensor, targets: Tensor, task: Task, *, batch_size: int, eps_sweep: list[float] | None = None,
                   sweep_steps: int = 20, oblivious: dict[str, Tensor] | None = None, sections: dict[str, Any] | None = None,
                   progress: Any = None) -> dict[str, Any]:
    """Rows (defense x attack x threat model) and sanity checks for the undefended ``net``.

    ``defenses``: label -> flat defense section (``lightning_seg.config.defense_section``); ``attacks``: label -> built
    attack (targeted ones aim at ``targets``, untargeted ones at ``labels``); ``oblivious``: adversarial images already
    crafted on ``net`` per attack label (reused, else computed). Returns ``{"rows": [...], "sanity": [...]}``.
    """
    net = net.eval()
    oblivious = dict(oblivious or {})
    clean_pred = predict(net, images, batch_size)
    models = {name: deployed(net, section) for name, section in defenses.items()}
    clean_def = {name: predict(m, images, batch_size) for name, m in models.items()}
    common = {"images": images, "clean_pred": clean_pred, "labels": labels, "task": task}
    rows: list[dict[str, Any]] = []
    for attack_name, attack in attacks.items():
        reference = targets if is_targeted(attack) else labels
        if attack_name not in oblivious:
            oblivious[attack_name] = run_attack(attack, net, images, reference, batch_size, progress)
        adv = oblivious[attack_name]
        rows.append(score_row("none", attack_name, BASELINE, attack, adv=adv, pred=predict(net, adv, batch_size),
                              clean_pred_defended=clean_pred, reference=reference, **common))
        for name, section in defenses.items():
            model = models[name]
            rows.append(score_row(name, attack_name, OBLIVIOUS, attack, adv=adv, pred=predict(model, adv, batch_size),
                                  clean_pred_defended=clean_def[name], reference=reference, **common))
            defense = model.defense  # type: ignore[union-attr]
            for label, gradient, eot in threat_models(section):
                adaptive = DefendedModel(net, defense, gradient=gradient, eot_samples=eot)
                adv_a = run_attack(attack, adaptive, images, reference, batch_size, progress)
                rows.append(score_row(name, attack_name, label, attack, adv=adv_a, pred=predict(model, adv_a, batch_size),
                                      clean_pred_defended=clean_def[name], reference=reference, **common))
    check_transfer(rows)
    sanity = []
    for name, section in {"none": {"name": "none"}, **defenses}.items():
        adaptive = net if name == "none" else DefendedModel(net, models[name].defense, gradient=threat_models(section)[0][1])  # type: ignore[union-attr]
        points = budget_sweep(adaptive, images, labels, task, sorted(eps_sweep or []), sweep_steps, batch_size, sections)
        unbounded = unbounded_dice(adaptive, images, labels, task, batch_size, sections)
        problems = check_monotone(points) + check_unbounded(unbounded)
        sanity.append({"defense": name, "threat_model": BASELINE if name == "none" else threat_models(section)[0][0],
                       "sweep": [{"eps": e, "dice": d} for e, d in points], "unbounded_dice": unbounded,
                       "check": "ok" if not problems else "WARN: " + "; ".join(problems)})
    return {"rows": rows, "sanity": sanity}


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.3f}"


def defense_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (defense, attack, threat model)."""
    lines = ["| defense | attack | threat model | clean Dice | clean Dice defended | benign loss (IoU) | defense efficiency (IoU vs GT) | "
             "Dice vs GT | target IoU | success % | L2 | Linf (x255) | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['defense']} | {r['attack']} | {r['threat_model']} | {_fmt(r['clean_dice'])} | {_fmt(r['clean_dice_defended'])} | "
                     f"{_fmt(r['benign_loss_iou'])} | {_fmt(r['efficiency_iou'])} | {_fmt(r['dice_gt'])} | {_fmt(r['target_iou'])} | "
                     f"{_fmt(r['success_rate'], pct=True)} | {r['l2']:.2f} | {255 * r['linf']:.1f} | {r['check'] or 'ok'} |")
    return "\n".join(lines)


def sanity_table(sanity: list[dict[str, Any]]) -> str:
    """Markdown: untargeted PGD through each defended model (Dice vs eps) and the unbounded attack."""
    eps = [p["eps"] for p in sanity[0]["sweep"]] if sanity else []
    head = " | ".join(f"Dice @ {e * 255:g}/255" for e in eps)
    lines = [f"| defense | attacker | {head} | Dice, unbounded (eps = {UNBOUNDED_EPS:g}, targeted: erase) | check |",
             "|---|---|" + "---|" * len(eps) + "---|---|"]
    for s in sanity:
        cells = " | ".join(f"{p['dice']:.3f}" for p in s["sweep"])
        lines.append(f"| {s['defense']} | {s['threat_model']} | {cells} | {s['unbounded_dice']:.3f} | {s['check']} |")
    return "\n".join(lines)


def report_markdown(report: dict[str, Any], header: str = "") -> str:
    return (f"{header}\n\n" if header else "") + defense_table(report["rows"]) + (
        "\n\nSanity checks (PGD through the defended model, adaptive attacker; Dice vs ground truth under untargeted PGD "
        "per Linf budget, eps 0 = clean; and under an unbounded targeted PGD toward an empty mask):\n\n"
        + sanity_table(report["sanity"]))


__all__ = ["BASELINE", "OBLIVIOUS", "attack_strength", "budget_sweep", "check_monotone", "check_transfer", "check_unbounded",
           "defense_report", "defense_table", "deployed", "predict", "report_markdown", "run_attack", "sanity_table",
           "score_row", "threat_models", "unbounded_dice"]
