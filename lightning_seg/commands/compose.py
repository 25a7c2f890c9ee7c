"""The run config of a command: evaluation commands start from the data the checkpoint was trained on."""

from __future__ import annotations

from typing import Any

from lightning_seg.config import compose
from lightning_seg.runs import resolve_checkpoint
from lightning_seg.training.checkpoint import load_checkpoint_config


def compose_for(command: str, overrides: list[str], extra_files: list[str] | None = None) -> Any:
    """Compose the config for a command; evaluation commands start from the checkpoint's stored data config."""
    cfg = compose(overrides, extra_files=extra_files)
    if command in ("validate", "test", "attack"):
        stored = load_checkpoint_config(resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir))
        if stored:
            base = {"seed": stored["seed"], "data": stored["data"]}
            if stored.get("defense"):  # trained behind a defense: evaluated behind it unless defense=... says otherwise
                base["defense"] = stored["defense"]
            cfg = compose(overrides, extra_files=extra_files, base=base)
    return cfg
