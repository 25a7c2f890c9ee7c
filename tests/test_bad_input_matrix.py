"""The bad-input matrix: every kind of bad input a user can give, run through the command line as they would, with what
they see and what is left on disk. ``docs/bad_inputs.md`` is this file's output: each case checks its own row there,
so the page cannot drift from the code. After an intended change of a message, rewrite the page with

    LIGHTNING_SEG_WRITE_MATRIX=1 python -m pytest tests/test_bad_input_matrix.py

Every case also asserts the rules themselves: the exit code, one message and no traceback, and that a run which fails
before training leaves nothing behind (no run folder, no changed file).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from tests.conftest import tiny_overrides
from tests.helpers.fake_trees import (
    corrupt_truncate,
    make_isic_tree,
    remove_file,
    save,
    write_colour_mask,
    write_resized,
)
from tests.helpers.interrupts import ctrl_c_at

pytestmark = pytest.mark.slow  # one tiny fit for the module, then mostly one-line failures

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
WRITE = os.environ.get("LIGHTNING_SEG_WRITE_MATRIX") == "1"
# Settings every case runs with (not shown in the table): tiny synthetic data, no logger, the sandbox's run folder.
TINY = [o for o in tiny_overrides(Path("<runs>")) if not o.startswith("run.output_dir")]


@dataclass
class Sandbox:
    """One case's folder: ``runs`` is run.output_dir, ``data`` holds data trees, ``files`` checkpoints given by path."""

    root: Path
    trained: Path  # last.ckpt of a tiny fit run (made once per module)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def file(self, name: str) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def folder(self, name: str) -> Path:
        path = self.root / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fit_run(self) -> Path:
        """A finished fit run folder in ``runs`` (what `run.resume=last` and `run.ckpt` default to)."""
        run = self.runs / "fit" / "isic-run"
        shutil.copytree(self.trained.parent.parent, run)
        return run


@dataclass(frozen=True)
class Case:
    id: str
    bad: str  # the bad input, in the user's words
    prepare: Callable[[Sandbox], list[str]]  # writes the inputs, returns the command line (without the TINY settings)
    exit: int = 2
    leaves: bool = False  # the case is expected to leave files (it failed after training had started)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def _argv(*args: str) -> Callable[[Sandbox], list[str]]:
    return lambda box: list(args)


def _isic_with(damage: Callable[[dict], object], n: int = 6) -> Callable[[Sandbox], list[str]]:
    def prepare(box: Sandbox) -> list[str]:
        root = box.root / "data" / "isic"
        tree = make_isic_tree(root, 2018, splits=["train"], n_per_split=n)
        damage({"images": tree.images, "masks": {k: m["mask"] for k, m in tree.masks.items()}, "key": tree.keys[1]})
        return ["fit", "data.source=folder", f"data.root={root}"]

    return prepare


def _mask_values(values: tuple[int, ...], fraction: float) -> Callable[[dict], object]:
    def damage(t: dict) -> None:
        path = t["masks"][t["key"]]
        h, w = np.asarray(Image.open(path)).shape[:2]
        mask = np.full((h, w), values[0], np.uint8)
        mask[: max(1, int(h * fraction)), :] = values[1]
        save(path, mask)

    return damage


def _pairs(box: Sandbox, n: int) -> Path:
    root = box.root / "data" / "isic"
    make_isic_tree(root, 2018, splits=["train"], n_per_split=n)
    return root


def _monai_weights(box: Sandbox) -> Path:
    """A state dict saved by plain PyTorch code from a MONAI UNet (the command asks for the built-in U-Net)."""
    from monai.networks.nets import UNet

    path = box.file("monai_unet.pt")
    torch.save(UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8), strides=(2,)).state_dict(), path)
    return path


def _ckpt_file(write: Callable[[Sandbox, Path], None], name: str, *command: str) -> Callable[[Sandbox], list[str]]:
    def prepare(box: Sandbox) -> list[str]:
        path = box.file(name)
        write(box, path)
        return [*(command or ("validate",)), f"run.ckpt={path}"]

    return prepare


class _Payload:
    """Unpickling this runs ``Path.touch``: a file named ``code_ran`` next to the checkpoint shows that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _pickled(box: Sandbox, path: Path) -> None:
    ckpt = torch.load(box.trained, map_location="cpu", weights_only=True)
    ckpt["extra"] = _Payload(path.parent / "code_ran")
    torch.save(ckpt, path)


def _resume_with(*overrides: str) -> Callable[[Sandbox], list[str]]:
    def prepare(box: Sandbox) -> list[str]:
        box.fit_run()
        return ["fit", "run.resume=last", *overrides]

    return prepare


def _with_run(*args: str) -> Callable[[Sandbox], list[str]]:
    def prepare(box: Sandbox) -> list[str]:
        box.fit_run()
        return list(args)

    return prepare


CASES = [
    # -- the config: checked when it is composed, before anything runs
    Case("unknown-key", "a misspelt key", _argv("fit", "trainer.max_epoch=3")),
    Case("unknown-choice", "an unknown config group choice", _argv("fit", "data=isic2018")),
    Case("wrong-type", "a value of the wrong type", _argv("fit", "trainer.max_epochs=two")),
    Case("out-of-range", "a value out of range", _argv("fit", "data.image_size=0")),
    Case("zero-std", "a normalisation that divides by zero", _argv("fit", "model.std=[0,0,0]")),
    Case("unknown-attack", "an unknown attack name", _with_run("attack", "attack=[asma,dagg]")),
    Case("attack-param", "a bad attack parameter", _with_run("attack", "attack.asma.step=foo")),
    Case("attack-param-name", "a misspelt attack parameter", _with_run("attack", "attack.asma.max_itr=3")),
    Case("target-param", "a target parameter out of range",
         _with_run("attack", "attack_eval.target=scale", "attack_eval.target_params.factor=-1")),
    Case("unknown-defense", "an unknown defense in the report", _with_run("attack", "attack_eval.defenses=[fr,jpg]")),
    Case("folder-no-root", "folder data without a root", _argv("fit", "data.source=folder")),
    Case("root-missing", "a data root that does not exist", _argv("fit", "data.source=folder", "data.root=/no/such/isic")),
    # -- the data: every pair is decoded and checked at setup, before the first step
    Case("truncated-image", "a truncated JPEG", _isic_with(lambda t: corrupt_truncate(t["images"][t["key"]]))),
    Case("missing-mask", "an image without its mask", _isic_with(lambda t: remove_file(t["masks"][t["key"]]))),
    Case("size-mismatch", "a mask of another size than its image", _isic_with(lambda t: write_resized(t["masks"][t["key"]]))),
    Case("colour-mask", "a colour image given as a mask", _isic_with(lambda t: write_colour_mask(t["masks"][t["key"]]))),
    Case("odd-mask-levels", "a mask with values {0, 2}, under 10 % foreground", _isic_with(_mask_values((0, 2), 0.05))),
    Case("tiny-split", "two image pairs: the test split is empty",
         lambda box: ["test", f"run.ckpt={box.fit_run()}", "data.source=folder", f"data.root={_pairs(box, 2)}"]),
    Case("one-target-image", "five image pairs: targets from other images, but the val split holds one image",
         lambda box: ["attack", f"run.ckpt={box.fit_run()}", "data.source=folder", f"data.root={_pairs(box, 5)}"]),
    Case("empty-root", "an empty data folder", lambda box: ["fit", "data.source=folder", f"data.root={box.folder('empty')}"]),
    # -- the model, the trainer and the optimiser: checked against what they accept
    Case("unknown-network", "an unknown MONAI network", _argv("fit", "model.name=monai.UNett")),
    Case("network-param", "an argument the network does not take",
         _argv("fit", "model.name=monai.UNet", "model.params.chanels=[8,16]")),
    Case("trainer-arg", "a misspelt Trainer argument", _argv("fit", "trainer.fast_dev_rn=true")),
    Case("forced-trainer-arg", "a Trainer argument attacks need fixed", _argv("fit", "trainer.inference_mode=true")),
    Case("unknown-optimiser", "an unknown optimiser", _argv("fit", "optim.name=adamm")),
    Case("trainer-rejects", "Trainer arguments Lightning itself rejects together with the project's",
         _argv("fit", "trainer.barebones=true")),
    Case("eval-model-override", "a model override when evaluating a checkpoint",
         lambda box: ["validate", f"run.ckpt={box.fit_run()}", "model.width=8"]),
    # -- checkpoints: never unpickled, checked before a run folder exists
    Case("no-run-yet", "no trained model yet", _argv("attack")),
    Case("ckpt-missing", "a checkpoint path that does not exist", _argv("validate", "run.ckpt=/no/such/model.ckpt")),
    Case("ckpt-text", "a text file given as a checkpoint",
         _ckpt_file(lambda box, p: p.write_text("hello, not a checkpoint\n"), "notes.ckpt")),
    Case("ckpt-truncated", "a truncated checkpoint",
         _ckpt_file(lambda box, p: p.write_bytes(box.trained.read_bytes()[: box.trained.stat().st_size // 2]), "half.ckpt")),
    Case("ckpt-pickle", "a checkpoint that runs code when unpickled (also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1)",
         _ckpt_file(_pickled, "evil.ckpt", "attack")),
    Case("ckpt-architecture", "fine-tuning from a checkpoint of another architecture",
         lambda box: ["fit", f"run.init_from={box.fit_run()}", "model.width=8"]),
    Case("weights-mismatch", "weights of another network given with run.weights",
         lambda box: ["validate", f"run.weights={_monai_weights(box)}"]),
    # -- resume: the same run or nothing
    Case("resume-other-data", "resuming with another data set", _resume_with("data=glaucoma")),
    Case("resume-other-model", "resuming with another model width", _resume_with("model.width=8")),
    # -- during a run
    Case("diverges", "a learning rate that makes the loss non-finite",
         _argv("fit", "optim.lr=1e9", "trainer.max_epochs=3", "data.num_train=8"), leaves=True),
    Case("ctrl-c", "Ctrl-C during an attack",
         _with_run("attack", "attack=[pgd,dag]", "attack.pgd.steps=2", "attack_eval.num_images=4", "attack_eval.panels=0"),
         exit=130, leaves=True, patch=lambda monkeypatch: ctrl_c_at(monkeypatch, "dag")),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(fit(compose(tiny_overrides(tmp_path_factory.mktemp("matrix") / "runs")))["last_checkpoint"])


@pytest.fixture(scope="module")
def rows() -> dict[str, str]:
    found: dict[str, str] = {}
    yield found
    if WRITE and found:
        _write_doc(found)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _left(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What the command created, changed or deleted, by folder: 'runs/fit/<run>/: config.yaml, results.json'."""
    changes = [f"{k}" for k in after if k not in before] + [f"{k} (changed)" for k in after if k in before and before[k] != after[k]]
    changes += [f"{k} (deleted)" for k in before if k not in after]
    folders: dict[str, list[str]] = {}
    for item in sorted(changes):
        folder, _, name = item.rpartition("/")
        folders.setdefault(folder, []).append(name)
    return [f"`{folder}/`: {', '.join(names)}" for folder, names in folders.items()]


def _normalise(text: str, box: Sandbox) -> str:
    text = text.replace(str(box.root.resolve()), "<tmp>").replace(str(box.root), "<tmp>")
    text = re.sub(r"\d{8}-\d{6}(-\d+)?", "<time>", text)
    text = re.sub(r"(shards/\w+)-[0-9a-f]{12}", r"\1-<fingerprint>", text)  # covers the checkpoint's path
    return text


def _row(case: Case, box: Sandbox, argv: list[str], code: int, message: str, left: list[str]) -> str:
    command = _normalise(" ".join(["python -m lightning_seg", *argv]), box)
    sees = "<br>".join(f"`{line}`" for line in _normalise(message, box).splitlines())
    disk = "<br>".join(_normalise(item, box) for item in left) or "nothing"
    return f"| {case.id} | {case.bad} | `{command}` | {code} | {sees} | {disk} |"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, trained: Path, rows: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    box = Sandbox(tmp_path / "case", trained)
    box.runs.mkdir(parents=True)
    argv = case.prepare(box)
    if case.patch:
        case.patch(monkeypatch)
    if case.id == "ckpt-pickle":
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    before = _snapshot(box.root)
    capsys.readouterr()
    other_model = any(a.startswith(("model.name=", "model=")) for a in argv)
    tiny = [o for o in TINY if not (other_model and o.startswith("model."))]  # the tiny U-Net's keys
    code = main([argv[0], *tiny, f"run.output_dir={box.runs}", *argv[1:]])  # the case's own values come last
    err = capsys.readouterr().err
    after = _snapshot(box.root)
    assert "Traceback" not in err, err
    prefix = "interrupted" if case.exit == 130 else "error: "
    start = next((i for i, line in enumerate(err.splitlines()) if line.startswith(prefix)), None)
    assert start is not None, err
    message = "\n".join(line for line in err.splitlines()[start:] if not line.startswith(("GPU available", "TPU available",
                                                                                          "HPU available", "`Trainer")))
    assert code == case.exit, err
    left = _left(before, after)
    if not case.leaves:
        assert not left, left  # failed before training: no run folder, no changed file
    assert not (box.root / "files" / "code_ran").exists()  # no checkpoint ran code
    row = _row(case, box, argv, code, message, left)
    rows[case.id] = row
    if not WRITE:
        documented = _documented_rows()
        assert case.id in documented, f"{case.id} is not in {DOC}: rewrite it (see this module's docstring)"
        assert documented[case.id] == row, f"{DOC} is out of date for {case.id}: rewrite it (see this module's docstring)"


def test_the_page_lists_only_known_cases() -> None:
    assert set(_documented_rows()) == {c.id for c in CASES}


def _documented_rows() -> dict[str, str]:
    text = DOC.read_text() if DOC.is_file() else ""
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| case")
            and not line.startswith("|--")}


HEADER = """# Bad inputs: what you see, what is left on disk

Every row was produced by `tests/test_bad_input_matrix.py`, which runs the command as a user would and checks its
row here, so this page changes only together with the code. The commands also ran with tiny settings that are not
shown (32 px synthetic images, a U-Net of width 4 unless the case names another model, one epoch, `logger=none`,
`run.output_dir=<tmp>/runs`); `<tmp>` is the case's own
folder. "Left on disk" lists every file the command created, changed or deleted anywhere under `<tmp>` (data and
checkpoints included); exit 2 is a user error, exit 130 an interrupt.

The rules these rows show:
- a bad config value fails when the config is composed: one line with the key, the value and what to write instead;
- bad data fails at setup, before the first step, with one message that lists every bad file
  (`data.skip_bad=true` skips them with the same text as a warning);
- a checkpoint is never unpickled (`weights_only=True` on every load path, whatever the environment says);
- a run that fails before training leaves no run folder and changes no file; a resume that is refused leaves its run
  folder as it was;
- a run that fails or is interrupted during its work keeps what finished, and says so.

| case | bad input | command | exit | what you see | left on disk |
|---|---|---|---|---|---|
"""


def _write_doc(found: dict[str, str]) -> None:
    old = _documented_rows()
    merged = {c.id: found.get(c.id) or old.get(c.id) for c in CASES}
    body = "\n".join(row for row in merged.values() if row)
    from lightning_seg.io import write_text

    write_text(DOC, HEADER + body + "\n")
