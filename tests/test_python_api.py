"""The README's "Python API" section runs (issue 14, criterion 3): its python blocks are read from README.md and
executed in order, in one namespace, from a folder holding the ``fit`` run they load, so the README cannot drift from
the code. Only the sizes shrink, by the replacements in :data:`TINY` (each must occur in the README exactly once):
smaller data, fewer attack iterations, a shorter training. Plus the contract of
:func:`lightning_seg.evaluation.api.evaluate_model` beyond the README (argument forms, plain networks, errors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lightning_seg.datamodules import build_datamodule

from lightning_seg.cli import main
from lightning_seg.evaluation.api import EvaluationReport, evaluate_model
from lightning_seg.models import build_model
from lightning_seg.training.checkpoint import load_module
from lightning_seg.training.module import SegmentationModule

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Python API"
CHECKPOINT_RUN = "isic-20261121-120000"  # the run folder the README's first block loads
DATA = {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 4}

# README text -> what the test runs instead: the same calls at a size that runs in seconds
TINY = {
    'build_datamodule("isic")': f'build_datamodule("isic", {", ".join(f"{k}={v}" for k, v in DATA.items())})',
    "asma(model, images, targets)": "asma(model, images, targets, max_iter=3)",
    'build_attack("pgd", eps=8/255, steps=20)': 'build_attack("pgd", eps=8/255, steps=2)',
    'attacks=["asma", "pgd"]': 'attacks={"asma": {"max_iter": 3}, "pgd": {"steps": 2}}',
    '{"asma": {"max_iter": 100}}': '{"asma": {"max_iter": 3}}',
    "max_epochs=20,": "max_epochs=1, limit_train_batches=2, limit_val_batches=1,",
}


def readme_blocks() -> list[str]:
    """The python blocks of the README's Python API section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + len(SECTION) + 2)
    return re.findall(r"```python\n(.*?)```", text[start:end if end != -1 else None], flags=re.DOTALL)


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding runs/fit/<CHECKPOINT_RUN>, trained for one epoch on the tiny data."""
    folder = tmp_path_factory.mktemp("python_api")
    data = [f"data.{k}={v}" for k, v in DATA.items()]
    assert main(["fit", "trainer.max_epochs=1", "data.batch_size=8", "model.width=8", *data, "logger=none",
                 f"run.output_dir={folder / 'runs'}", f"run.name={CHECKPOINT_RUN}",
                 "trainer.enable_progress_bar=false"]) == 0
    return folder


@pytest.fixture(scope="module")
def tiny_module(fit_run: Path):
    return load_module(str(fit_run / "runs" / "fit" / CHECKPOINT_RUN / "checkpoints" / "best.ckpt"))


def test_readme_blocks_and_replacements_match() -> None:
    blocks = readme_blocks()
    assert len(blocks) == 4, "setup + the three uses"
    code = "\n".join(blocks)
    for old in TINY:
        assert code.count(old) == 1, f"README's Python API no longer holds {old!r} once: update TINY"
    assert f"runs/fit/{CHECKPOINT_RUN}/checkpoints/best.ckpt" in blocks[0]
    assert "from lightning_seg.attacks import asma" in blocks[1]
    assert "evaluate_model(" in blocks[2]
    assert "AdversarialValidation(" in blocks[3] and "AdversarialTrainingHook(" in blocks[3]


@pytest.mark.slow
def test_readme_python_api_runs(fit_run: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None,
                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("monai", reason="the third use builds a MONAI UNet (pip install -e '.[dev]')")
    monkeypatch.chdir(fit_run)
    ns: dict = {"__name__": "readme"}
    for i, block in enumerate(readme_blocks()):
        for old, new in TINY.items():
            block = block.replace(old, new)
        exec(compile(block, f"README.md python block {i}", "exec"), ns)  # noqa: S102 - the README's own code

    # 1. the attack and its result object
    result, images = ns["result"], ns["images"]
    assert ns["adv"].shape == images.shape and ns["pred"].shape == ns["masks"].shape
    assert float(ns["adv"].min()) >= 0 and float(ns["adv"].max()) <= 1
    assert len(ns["rows"]) == len(images) == 4 and int(result.iterations.max()) <= 3
    assert {"success_rate", "forwards", "backwards"} <= set(ns["stats"])
    assert len(ns["untargeted"]) == 4 and not ns["untargeted"].targeted

    # 2. the report: every attack, the defense rows of both defenses, the files of the attack command
    report = ns["report"]
    assert isinstance(report, EvaluationReport) and report.num_images == 8  # the tiny val split holds 8 of the 32
    assert [s["method"] for s in report.summary] == ["asma", "pgd"]
    threats = {(r["defense"], r["attack"], r["threat_model"]) for r in ns["defense_rows"]}
    assert {("none", "asma", "none (no defense)"), ("jpeg", "asma", "adaptive BPDA"), ("fr", "pgd", "oblivious")} <= threats
    assert len(ns["defense_rows"]) == 2 * (1 + 2 * 5)  # per attack: baseline + per defense oblivious, BPDA, surrogate, STE, worst case
    written = fit_run / "runs" / "my_evaluation"
    assert {"per_image.csv", "summary.md", "defense.md", "defense.csv", "results.json"} <= {p.name for p in written.iterdir()}
    assert "| fr | pgd | adaptive BPDA |" in report.markdown

    # 3. the user's own module: the hook trained it, the callback logged val_adv/* during fit and validate
    metrics = ns["trainer"].callback_metrics
    assert {"val_adv/iou", "val_adv/l2"} <= set(metrics)
    assert "val_adv/" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_model_plain_network_and_argument_forms(tiny_module, single_thread: None) -> None:
    """A plain nn.Module (scored with the datamodule's task) gives the SegmentationModule's numbers; attacks as built
    objects or labelled overrides; defenses as labelled sections."""
    from lightning_seg.attacks import build_attack

    dm = build_datamodule("isic", **DATA)
    net = tiny_module.net
    by_module = evaluate_model(tiny_module, dm, attacks={"pgd2": {"name": "pgd", "steps": 2}}, num_images=4)
    by_net = evaluate_model(net, dm, attacks=[build_attack("pgd", steps=2)], num_images=4)
    assert by_module.summary[0]["method"] == "pgd2" and by_net.summary[0]["method"] == "pgd"
    for key in ("iou_mean", "adv_dice_lesion_mean", "clean_dice_lesion_mean"):
        assert by_module.summary[0][key] == pytest.approx(by_net.summary[0][key], abs=1e-6)
    assert by_module.defense is None and by_module.clean_dice == pytest.approx(by_net.clean_dice)
    assert net.training is False  # left as it was (load_module returns eval mode)

    report = evaluate_model(net, dm, attacks={"pgd": {"steps": 1}}, defenses={"jpeg50": {"name": "jpeg", "quality": 50}},
                            num_images=2, split="test", target="shift")
    assert {r["defense"] for r in report.defense["rows"]} == {"none", "jpeg50"} and report.split == "test"


def test_evaluate_model_errors() -> None:
    tiny_module = SegmentationModule(model={"name": "unet", "width": 4, "depth": 2}, task="lesion")
    dm = build_datamodule("isic", **DATA)
    with pytest.raises(TypeError, match="attacks must be a list"):
        evaluate_model(tiny_module, dm, attacks="asma")
    with pytest.raises(TypeError, match="defenses must be a list"):
        evaluate_model(tiny_module, dm, attacks=["pgd"], defenses="jpeg")
    with pytest.raises(ValueError, match="attacks is empty"):
        evaluate_model(tiny_module, dm, attacks=[])
    with pytest.raises(TypeError, match="project datamodule"):
        evaluate_model(tiny_module, object(), attacks=["pgd"])
    glaucoma = build_datamodule("glaucoma", task="disc_cup", **DATA)
    with pytest.raises(ValueError, match="task 'lesion' but the datamodule's task is 'disc_cup'"):
        evaluate_model(tiny_module, glaucoma, attacks=["pgd"])
    with pytest.raises(KeyError, match="'pgd'"):  # unknown attack names fail with the closest registered one
        evaluate_model(build_model("unet", num_classes=2), dm, attacks=["pgdd"])
