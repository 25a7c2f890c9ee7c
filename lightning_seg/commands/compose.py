"""The run config of a command: evaluation commands start from the data the checkpoint was trained on."""

from __future__ import annotations

from typing import Any

from lightning_seg.config import check_values, compose
from lightning_seg.runs import resolve_checkpoint
from lightning_seg.training.checkpoint import load_checkpoint_config


def compose_for(command: str, overrides: list[str], extra_files: list[str] | None = None) -> Any:
    """Compose the config for a command; evaluation commands start from the checkpoint's stored data config."""
    if command not in ("validate", "test", "attack"):
        return compose(overrides, extra_files=extra_files)
    # first pass unchecked: its data section is the default one until the checkpoint's stored data replaces it
    cfg = compose(overrides, extra_files=extra_files, check=False)
    stored = load_checkpoint_config(resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir))
    if not stored:
        check_values(cfg)
        return cfg
    base = {"seed": stored["seed"], "data": stored["data"]}
    if stored.get("defense"):  # trained behind a defense: evaluated behind it unless defense=... says otherwise
        base["defense"] = stored["defense"]
    return compose(overrides, extra_files=extra_files, base=base)
