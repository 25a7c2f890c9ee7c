"""W&B logging for the ``attack`` command, which runs without a Trainer: tables, summary metrics and panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import Tensor

from lightning_seg.config import to_plain


class AttackLogger:
    """W&B logging for the attack command (no Trainer here): tables, summary metrics, panels with mask overlays."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.run = None
        if cfg.logger.name != "wandb" or cfg.logger.mode == "disabled":
            return
        import wandb

        self.wandb = wandb
        self.classes = {0: "background", 1: "lesion" if cfg.data.task == "lesion" else "disc / rim", 2: "cup"}
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), mode=cfg.logger.mode,
                              job_type="attack", name=f"attack/{run_dir.name}", config=to_plain(cfg), tags=list(cfg.logger.tags),
                              reinit="finish_previous")

    def method(self, name: str, adv: Tensor, pred: Tensor, reference: Tensor, n: int) -> None:
        if self.run is None:
            return
        from lightning_seg.viz.panels import to_uint8

        media = []
        for i in range(min(n, len(adv))):
            masks = {"prediction": {"mask_data": pred[i].cpu().numpy(), "class_labels": self.classes},
                     "reference": {"mask_data": reference[i].cpu().numpy(), "class_labels": self.classes}}
            media.append(self.wandb.Image(to_uint8(adv[i]), masks=masks, caption=f"{name} #{i}"))
        self.run.log({f"attack/{name}/panels": media})

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        cols = list(rows[0])
        self.run.log({key: self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})

    def robustness(self, rows: list[dict[str, Any]], plot: Path) -> None:
        if self.run is None:
            return
        cols = list(rows[0])
        self.run.log({"attack/robustness": self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows]),
                      "attack/robustness_curve": self.wandb.Image(str(plot))})

    def finish(self, summaries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        if self.run is None:
            return
        if not summaries:
            self.run.finish()
            return
        for s in summaries:
            for k, v in s.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.run.summary[f"attack/{s['method']}/{k}"] = v
        cols = list(summaries[0])
        self.run.log({"attack/summary": self.wandb.Table(columns=cols, data=[[s[c] for c in cols] for s in summaries])})
        cols = list(dict.fromkeys(k for r in rows for k in r))
        self.run.log({"attack/per_image": self.wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
        self.run.finish()
