"""Resume is the same run: `fit|adv-train run.resume=...` restores the stored config, refuses conflicting overrides in
one line, changes nothing in the run folder when it is refused or fails before training, continues the CSV history and
the W&B run id, and records the changes it allows."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lightning_seg.cli import main
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.fit import fit
from lightning_seg.commands.resume import RESUMES_KEY
from lightning_seg.config import ConfigError, compose
from lightning_seg.runs import NoRunError, resolve_checkpoint
from lightning_seg.training.checkpoint import CONFIG_KEY
from lightning_seg.training.trainer import _run_id

from .conftest import tiny_overrides

SMALL = {"data.num_train": 16, "data.num_val": 6, "data.num_test": 6, "logger": "csv", "seed": 3}


def _small(output_dir: Path, **extra: object) -> list[str]:
    return tiny_overrides(output_dir, **{**SMALL, **extra})


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch fit run (seed 3, CSV logger, 32 px synthetic ISIC), trained once for the module."""
    return Path(fit(compose(_small(tmp_path_factory.mktemp("resume") / "runs")))["run_dir"])


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """This test's copy of the finished run, as the only (hence latest) fit run under tmp_path/runs."""
    copy = tmp_path / "runs" / "fit" / "isic-run"
    shutil.copytree(finished, copy)
    return copy


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: content hash and modification time (a rewrite with equal bytes shows too)."""
    return {str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(run: Path, *extra: str, command: str = "fit") -> list[str]:
    return [command, "run.resume=last", f"run.output_dir={run.parent.parent}", *extra]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_bare_resume_restores_the_stored_config(run: Path) -> None:
    cfg = compose_for("fit", ["run.resume=last", f"run.output_dir={run.parent.parent}"])
    stored = yaml.safe_load((run / "config.yaml").read_text())
    for section in ("data", "model", "trainer", "logger", "optim", "loss"):
        assert OmegaConf.to_container(cfg[section]) == stored[section], section
    assert cfg.seed == 3 and cfg.logger.name == "csv" and cfg.data.image_size == 32
    assert compose_for("fit", ["run.resume=last", f"run.output_dir={run.parent.parent}", "trainer.max_epochs=3"]).trainer.max_epochs == 3


CONFLICTS = [
    (["data=glaucoma"], "data.name='glaucoma' (the run has 'isic')"),
    (["model.width=8"], "model.width=8 (the run has 4)"),
    (["logger=wandb"], "logger.name='wandb' (the run has 'csv')"),
    (["seed=0"], "seed=0 (the run has 3)"),
    (["data.source=folder", "data.root=."], "data.source='folder' (the run has 'synthetic')"),
    (["trainer.max_epochs=2", "data.batch_size=4"], "data.batch_size=4 (the run has 8)"),
    (["optim.lr=0.1"], "optim.lr=0.1 (the run has 0.003)"),
    (["trainer.limit_train_batches=0.5"], "trainer.limit_train_batches=0.5 (the run has 1)"),
]


@pytest.mark.parametrize(("extra", "fragment"), CONFLICTS, ids=[" ".join(e) for e, _ in CONFLICTS])
def test_conflicting_overrides_are_refused_in_one_line_and_change_nothing(extra: list[str], fragment: str, run: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(run.parent.parent)
    assert main(_cli(run, *extra)) == 2
    line = _error_line(capsys)
    assert fragment in line and f"run.init_from={run}" in line and "trainer.max_epochs/" in line, line
    assert "trainer.max_epochs=2" not in line  # an allowed change is not named as a conflict
    assert _snapshot(run.parent.parent) == before


def test_a_checkpoint_without_a_stored_config_falls_back_to_config_yaml(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt[CONFIG_KEY]
    torch.save(ckpt, ckpt_path)
    assert compose_for("fit", ["run.resume=last", f"run.output_dir={run.parent.parent}"]).data.image_size == 32
    assert main(_cli(run, "trainer.max_epochs=2", "data.image_size=48")) == 2
    assert "data.image_size=48 (the run has 32)" in _error_line(capsys)


def test_a_key_an_older_version_did_not_store_counts_as_its_default(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run saved before ``optim.name`` existed trained with AdamW: resuming it with SGD is a change, not a new key."""
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt[CONFIG_KEY]["optim"]["name"]
    torch.save(ckpt, ckpt_path)
    assert main(_cli(run, "trainer.max_epochs=2", "optim.name=sgd")) == 2
    assert "optim.name='sgd' (the run has 'adamw')" in _error_line(capsys)


def test_the_python_api_refuses_a_config_that_differs_from_the_run(run: Path) -> None:
    cfg = compose(_small(run.parent.parent, **{"logger": "none", "trainer.max_epochs": 2, "run.resume": "last"}))
    with pytest.raises(ConfigError, match=r"logger\.name='none' \(the run has 'csv'\)"):
        fit(cfg)


def test_a_finished_run_is_extended_not_rerun(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(run.parent.parent)
    assert main(_cli(run)) == 2
    line = _error_line(capsys)
    assert "has already trained 1 epoch of trainer.max_epochs=1" in line and "trainer.max_epochs=N (N > 1)" in line, line
    assert _snapshot(run.parent.parent) == before


def test_a_resume_that_fails_before_training_changes_nothing(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_seg.datamodules import SegmentationDataModule
    from lightning_seg.datamodules.layouts import DataError

    before = _snapshot(run.parent.parent)
    # allowed changes, but the processes do not divide the batch: refused before Lightning starts
    assert main(_cli(run, "trainer.max_epochs=2", "trainer.devices=3")) == 2
    assert "data.batch_size=8 is not divisible by the 3 processes" in _error_line(capsys)

    def broken(self, stage=None):
        raise DataError("the data folder changed since the run was trained")

    monkeypatch.setattr(SegmentationDataModule, "setup", broken)
    assert main(_cli(run, "trainer.max_epochs=2")) == 2  # an allowed change: config.yaml would be rewritten
    assert "the data folder changed" in _error_line(capsys)
    assert _snapshot(run.parent.parent) == before


def _as_adv_train_run(fit_run: Path, output_dir: Path) -> Path:
    """A copy of a fit run whose stored config says it was adversarially trained (what the command checks)."""
    adv = output_dir / "adv-train" / "isic-adv"
    shutil.copytree(fit_run, adv)
    ckpt_path = adv / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt[CONFIG_KEY]["adv_train"]["enabled"] = True
    torch.save(ckpt, ckpt_path)
    return adv


def test_adv_train_resumes_adv_train_runs(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run.parent.parent
    with pytest.raises(NoRunError, match=r"No adv-train run with a checkpoint under .*adv-train"):
        compose_for("adv-train", ["run.resume=last", f"run.output_dir={out}"])
    assert main(["adv-train", f"run.resume={run}", f"run.output_dir={out}"]) == 2
    assert f"is a fit run: continue it with `python -m lightning_seg fit run.resume={run}`" in _error_line(capsys)
    adv = _as_adv_train_run(run, out)
    assert resolve_checkpoint("last", out, prefer="last", command="adv-train") == adv / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint("last", out, prefer="last") == run / "checkpoints" / "last.ckpt"  # fit: the fit run
    assert main(["fit", f"run.resume={adv}", f"run.output_dir={out}"]) == 2
    assert f"is an adv-train run: continue it with `python -m lightning_seg adv-train run.resume={adv}`" in _error_line(capsys)
    assert compose_for("adv-train", ["run.resume=last", f"run.output_dir={out}"]).adv_train.enabled
    assert main(["adv-train", "run.resume=last", f"run.output_dir={out}"]) == 2  # reaches the adv-train run: finished
    assert f"run {adv} has already trained 1 epoch" in _error_line(capsys)


def test_the_wandb_run_id_stays_with_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "fit" / "isic-1"
    derived = _run_id(run)
    assert derived == _run_id(tmp_path / "fit" / "isic-1") != _run_id(tmp_path / "fit" / "isic-2")
    (run / "wandb" / "offline-run-20260101_120000-abc123def456").mkdir(parents=True)
    (run / "wandb" / "latest-run").mkdir()
    assert _run_id(run) == "abc123def456"  # a moved or copied folder keeps the id of the run it holds
    # a resume in the same second: wandb appends "-1" to the folder, the id stays
    (run / "wandb" / "offline-run-20260101_120000-abc123def456-1").mkdir()
    assert _run_id(run) == "abc123def456"


class _CrashInEpoch(pl.Callback):
    """An interruption after the first training step of ``epoch``: rows logged after the last checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise RuntimeError("simulated interruption")


@pytest.mark.slow
def test_an_interrupted_run_continues_its_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference = Path(fit(compose(_small(tmp_path / "a", **{"trainer.max_epochs": 2})))["run_dir"])
    with pytest.raises(RuntimeError, match="simulated interruption"):
        fit(compose(_small(tmp_path / "b", **{"trainer.max_epochs": 2})), extra_callbacks=[_CrashInEpoch(1)])
    run = next((tmp_path / "b" / "fit").iterdir())
    assert any(r["epoch"] == "1" for r in _rows(run))  # the interrupted epoch's first rows were saved
    config, stored = (run / "config.yaml").read_bytes(), torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)[CONFIG_KEY]
    # exactly as the README shows it: nothing but run.resume (and where the runs are)
    assert main(["fit", "run.resume=last", f"run.output_dir={tmp_path / 'b'}"]) == 0
    assert _rows(run) == _rows(reference)  # earlier rows kept, the interrupted epoch's not doubled, bit-exact values
    assert (run / "config.yaml").read_bytes() == config  # nothing changed: not rewritten
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt[CONFIG_KEY] == stored
    resumes = json.loads((run / "results.json").read_text())["resumes"]
    assert [(r["epochs_done"], r["step"], r["changed"]) for r in resumes] == [(1, 2, {})] == \
           [(r["epochs_done"], r["step"], r["changed"]) for r in ckpt[RESUMES_KEY]]


@pytest.mark.slow
def test_extending_a_run_records_the_change(run: Path) -> None:
    """Also in a copied run folder (``run`` is a copy): the checkpoint callbacks keep their best score."""
    original = yaml.safe_load((run / "config.yaml").read_text())
    for epochs in (2, 3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(_cli(run, f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false")) == 0
        assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"].pop("max_epochs") == 3 and original["trainer"].pop("max_epochs") == 1
    assert config["run"].pop("output_dir") == str(run.parent.parent) != original["run"].pop("output_dir")  # copied folder
    assert config == original  # only the allowed change, nothing else
    results = json.loads((run / "results.json").read_text())
    assert [r["changed"] for r in results["resumes"]] == [{"trainer.max_epochs": [1, 2]}, {"trainer.max_epochs": [2, 3]}]
    assert [r["epochs_done"] for r in results["resumes"]] == [1, 2] and results["epochs"] == 3
    val = [r for r in _rows(run) if r["val/dice"]]
    assert [r["epoch"] for r in val] == ["0", "1", "2"]  # one validation row per epoch, the first one kept


@pytest.mark.slow
def test_wandb_resumes_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE")
    result = fit(compose(_small(tmp_path / "runs", **{"logger": "wandb", "logger.mode": "offline"})))
    run = Path(result["run_dir"])
    assert main(_cli(run, "trainer.max_epochs=2")) == 0
    runs = sorted((run / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<run id>, with "-1" appended by wandb when both runs start in the same second
    assert len(runs) == 2 and {r.name.split("-")[3] for r in runs} == {_run_id(run)}, runs
