"""Ctrl-C during `attack` keeps what finished: rows, summary and results of the completed attacks, marked partial,
and exit 130 without a traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from tests.helpers.interrupts import ctrl_c_at, sigterm_at

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import tiny_overrides

    return Path(fit(compose(tiny_overrides(tmp_path_factory.mktemp("interrupt") / "runs")))["last_checkpoint"])


def _argv(ckpt: Path, out: Path) -> list[str]:
    return ["attack", "attack=[pgd,dag]", f"run.output_dir={out}", f"run.ckpt={ckpt}", "logger=none",
            "attack.pgd.steps=2", "attack_eval.num_images=4", "attack_eval.panels=0", "attack_eval.eps_sweep=[4/255]"]


def _only_run(out: Path) -> Path:
    runs = list((out / "attack").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_ctrl_c_keeps_the_finished_attacks(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ctrl_c_at(monkeypatch, "dag")
    assert main(_argv(ckpt, tmp_path)) == 130
    err = capsys.readouterr().err
    run = _only_run(tmp_path)
    assert "Traceback" not in err and f"interrupted: partial results in {run}" in err
    rows = list(csv.DictReader((run / "per_image.csv").open()))
    assert {r["method"] for r in rows} == {"pgd"} and len(rows) == 4
    results = json.loads((run / "results.json").read_text())
    assert results["partial"] is True and results["not_run"] == ["dag", "robustness sweep"]
    assert [s["method"] for s in results["summary"]] == ["pgd"]
    assert "Partial: interrupted; not run: dag, robustness sweep" in (run / "summary.md").read_text()
    assert not list(run.rglob("*.tmp"))


def test_ctrl_c_in_the_first_attack_still_says_what_did_not_run(ckpt: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ctrl_c_at(monkeypatch, "pgd")
    assert main(_argv(ckpt, tmp_path)) == 130
    assert "Traceback" not in capsys.readouterr().err
    run = _only_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["partial"] is True and results["not_run"] == ["pgd", "dag", "robustness sweep"]
    assert results["summary"] == [] and not (run / "per_image.csv").exists()
    assert "not run: pgd, dag, robustness sweep" in (run / "summary.md").read_text()


def test_ctrl_c_while_loading_leaves_no_run_folder(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys) -> None:
    import lightning_seg.commands.attack as command

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "_load_inputs", ctrl_c)
    assert main(_argv(ckpt, tmp_path)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert not (tmp_path / "attack").exists()


def test_sigterm_stops_after_the_current_batch_and_the_run_resumes(ckpt: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """SLURM's SIGTERM (preemption, scancel) stops the attack after the batch it is on, like a Ctrl-C: partial report,
    exit 130, the resume hint; a resume attacks only the images without a file."""
    argv = [*_argv(ckpt, tmp_path), "attack_eval.batch_size=2"]
    calls = sigterm_at(monkeypatch, "dag")
    assert main(argv) == 130
    err = capsys.readouterr().err
    run = _only_run(tmp_path)
    assert "Traceback" not in err and f"attack_eval.resume={run}" in err
    assert len(calls) == 1  # the batch in flight finished; the second batch of dag was not started
    results = json.loads((run / "results.json").read_text())
    assert results["partial"] is True and "dag" in results["not_run"]
    monkeypatch.undo()
    calls = sigterm_at(monkeypatch, "never")  # count nothing, send nothing: a plain resume
    assert main([*argv, f"attack_eval.resume={run}"]) == 0
    rows = list(csv.DictReader((run / "per_image.csv").open()))
    assert sorted(r["method"] for r in rows) == ["dag"] * 4 + ["pgd"] * 4
