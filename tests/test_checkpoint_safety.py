"""No checkpoint runs code: every load path refuses a pickled payload, also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1,
and foreign, truncated or mismatched files get one line and exit 2."""

from __future__ import annotations

import pathlib
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.training.checkpoint import CheckpointError, load_module, safe_load

from .conftest import tiny_overrides

pytestmark = pytest.mark.slow  # one tiny fit per module, then only loads


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: the marker file shows that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety")
    result = fit(compose(tiny_overrides(out / "runs")))
    return Path(result["last_checkpoint"])


@pytest.fixture
def malicious(good: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real checkpoint with one extra entry that runs code when unpickled without the weights-only unpickler."""
    marker = tmp_path / "code_ran"
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    ckpt["extra"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def _runs(tmp_path: Path) -> list[str]:
    return ["logger=none", f"run.output_dir={tmp_path / 'out'}", "trainer.enable_progress_bar=false"]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # Lightning's INFO lines share stderr
    assert len(lines) == 1 and "Traceback" not in err and "weights_only=False" not in err, err
    return lines[0]


@pytest.mark.parametrize("force_unsafe", [False, True])
@pytest.mark.parametrize("command", ["validate", "test", "attack", "fit-init", "fit-resume"])
def test_every_load_path_refuses_a_pickled_payload(command: str, force_unsafe: bool, malicious, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker = malicious
    if command == "fit-init":
        argv = ["fit", f"run.init_from={path}"]
    elif command == "fit-resume":
        argv = ["fit", f"run.resume={path}"]
    else:
        argv = [command, f"run.ckpt={path}"]
    assert main([*argv, *_runs(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: refused: {path} holds objects other than tensors and plain containers ("), line
    assert "GLOBAL getattr" in line, line  # the unpickler names what it refused
    assert "add_safe_globals" not in line, line
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "out").exists(), "a refused checkpoint must leave no run folder"


def test_foreign_and_truncated_files_get_one_line(good: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, not a checkpoint\n")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    plain = tmp_path / "state_dict.pt"
    torch.save(torch.load(good, map_location="cpu", weights_only=True)["state_dict"], plain)
    foreign_zip = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(foreign_zip, "w") as archive:
        archive.writestr("notes.txt", "a zip, but not from torch.save")
    for path in (text, truncated, plain, foreign_zip):
        assert main(["validate", f"run.ckpt={path}", *_runs(tmp_path)]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: not a lightning_seg checkpoint: {path} ("), line
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(truncated)


@pytest.mark.parametrize("key", ["run.resume", "run.init_from"])
def test_another_architecture_names_both_model_configs(key: str, good: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "fit" / "x" / "checkpoints" / "last.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copy(good, copy)
    before = sorted(p.name for p in copy.parent.parent.iterdir())
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("model.width")]
    assert main(["fit", *overrides, "model.width=8", f"{key}={copy}"]) == 2
    line = _error_line(capsys)
    if key == "run.resume":  # a resume compares with the run's stored config first: the width is a refused override
        assert "model.width=8 (the run has 4)" in line, line
    else:
        assert "'width': 4" in line and "'width': 8" in line, line
    assert sorted(p.name for p in copy.parent.parent.iterdir()) == before  # a failed resume changes nothing
    assert [p.name for p in (tmp_path / "fit").iterdir()] == ["x"]  # and a failed init_from starts no run folder
    assert load_module(str(good)).hparams["model"]["width"] == 4
