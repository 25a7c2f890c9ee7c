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


def media_table(media: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The per-image table of the callback's ``media``: image key (or index) and every per-image value."""
    names = media["keys"] or [str(i) for i in range(len(media["adv"]))]
    return table_data([{"image": name, **{k: float(v[i]) for k, v in media["values"].items()}} for i, name in enumerate(names)])


class AttackLogger:
    """W&B logging for the attack command (no Trainer here): tables, summary metrics, panels with mask overlays."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.run = None
        if cfg.logger.name != "wandb" or cfg.logger.mode == "disabled":
            return
        import wandb

        self.wandb = wandb
        self.task = get_task(cfg.data.task)
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), mode=cfg.logger.mode,
                              job_type="attack", name=f"attack/{run_dir.name}", config=to_plain(cfg), tags=list(cfg.logger.tags),
                              reinit="finish_previous")

    def method(self, name: str, adv: Tensor, pred: Tensor, reference: Tensor, n: int) -> None:
        if self.run is None:
            return
        from lightning_seg.viz.panels import to_uint8

        media = [self.wandb.Image(to_uint8(adv[i]), masks=mask_overlays(self.task, prediction=pred[i], reference=reference[i]),
                                  caption=f"{name} #{i}") for i in range(min(n, len(adv)))]
        self.run.log({f"attack/{name}/panels": media})

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        self.run.log({key: self._table(rows)})

    def robustness(self, rows: list[dict[str, Any]], plot: Path) -> None:
        if self.run is None:
            return
        self.run.log({"attack/robustness": self._table(rows), "attack/robustness_curve": self.wandb.Image(str(plot))})

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


__all__ = ["AttackLogger", "mask_overlays", "media_table", "panel_media", "table_data"]
