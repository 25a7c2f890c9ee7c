"""End-to-end training runs on tiny synthetic data: fit, checkpoints, resume, validate/test, W&B, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_seg.cli import main
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.runs import NoRunError
from lightning_seg.training.checkpoint import load_module

from .conftest import ROOT


def test_short_fit_writes_a_complete_run_folder(tiny):
    result = fit(compose(tiny(**{"trainer.max_epochs": 2})))
    run = Path(result["run_dir"])
    assert (run / "config.yaml").read_text().count("max_epochs: 2") == 1
    saved = json.loads((run / "results.json").read_text())
    assert saved["metrics"]["val/dice"] == pytest.approx(result["metrics"]["val/dice"])
    for key in ("train/dice", "val/dice", "val/dice_lesion", "val/iou_lesion", "train/loss_epoch"):
        assert key in saved["metrics"], key
    for name in ("best", "last"):
        ckpt = torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["lightning_seg_config"]["data"]["task"] == "lesion"
    model = load_module(str(run / "checkpoints" / "best.ckpt"))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries


class _Crash(pl.Callback):
    """Simulates an interruption (node failure) at the start of a given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated interruption")


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny, tmp_path: Path):
    overrides = tiny(**{"trainer.max_epochs": 3, "run.output_dir": tmp_path / "a"})
    reference = fit(compose(overrides))
    interrupted = tiny(**{"trainer.max_epochs": 3, "run.output_dir": tmp_path / "b"})
    with pytest.raises(RuntimeError, match="simulated interruption"):
        fit(compose(interrupted), extra_callbacks=[_Crash(epoch=2)])
    resumed = fit(compose([*interrupted, "run.resume=last"]))
    assert Path(resumed["run_dir"]).parent == tmp_path / "b" / "fit"
    a = torch.load(reference["last_checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(resumed["last_checkpoint"], weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["metrics"]["val/dice"] == reference["metrics"]["val/dice"]


@pytest.mark.slow
def test_validate_and_test_on_the_latest_checkpoint(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(NoRunError, match="train one first"):
        evaluate(compose(tiny()), "validate")
    trained = fit(compose(tiny(**{"data": "glaucoma", "data.image_size": 32})))
    # validate without repeating data=glaucoma: the data config comes from the checkpoint
    cfg = compose_for("validate", tiny(**{"run.ckpt": Path(trained["run_dir"]) / "checkpoints" / "last.ckpt"}))
    assert cfg.data.task == "disc_cup"
    validated = evaluate(cfg, "validate")
    assert validated["metrics"]["val/dice"] == pytest.approx(trained["metrics"]["val/dice"], abs=1e-6)
    assert {"val/dice_disc", "val/dice_cup"} <= set(validated["metrics"])
    assert main(["test", *tiny(**{"run.ckpt": trained["run_dir"]})]) == 0
    assert "test/dice_cup" in capsys.readouterr().out


@pytest.mark.slow
def test_wandb_offline_writes_run_files(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_MODE")
    result = fit(compose(tiny(**{"logger": "wandb", "logger.mode": "offline"})))
    runs = list((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert "WANDB_MODE" not in __import__("os").environ  # no process-wide side effect


@pytest.mark.slow
def test_wandb_disabled_writes_nothing_outside_the_run_folder(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = fit(compose(tiny(**{"logger": "wandb", "logger.mode": "disabled", "adv_val.enabled": "true", "adv_val.attack": "pgd"})))
    assert "val_adv/robust_dice_lesion" in result["metrics"]
    run = Path(result["run_dir"])
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and run not in p.parents]
    assert outside == [], outside


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_cpu_validation_dice_equals_single_process_evaluation(tiny):
    # 13 validation images over 2 ranks: uneven shards (7 + 6), no padding, no double counting.
    # One image per forward pass in both runs, so conv numerics cannot differ with the batch size.
    trained = fit(compose(tiny(**{"trainer": "ddp_cpu", "data.num_val": 13, "data.eval_batch_size": 2, "trainer.max_epochs": 2})))
    logged = trained["metrics"]["val/dice"]
    single = evaluate(compose(tiny(**{"data.num_val": 13, "data.eval_batch_size": 1, "run.ckpt": trained["last_checkpoint"]})), "validate")
    assert single["metrics"]["val/dice"] == pytest.approx(logged, abs=1e-6)


@pytest.mark.slow
@pytest.mark.ddp
def test_real_ddp_relaunch_through_the_cli(tmp_path: Path):
    """strategy=ddp re-executes `python -m lightning_seg ...` for rank 1: both ranks must share one run folder."""
    cmd = [sys.executable, "-m", "lightning_seg", "fit", *[o for o in __import__("tests.conftest", fromlist=["x"]).tiny_overrides(tmp_path / "runs")],
           "trainer.devices=2", "trainer.strategy=ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs" / "fit").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.ckpt").is_file()


def test_independently_launched_ranks_agree_on_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """torchrun / srun start every rank as its own process: the folder must not depend on the clock."""
    from lightning_seg.runs import new_run_dir

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job42")
    first = new_run_dir(tmp_path, "fit", "isic")
    monkeypatch.delenv("LIGHTNING_SEG_RUN_DIR", raising=False)
    assert new_run_dir(tmp_path, "fit", "isic") == first == tmp_path / "fit" / "isic-torchelasticjob42"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(RuntimeError, match="run.name"):
        new_run_dir(tmp_path, "fit", "isic")
