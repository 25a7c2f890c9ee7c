"""Ctrl-C during `attack` keeps what finished: rows, summary and results of the completed attacks, marked partial,
and exit 130 without a traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_seg.attacks.config import Attack
from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose

pytestmark = pytest.mark.slow


def test_ctrl_c_keeps_the_finished_attacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.conftest import tiny_overrides

    root = tmp_path / "runs"
    fit(compose(tiny_overrides(root)))
    call = Attack.__call__

    def ctrl_c_at_dag(self, *args, **kwargs):
        if self.name == "dag":
            raise KeyboardInterrupt
        return call(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "__call__", ctrl_c_at_dag)
    argv = ["attack", "attack=[pgd,dag]", f"run.output_dir={root}", "logger=none", "attack.pgd.steps=2",
            "attack_eval.num_images=4", "attack_eval.panels=0", "attack_eval.eps_sweep=[4/255]"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted: partial results in" in err
    run = next((root / "attack").iterdir())
    rows = list(csv.DictReader((run / "per_image.csv").open()))
    assert {r["method"] for r in rows} == {"pgd"} and len(rows) == 4
    results = json.loads((run / "results.json").read_text())
    assert results["partial"] is True and results["not_run"] == ["dag", "robustness sweep"]
    assert [s["method"] for s in results["summary"]] == ["pgd"]
    assert "Partial: interrupted; not run: dag, robustness sweep" in (run / "summary.md").read_text()
    assert not list(run.rglob("*.tmp"))
