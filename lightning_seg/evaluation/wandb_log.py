"""W&B logging: mask overlays named by the task's classes, tables, and the ``attack`` command's run (no Trainer there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import Tensor

from lightning_seg.config import to_plain
from lightning_seg.tasks import Task, get_task


def mask_overlays(task: Task, **masks: Tensor) -> dict[str, dict[str, Any]]:
    """W&B ``masks=`` argument: each class-index map ``[h,w]`` under its key, classes named by ``task.class_names``."""
    labels = dict(enumerate(task.class_names))
    return {key: {"mask_data": mask.cpu().numpy(), "class_labels": labels} for key, mask in masks.items()}


def table_data(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns (every key, in first-seen order) and row values of a W&B table; missing values are ``None``."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return cols, [[r.get(c) for c in cols] for r in rows]


def panel_media(task: Task, attack: str, media: dict[str, Any]) -> dict[str, list[Any]]:
    """``log_image`` arguments for the validation callback's ``media`` (adversarial images, their predictions, the
    ground truth, image keys): the images with prediction / ground-truth overlays, captioned by attack and key."""
    from lightning_seg.viz.panels import to_uint8

    n = len(media["adv"])
    return {"images": [to_uint8(a) for a in media["adv"]],
            "masks": [mask_overlays(task, adv_prediction=p, ground_truth=y) for p, y in zip(media["pred"], media["labels"])],
            "caption": [f"{attack} {k}" for k in (media["keys"] or [""] * n)]}


def image_cell(image: Tensor, task: Task, caption: str = "", **masks: Tensor) -> Any:
    """A ``wandb.Image`` of ``image`` [C,H,W] in [0,1] with class-index ``masks`` as overlays named by the task's
    classes (masks smaller than the image, from valid convolutions, are centred on it)."""
    import wandb

    from lightning_seg.viz.panels import to_uint8

    h, w = image.shape[-2:]
    return wandb.Image(to_uint8(image), masks=mask_overlays(task, **{k: _centre(m, h, w) for k, m in masks.items()}),
                       caption=caption or None)


def _centre(mask: Tensor, h: int, w: int) -> Tensor:
    import torch.nn.functional as F

    mh, mw = mask.shape[-2:]
    if (mh, mw) == (h, w):
        return mask
    top, left = (h - mh) // 2, (w - mw) // 2
    return F.pad(mask, (left, w - mw - left, top, h - mh - top))


def media_table(media: dict[str, Any], task: Task | None = None) -> tuple[list[str], list[list[Any]]]:
    """The per-image table of the callback's ``media``: image key (or index), with ``task`` the input (ground-truth
    overlay) and the adversarial image (adversarial prediction and ground-truth overlays) as image columns, and
    every per-image value."""
    names = media["keys"] or [str(i) for i in range(len(media["adv"]))]
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"image": name}
        if task is not None:
            if media.get("images") is not None:
                row["input"] = image_cell(media["images"][i], task, name, ground_truth=media["labels"][i])
            row["adversarial"] = image_cell(media["adv"][i], task, name, adv_prediction=media["pred"][i],
                                            ground_truth=media["labels"][i])
        rows.append(row | {k: float(v[i]) for k, v in media["values"].items()})
    return table_data(rows)


def _eps_x255(row: dict[str, Any]) -> float:
    from lightning_seg.evaluation.robustness import _eps_x255 as eps

    return eps(row)


def curve_label(row: dict[str, Any]) -> str:
    """A robustness curve's name: the model kind (``model``: fit, adv-train, a defense) if the rows carry it, else
    the checkpoint label."""
    return str(row.get("model") or row["checkpoint"])


class AttackLogger:
    """W&B logging for the attack command (no Trainer here): the run in the study's group, the attacked checkpoint as
    input artifact (lineage), tables with image columns, an interactive robustness chart, summary metrics."""

    def __init__(self, cfg: DictConfig, run_dir: Path, ckpt: Path | None = None) -> None:
        self.run = None
        if cfg.logger.name != "wandb" or cfg.logger.mode == "disabled":
            return
        import wandb

        from lightning_seg.training.trainer import use_checkpoint_artifact, wandb_group

        self.wandb = wandb
        self.task = get_task(cfg.data.task)
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), mode=cfg.logger.mode,
                              job_type="attack", name=f"attack/{run_dir.name}", config=to_plain(cfg), tags=list(cfg.logger.tags),
                              group=wandb_group(cfg, run_dir, "attack"), reinit="finish_previous")
        if not getattr(self.run, "disabled", False):
            use_checkpoint_artifact(self.run, cfg, ckpt)

    def method(self, name: str, adv: Tensor, pred: Tensor, reference: Tensor, n: int, *, images: Tensor | None = None,
               labels: Tensor | None = None, clean_pred: Tensor | None = None, keys: list[str] | None = None,
               values: dict[str, Tensor] | None = None, targeted: bool = False) -> None:
        """The first ``n`` adversarial images with overlays, and (with ``images``) the table ``attack/<name>/images``:
        input (ground truth and clean prediction overlays), adversarial image (adversarial prediction and the
        attack's reference: target or ground truth) and the amplified perturbation as image columns, plus ``values``."""
        if self.run is None:
            return
        from lightning_seg.viz.panels import to_uint8

        ref = "target" if targeted else "ground_truth"
        n = min(n, len(adv))
        media = [self.wandb.Image(to_uint8(adv[i]), masks=mask_overlays(self.task, adv_prediction=pred[i], **{ref: reference[i]}),
                                  caption=f"{name} {keys[i] if keys else '#' + str(i)}") for i in range(n)]
        log: dict[str, Any] = {f"attack/{name}/panels": media}
        if images is not None:
            from lightning_seg.viz.panels import amplify

            rows = []
            for i in range(n):
                key = keys[i] if keys else str(i)
                inputs = {"ground_truth": labels[i]} if labels is not None else {}
                if clean_pred is not None:
                    inputs["clean_prediction"] = clean_pred[i]
                rows.append({"image": key, "input": image_cell(images[i], self.task, key, **inputs),
                             "adversarial": image_cell(adv[i], self.task, key, adv_prediction=pred[i], **{ref: reference[i]}),
                             "perturbation": self.wandb.Image(amplify(adv[i] - images[i])[0], caption="amplified"),
                             **{k: float(v[i]) for k, v in (values or {}).items()}})
            log[f"attack/{name}/images"] = self._table(rows)
        self.run.log(log)

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        self.run.log({key: self._table(rows)})

    def robustness(self, rows: list[dict[str, Any]], plot: Path) -> None:
        """The curve rows as a table, an interactive line chart (robust Dice vs eps, one line per model and attack,
        the clean score at eps 0) and the static plot."""
        if self.run is None:
            return
        self.run.log({"attack/robustness": self._table(rows), "attack/robustness_curve": self.wandb.Image(str(plot)),
                      "attack/robustness_chart": self.robustness_chart(rows)})

    def robustness_chart(self, rows: list[dict[str, Any]]) -> Any:
        xs, ys, keys = [], [], []
        for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
            mine = [r for r in rows if r["checkpoint"] == ckpt]
            clean = [r for r in mine if r["attack"] == "clean"]
            for attack in dict.fromkeys(r["attack"] for r in mine if r["attack"] != "clean"):
                pts = clean + sorted((r for r in mine if r["attack"] == attack), key=_eps_x255)
                xs.append([_eps_x255(r) for r in pts])
                ys.append([float(r["dice"]) for r in pts])
                n = mine[0].get("n_images")
                keys.append(f"{curve_label(mine[0])} / {attack}" + (f" (n={n})" if n else ""))
        return self.wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title="robust Dice vs Linf budget",
                                           xname="eps (x255)")

    def finish(self, summaries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        if self.run is None:
            return
        for s in summaries:
            for k, v in s.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.run.summary[f"attack/{s['method']}/{k}"] = v
        if summaries:
            self.run.log({"attack/summary": self._table(summaries)})
            self.run.log({"attack/per_image": self._table(rows)})
        self.run.finish()

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        cols, data = table_data(rows)
        return self.wandb.Table(columns=cols, data=data)


__all__ = ["AttackLogger", "curve_label", "image_cell", "mask_overlays", "media_table", "panel_media", "table_data"]
