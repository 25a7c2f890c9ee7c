"""Shared fixtures. W&B is disabled by default (no network, no files); one test opts into offline mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_env"))
    monkeypatch.delenv("LIGHTNING_SEG_RUN_DIR", raising=False)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_run_dir_env():
    yield
    os.environ.pop("LIGHTNING_SEG_RUN_DIR", None)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_overrides(output_dir: Path, **extra: object) -> list[str]:
    """A config that trains in seconds on CPU (32 px synthetic images, a 2-level U-Net of width 4)."""
    values: dict[str, object] = {
        "data.image_size": 32,
        "data.num_train": 32,
        "data.num_val": 12,
        "data.num_test": 12,
        "data.batch_size": 8,
        "data.eval_batch_size": 6,
        "model.width": 4,
        "model.depth": 2,
        "trainer.max_epochs": 1,
        "trainer.enable_progress_bar": False,
        "trainer.log_every_n_steps": 1,
        "logger": "none",
        "run.output_dir": str(output_dir),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny(tmp_path: Path):
    def make(**extra: object) -> list[str]:
        return tiny_overrides(tmp_path / "runs", **extra)

    return make
