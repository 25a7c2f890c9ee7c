"""Divergence stops the run: a non-finite loss ends `fit` with one line and exit 2, and no checkpoint holds
non-finite weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_seg.cli import main

pytestmark = pytest.mark.slow


def test_a_diverging_fit_stops_with_one_line_and_finite_checkpoints(tiny, tmp_path: Path, capsys) -> None:
    assert main(["fit", *tiny(**{"trainer.max_epochs": 4, "optim.lr": 1e9})]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # Lightning's INFO lines share stderr
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: training diverged") and "optim.lr" in lines[0], lines
    for ckpt in (tmp_path / "runs").rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        assert not bad, f"{ckpt} holds non-finite weights: {bad[:3]}"


def test_a_finite_fit_is_unaffected(tiny, capsys) -> None:
    assert main(["fit", *tiny()]) == 0
