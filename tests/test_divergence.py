"""Divergence stops the run: a non-finite loss or non-finite weights end `fit` / `adv-train` with one line and exit 2,
no checkpoint holds non-finite weights, and the decision is taken on every rank together."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.training.divergence import DivergenceError, DivergenceGuard


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # Lightning's INFO lines share stderr
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _assert_finite_checkpoints(root: Path) -> None:
    for ckpt in root.rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        assert not bad, f"{ckpt} holds non-finite weights: {bad[:3]}"


class _Ranks:
    """A strategy stand-in: ``reduce`` sees this rank's flag and returns the max over it and the other ranks' flag."""

    def __init__(self, other_rank_bad: bool) -> None:
        self.other = float(other_rank_bad)
        self.calls = 0

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        assert reduce_op == "max"
        self.calls += 1
        return torch.maximum(tensor, torch.tensor(self.other))


def _trainer(strategy: _Ranks) -> SimpleNamespace:
    return SimpleNamespace(strategy=strategy, current_epoch=3, global_step=17)


@pytest.mark.parametrize("other_rank_bad", [False, True])
def test_the_loss_decision_is_reduced_over_ranks(other_rank_bad: bool) -> None:
    ranks = _Ranks(other_rank_bad)
    module = SimpleNamespace(device=torch.device("cpu"))
    guard = DivergenceGuard()
    finite = {"loss": torch.tensor(0.5)}
    if other_rank_bad:  # this rank's loss is finite: it must stop with the rank whose loss is not
        with pytest.raises(DivergenceError, match=r"non-finite loss at epoch 3, batch 0 \(global step 17\);.*optim\.lr"):
            guard.on_train_batch_end(_trainer(ranks), module, finite, None, 0)
    else:
        guard.on_train_batch_end(_trainer(ranks), module, finite, None, 0)
        with pytest.raises(DivergenceError, match="non-finite loss"):
            guard.on_train_batch_end(_trainer(ranks), module, {"loss": torch.tensor(float("nan"))}, None, 0)
    assert ranks.calls >= 1  # every rank joins the collective, whatever its own loss


@pytest.mark.parametrize("other_rank_bad", [False, True])
def test_a_checkpoint_with_non_finite_weights_is_refused_on_every_rank(other_rank_bad: bool) -> None:
    ranks = _Ranks(other_rank_bad)
    module = SimpleNamespace(device=torch.device("cpu"))
    guard = DivergenceGuard()
    finite = {"state_dict": {"w": torch.ones(2), "steps": torch.tensor(3)}}
    if other_rank_bad:
        with pytest.raises(DivergenceError, match="non-finite weights on another rank"):
            guard.on_save_checkpoint(_trainer(ranks), module, finite)
    else:
        guard.on_save_checkpoint(_trainer(ranks), module, finite)
        inf = {"state_dict": {"w": torch.tensor([1.0, float("inf")])}}
        with pytest.raises(DivergenceError, match=r"non-finite weights \(w\) at epoch 3 \(global step 17\); no checkpoint"):
            guard.on_save_checkpoint(_trainer(ranks), module, inf)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fit", "adv-train"])
def test_a_diverging_run_stops_with_one_line_and_finite_checkpoints(command: str, tiny, tmp_path: Path, capsys) -> None:
    extra = {"trainer.max_epochs": 4, "optim.lr": 1e9, "data.num_train": 8}  # one step per epoch
    if command == "adv-train":
        extra["adv_train.steps"] = 1
    assert main([command, *tiny(**extra)]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: training diverged: non-finite") and "optim.lr" in line, line
    _assert_finite_checkpoints(tmp_path / "runs")


class _PoisonWeights(pl.Callback):
    """Makes the first convolution NaN at a given global step: that step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


@pytest.mark.slow
def test_a_non_finite_loss_stops_at_its_step(tiny, tmp_path: Path) -> None:
    with pytest.raises(DivergenceError, match=r"non-finite loss at epoch 1, batch 1 "):
        fit(compose(tiny(**{"trainer.max_epochs": 3})), extra_callbacks=[_PoisonWeights(step=5)])
    assert list((tmp_path / "runs").rglob("last.ckpt")), "epoch 0 was finite: its checkpoint stays"
    _assert_finite_checkpoints(tmp_path / "runs")


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_divergence_is_one_line(tiny, tmp_path: Path, capsys) -> None:
    """Spawned workers raise it; the launching process reports it as one line, not a worker's traceback."""
    assert main(["fit", *tiny(**{"trainer": "ddp_cpu", "trainer.max_epochs": 4, "optim.lr": 1e9})]) == 2
    assert _error_line(capsys).startswith("error: training diverged: non-finite")
    _assert_finite_checkpoints(tmp_path / "runs")
    assert list((tmp_path / "runs").rglob("config.yaml"))  # it had started training: its folder is kept


@pytest.mark.slow
def test_a_data_error_in_ddp_workers_is_one_line_and_leaves_no_folder(tiny, tmp_path: Path, capsys) -> None:
    """A validation split smaller than the number of processes fails in the spawned workers' loaders, before training:
    reported as one line in the launcher, and the new run folder is removed."""
    assert main(["fit", *tiny(**{"trainer": "ddp_cpu", "data.num_val": 1})]) == 2
    assert "val" in _error_line(capsys)
    assert not list((tmp_path / "runs").rglob("config.yaml"))


@pytest.mark.slow
def test_a_finite_fit_is_unaffected(tiny) -> None:
    assert main(["fit", *tiny()]) == 0
