"""Defense report: input-transformation defenses evaluated under two threat models.

For an undefended network ``f`` and each defense ``g`` (a ``conf/defense/*.yaml`` section), under each attack:

- ``none (no defense)``: the attack on ``f``, predictions of ``f`` (the baseline; one row per attack);
- ``oblivious``: adversarial images crafted on ``f`` (the attacker ignores the defense), fed through ``g`` -- the
  protocol of the Frequency Refinement paper's code (Liu et al., MICCAI 2020);
- ``adaptive <MODE>``: the same attack on ``f . g`` with each gradient mode that applies to ``g``
  (:func:`lightning_seg.defenses.applicable_modes`, the configured ``defense.gradient`` first): BPDA identity (forward
  through the real ``g``, backward as if ``g(x) = x``; Athalye, Carlini, Wagner, ICML 2018); for rounding defenses the
  cubic-rounding surrogate and the straight-through rounding (where it differs from BPDA); for differentiable
  defenses the exact gradient;
- ``adaptive <MODE> + EOT (n)``: randomised defenses only, each mode again with logits averaged over n samples of
  ``g`` (Expectation over Transformation; n = the deployed number of samples, at least 2);
- ``adaptive worst case``: per attack and defense the strongest adaptive row (lowest defended Dice vs the ground truth
  for untargeted attacks, highest IoU with the target for targeted ones); ``worst_of`` names the mode that won. The
  per-mode rows stay in the CSV; a robustness claim rests on this row.

Per row (means over images): clean Dice / IoU without and with the defense and the benign loss
``IoU(f(x)) - IoU(f(g(x)))``; defense efficiency = IoU of the defended prediction on the adversarial images against the
ground truth (the FR code's measure) and the Dice of the same; for targeted attacks the IoU of the defended prediction
against the target and the success rate (``success_pct``, percent); the perturbation's L2 (``l2``, [0,1] units) and Linf
(``linf_x255``), units of :mod:`lightning_seg.evaluation.units`. Only the adaptive rows support a robustness
claim: an oblivious attacker is a weaker threat model, and rounding defenses mask the true gradient.

Sanity checks after Carlini et al. ("On Evaluating Adversarial Robustness", 2019), pure functions of
:mod:`lightning_seg.evaluation.robustness` flagged in the report (``check``) and tested with violating numbers:
transfer (oblivious) is not stronger than the adaptive worst case; the worst case is at most every mode's result;
and per defense, on the first adaptive attacker's view: robust Dice does not rise with the budget, nor with twice the
PGD iterations; a query-based black-box attack (Square) is not stronger than white-box PGD at the same budget; an
unbounded adaptive attack drives the defended Dice close to 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks import apsr, build_named_attack, default_alpha, is_targeted, per_image_iou
from lightning_seg.defenses import DefendedModel, applicable_modes, defend
from lightning_seg.evaluation import units
from lightning_seg.evaluation.inference import attack_batches, predict
from lightning_seg.evaluation.robustness import (
    NOISE_TOL,
    check_black_box,
    check_effort,
    check_monotone,
    check_unbounded,
    check_worst_case,
    robust_sweep,
)
from lightning_seg.io import write_csv, write_text
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task

BASELINE = "none (no defense)"
OBLIVIOUS = "oblivious"
WORST = "adaptive worst case"
CHECK_EPS = 8 / 255  # budget of the effort and black-box checks when the report has no eps sweep
SQUARE_QUERIES = 200  # queries of the black-box (Square) sanity check
UNBOUNDED_EPS = 1.0  # the whole [0,1] range: no budget at all
UNBOUNDED_STEPS = 50


# ----------------------------------------------------------------------------- building blocks
def run_attack(attack: Any, net: nn.Module, images: Tensor, reference: Tensor, batch_size: int, progress: Any = None,
               valid: Tensor | None = None) -> Tensor:
    """Adversarial images of ``attack`` on ``net``, batch by batch (``valid``: the padding is never perturbed)."""
    return torch.cat([r.adv for r in attack_batches(attack, net, images, reference, batch_size, progress, valid=valid)])


def threat_models(model: DefendedModel) -> list[tuple[str, str, int]]:
    """``(label, gradient, eot_samples)`` of the adaptive attackers of a deployed defended model: every gradient mode
    that applies to its defense (:func:`lightning_seg.defenses.applicable_modes`), its configured gradient first, and
    for randomised defenses each mode again with EOT over its deployed number of samples (at least 2)."""
    modes = list(dict.fromkeys([model.gradient, *applicable_modes(model.defense)]))
    out = [(f"adaptive {mode.upper()}", mode, 1) for mode in modes]
    if model.randomized:
        n = max(model.eot_samples, 2)
        out += [(f"adaptive {mode.upper()} + EOT (n={n})", mode, n) for mode in modes]
    return out


def worst_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The strongest of the adaptive rows of one (defense, attack) (:func:`attack_strength`; ties: the first), as a
    ``WORST`` row naming the winning mode in ``worst_of``; ``check`` flags a worst case above any mode's result."""
    best = max(rows, key=attack_strength)  # max keeps the first of equals
    row = {**best, "threat_model": WORST, "worst_of": best["threat_model"], "check": ""}
    problems = check_worst_case(1.0 - attack_strength(row), {r["threat_model"]: 1.0 - attack_strength(r) for r in rows})
    for text in problems:
        _flag(row, text)
    return row


def adaptive(model: DefendedModel, gradient: str, eot_samples: int = 1) -> DefendedModel:
    """The white-box attacker's view of a deployed model: the same network and defense (one instance, so a randomised
    defense keeps one noise stream) with the attacker's gradient and EOT samples."""
    return DefendedModel(model.model, model.defense, gradient=gradient, eot_samples=eot_samples)


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
        "defense": defense, "attack": attack_name, "threat_model": threat, "targeted": targeted, "n": len(images),
        "clean_dice": float(per_image_dice(clean_pred, labels, task).mean()),
        "clean_dice_defended": float(per_image_dice(clean_pred_defended, labels, task).mean()),
        "clean_iou": float(clean_iou.mean()), "clean_iou_defended": float(clean_iou_def.mean()),
        "benign_loss_iou": float((clean_iou - clean_iou_def).mean()),
        "efficiency_iou": float(iou_gt.mean()),  # the FR code's "defense efficiency"
        "dice_gt": float(per_image_dice(pred, labels, task).mean()),
        "target_iou": None, units.SUCCESS_PCT: None,
        units.L2: float(delta.norm(dim=1).mean()), units.LINF: units.x255(float(delta.abs().amax(dim=1).mean())),
    }
    if targeted:
        iou_t = per_image_iou(pred, reference, num_classes=k)
        row["target_iou"] = float(iou_t.mean())
        row[units.SUCCESS_PCT] = units.pct(float(_success(attack, pred, reference, iou_t).double().mean()))
    else:
        row[units.SUCCESS_PCT] = units.pct(float(_success(attack, pred, reference, iou_gt).double().mean()))
    row["worst_of"] = None  # set on the worst-case row: the threat model that won
    row["check"] = ""
    return row


# ----------------------------------------------------------------------------- sanity checks (pure)
def attack_strength(row: Mapping[str, Any]) -> float:
    """Higher = stronger attack: target IoU for targeted attacks, 1 - Dice vs ground truth for untargeted ones."""
    return float(row["target_iou"]) if row["targeted"] else 1.0 - float(row["dice_gt"])


def check_transfer(rows: list[dict[str, Any]], tol: float = NOISE_TOL) -> list[dict[str, Any]]:
    """Flag adaptive rows weaker than the oblivious (transfer) attack on the same defense and attack: a white-box
    attacker who knows the defense can always submit the transfer images, so this means the adaptive attack is
    too weak (bad gradient / too few steps), not that the defense is robust. Where a worst-case row exists only it is
    checked (a single mode may well be weaker than transfer; the worst case must not be). Adds text to
    ``row['check']``."""
    worst = {(r["defense"], r["attack"]) for r in rows if r["threat_model"] == WORST}
    for row in rows:
        if not row["threat_model"].startswith("adaptive"):
            continue
        if (row["defense"], row["attack"]) in worst and row["threat_model"] != WORST:
            continue
        transfer = [r for r in rows if r["threat_model"] == OBLIVIOUS and r["defense"] == row["defense"] and r["attack"] == row["attack"]]
        if transfer and attack_strength(transfer[0]) > attack_strength(row) + tol:
            _flag(row, f"transfer stronger than white-box ({attack_strength(transfer[0]):.3f} > {attack_strength(row):.3f})")
    return rows


def _flag(row: dict[str, Any], text: str) -> None:
    row["check"] = f"{row['check']}; {text}" if row["check"] else f"WARN: {text}"


def budget_sweep(net: nn.Module, images: Tensor, labels: Tensor, task: Task, eps_values: list[float], steps: int,
                 batch_size: int, sections: dict[str, Any] | None = None, valid: Tensor | None = None) -> list[tuple[float, float]]:
    """``[(eps, mean Dice vs ground truth)]`` under untargeted Linf PGD on ``net`` (eps 0 = clean), each prediction
    made again on the adversarial images as in the report's rows."""
    clean = float(per_image_dice(predict(net, images, batch_size, valid=valid), labels, task).mean())
    sweep = robust_sweep(net, images, labels, task, eps_values, steps=steps, sections=sections, batch_size=batch_size,
                         rescore=True, valid=valid)
    return [(0.0, clean)] + [(s.eps, float(s.dice.mean())) for s in sweep]


def unbounded_dice(net: nn.Module, images: Tensor, labels: Tensor, task: Task, batch_size: int,
                   sections: dict[str, Any] | None = None, steps: int = UNBOUNDED_STEPS, valid: Tensor | None = None) -> float:
    """Mean Dice vs ground truth after targeted PGD with no budget (eps = 1) toward an all-background mask.

    Targeted "erase everything" rather than untargeted CE ascent: maximising a mean CE can pile the loss on a few
    pixels and leave the rest correct, so only the targeted form must reach Dice ~ 0 on any working model."""
    alpha = default_alpha(UNBOUNDED_EPS, steps)
    attack = build_named_attack("pgd", sections, eps=UNBOUNDED_EPS, alpha=alpha, steps=steps, targeted=True)
    adv = run_attack(attack, net, images, torch.zeros_like(labels), batch_size, valid=valid)
    return float(per_image_dice(predict(net, adv, batch_size, valid=valid), labels, task).mean())


# ----------------------------------------------------------------------------- the report
def defense_report(net: nn.Module, defenses: dict[str, Mapping[str, Any]], attacks: dict[str, Any], images: Tensor,
                   labels: Tensor, targets: Tensor, task: Task, *, batch_size: int, eps_sweep: list[float] | None = None,
                   sweep_steps: int = 20, oblivious: dict[str, Tensor] | None = None, sections: dict[str, Any] | None = None,
                   progress: Any = None, valid: Tensor | None = None) -> dict[str, Any]:
    """Rows (defense x attack x threat model) and sanity checks for the undefended ``net``.

    ``defenses``: label -> flat defense section (``lightning_seg.config.defense_section``); ``attacks``: label -> built
    attack (targeted ones aim at ``targets``, untargeted ones at ``labels``); ``oblivious``: adversarial images already
    crafted on ``net`` per attack label (reused, else computed); ``valid``: False on padding (``data.resize=pad``),
    which no attack perturbs and no prediction scores; ``progress``: a
    :class:`~lightning_seg.evaluation.progress.Progress` whose total becomes the report's phases (one per row and per
    sanity check), advanced as each ends. Returns ``{"rows": [...], "sanity": [...]}``.
    """
    net = net.eval()
    oblivious = dict(oblivious or {})
    models = {name: defend(net, section) for name, section in defenses.items()}  # each defense built once
    views = {"none": (BASELINE, net)}  # defense -> (threat model, what its first adaptive attacker attacks)
    for name, model in models.items():
        label, gradient, _ = threat_models(model)[0]
        views[name] = (label, adaptive(model, gradient))
    if progress is not None:  # one phase per attacked row (defense x attack x threat model) and per sanity check
        per_attack = 1 + sum(1 + len(threat_models(m)) for m in models.values())
        progress.set_total(len(attacks) * per_attack + len(views))
    step = (lambda **what: progress.update(1, **what)) if progress is not None else (lambda **what: None)
    clean_pred = predict(net, images, batch_size, valid=valid)
    clean_def = {name: predict(m, images, batch_size, valid=valid) for name, m in models.items()}
    common = {"images": images, "clean_pred": clean_pred, "labels": labels, "task": task}
    rows: list[dict[str, Any]] = []
    for attack_name, attack in attacks.items():
        reference = targets if is_targeted(attack) else labels
        if attack_name not in oblivious:
            oblivious[attack_name] = run_attack(attack, net, images, reference, batch_size, valid=valid)
        adv = oblivious[attack_name]
        rows.append(score_row("none", attack_name, BASELINE, attack, adv=adv, pred=predict(net, adv, batch_size, valid=valid),
                              clean_pred_defended=clean_pred, reference=reference, **common))
        step(phase=f"{attack_name} / none")
        for name, model in models.items():  # scored on the deployed model, whoever crafted the images
            scored = {"clean_pred_defended": clean_def[name], "reference": reference, **common}
            rows.append(score_row(name, attack_name, OBLIVIOUS, attack, adv=adv,
                                  pred=predict(model, adv, batch_size, valid=valid), **scored))
            step(phase=f"{attack_name} / {name} / {OBLIVIOUS}")
            modes = []
            for label, gradient, eot in threat_models(model):
                adv_a = run_attack(attack, adaptive(model, gradient, eot), images, reference, batch_size, valid=valid)
                modes.append(score_row(name, attack_name, label, attack, adv=adv_a,
                                       pred=predict(model, adv_a, batch_size, valid=valid), **scored))
                step(phase=f"{attack_name} / {name} / {label}")
            rows += modes + [worst_row(modes)]
    check_transfer(rows)
    sanity = []
    for name, (threat, attacked) in views.items():
        sanity.append(sanity_checks(name, threat, attacked, images, labels, task, batch_size, sorted(eps_sweep or []),
                                    sweep_steps, sections, valid))
        step(phase=f"sanity {name}")
    return {"rows": rows, "sanity": sanity}


def sanity_checks(defense: str, threat: str, attacked: nn.Module, images: Tensor, labels: Tensor, task: Task,
                  batch_size: int, eps_values: list[float], steps: int, sections: dict[str, Any] | None,
                  valid: Tensor | None = None, square_queries: int = SQUARE_QUERIES) -> dict[str, Any]:
    """Checks on the attacker's view ``attacked`` of one defense; ``check`` names violations (module docstring).

    Budget sweep (untargeted PGD, ``steps`` steps per budget) and the unbounded attack; at the largest swept budget
    (``CHECK_EPS`` without a sweep) PGD again with twice the steps (effort) and Square with ``square_queries``
    queries (black-box), both scored like the sweep."""
    points = budget_sweep(attacked, images, labels, task, eps_values, steps, batch_size, sections, valid)
    unbounded = unbounded_dice(attacked, images, labels, task, batch_size, sections, valid=valid)
    eps = max(eps_values) if eps_values else CHECK_EPS
    white = points[-1][1] if eps_values else _mean_dice(attacked, images, labels, task, eps, steps, "pgd", batch_size,
                                                        sections, valid)
    more = _mean_dice(attacked, images, labels, task, eps, 2 * steps, "pgd", batch_size, sections, valid)
    black = _mean_dice(attacked, images, labels, task, eps, square_queries, "square", batch_size, sections, valid)
    problems = (check_monotone(points) + check_effort([(steps, white), (2 * steps, more)], "PGD iterations")
                + check_black_box(white, black) + check_unbounded(unbounded))
    return {"defense": defense, "threat_model": threat, "sweep": [{units.EPS: units.x255(e), "dice": d} for e, d in points],
            "check_eps_x255": units.x255(eps), "pgd_dice": white, "pgd_2x_dice": more, "square_dice": black,
            "square_queries": square_queries, "unbounded_dice": unbounded,
            "check": "ok" if not problems else "WARN: " + "; ".join(problems)}


def _mean_dice(net: nn.Module, images: Tensor, labels: Tensor, task: Task, eps: float, steps: int, attack: str,
               batch_size: int, sections: dict[str, Any] | None, valid: Tensor | None) -> float:
    """Mean Dice vs ground truth under the untargeted ``attack`` at ``eps`` with ``steps`` steps (queries), predicted
    again on the adversarial images as the report's rows are."""
    (s,) = robust_sweep(net, images, labels, task, [eps], steps=steps, attack=attack, sections=sections,
                        batch_size=batch_size, rescore=True, valid=valid)
    return float(s.dice.mean())


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def defense_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (defense, attack, threat model)."""
    lines = [(f"| defense | attack | threat model | clean Dice {units.SCORE} | clean Dice defended {units.SCORE} | "
              f"benign loss (IoU {units.SCORE}) | defense efficiency (IoU vs GT {units.SCORE}) | Dice vs GT {units.SCORE} | "
              f"target IoU {units.SCORE} | {units.SUCCESS_HEAD} | {units.L2_HEAD} | {units.LINF_HEAD} | check |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        threat = f"**{WORST}** ({r['worst_of']})" if r["threat_model"] == WORST else r["threat_model"]
        lines.append(f"| {r['defense']} | {r['attack']} | {threat} | {_fmt(r['clean_dice'])} | {_fmt(r['clean_dice_defended'])} | "
                     f"{_fmt(r['benign_loss_iou'])} | {_fmt(r['efficiency_iou'])} | {_fmt(r['dice_gt'])} | {_fmt(r['target_iou'])} | "
                     f"{units.fmt_pct(r[units.SUCCESS_PCT])} | {r[units.L2]:.2f} | {r[units.LINF]:.2f} | {r['check'] or 'ok'} |")
    return "\n".join(lines)


def sanity_table(sanity: list[dict[str, Any]]) -> str:
    """Markdown: untargeted PGD through each defended model (Dice vs eps), PGD with twice the steps and Square at the
    check budget, and the unbounded attack."""
    eps = [p[units.EPS] for p in sanity[0]["sweep"]] if sanity else []
    head = " | ".join(f"Dice {units.SCORE} @ eps {e:g}/255" for e in eps)
    at = f"@ eps {sanity[0]['check_eps_x255']:g}/255" if sanity else ""
    queries = sanity[0]["square_queries"] if sanity else SQUARE_QUERIES
    lines = [(f"| defense | attacker | {head} | Dice {units.SCORE}, PGD {at} | Dice {units.SCORE}, PGD 2x steps {at} | "
              f"Dice {units.SCORE}, Square ({queries} queries) {at} | "
              f"Dice {units.SCORE}, unbounded (eps = {units.x255(UNBOUNDED_EPS):g}/255, targeted: erase) | check |"),
             "|---|---|" + "---|" * len(eps) + "---|---|---|---|---|"]
    for s in sanity:
        cells = " | ".join(f"{p['dice']:.3f}" for p in s["sweep"])
        lines.append(f"| {s['defense']} | {s['threat_model']} | {cells} | {s['pgd_dice']:.3f} | {s['pgd_2x_dice']:.3f} | "
                     f"{s['square_dice']:.3f} | {s['unbounded_dice']:.3f} | {s['check']} |")
    return "\n".join(lines)


def report_markdown(report: dict[str, Any], header: str = "") -> str:
    return (f"{header}\n\n" if header else "") + defense_table(report["rows"]) + (
        "\n\nSanity checks (through the defended model, first adaptive attacker; Dice vs ground truth under untargeted PGD "
        "per Linf budget, eps 0 = clean; more PGD steps and black-box Square must not do better than PGD; an unbounded "
        "targeted PGD toward an empty mask must reach Dice ~0):\n\n"
        + sanity_table(report["sanity"]))


def write_defense_report(run_dir: Path, report: dict[str, Any], source: str) -> None:
    """``defense.csv`` (the rows) and ``defense.md`` (rows and sanity checks) in ``run_dir``; ``source`` says which
    checkpoint and images were evaluated."""
    write_csv(run_dir / "defense.csv", report["rows"])
    header = (f"# Defense report\n\n{source}; "
              "oblivious = adversarial images crafted on the undefended model, then defended; adaptive = the attack on "
              "model . defense with each applicable gradient mode (BPDA: identity backward; SURROGATE: cubic rounding; STE: "
              "straight-through rounding; EXACT: the true gradient; + EOT for randomised defenses), and the adaptive worst "
              "case over them (the mode that won in brackets). Only adaptive rows, and the worst case above all, support a "
              "robustness claim. Adversarial images stay "
              "float in [0,1] (no uint8 round-trip); means over images; IoU / Dice per image vs the ground truth.")
    write_text(run_dir / "defense.md", report_markdown(report, header) + "\n")


__all__ = [
    "BASELINE",
    "OBLIVIOUS",
    "WORST",
    "adaptive",
    "attack_strength",
    "budget_sweep",
    "check_monotone",
    "check_transfer",
    "check_unbounded",
    "defense_report",
    "defense_table",
    "report_markdown",
    "run_attack",
    "sanity_checks",
    "sanity_table",
    "score_row",
    "threat_models",
    "unbounded_dice",
    "worst_row",
    "write_defense_report",
]
