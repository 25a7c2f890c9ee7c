"""W&B as its users expect, checked in the offline run files: checkpoint artifacts of fit, their use by validate and
attack (lineage), one group per study, best val/dice in the summary, image columns in the per-image tables, class
names of the task, an interactive robustness chart."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose


def wandb_records(run_folder: Path) -> list:
    """The records of an offline run's ``run-<id>.wandb`` file (a LevelDB-style log of protobuf records: 7-byte
    header, 32 KiB blocks, each chunk = crc32 (4) + length (2) + type (1: full, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def _of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _offline_run(run_dir: Path) -> Path:
    runs = list((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def _summary(records: list) -> dict:
    out: dict = {}
    for s in _of(records, "summary"):
        for u in s.update:
            out["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    """A tiny fit (W&B offline, adversarial validation on), then validate and attack of its best checkpoint."""
    from tests.conftest import tiny_overrides

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("wandb_lineage") / "runs"
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root.parent / "wandb_env"))
    mp.setenv("WANDB_DATA_DIR", str(root.parent / "wandb_data"))  # artifact staging (read by the table tests)
    try:
        fitted = fit(compose(tiny_overrides(root, **{"logger": "wandb", "logger.mode": "offline", "trainer.max_epochs": 2,
                                                     "adv_val.enabled": "true", "adv_val.attack": "asma",
                                                     "attack.asma.max_iter": 3, "adv_val.log_images": 2})))
        validated = evaluate(compose_for("validate", [f"run.output_dir={root}", "logger=wandb", "logger.mode=offline",
                                                      f"run.ckpt={fitted['best_checkpoint']}"]), "validate")
        attacked = attack(compose_for("attack", [f"run.output_dir={root}", "logger=wandb", "logger.mode=offline",
                                                 "attack=[asma]", "attack.asma.max_iter=3", "attack_eval.num_images=4",
                                                 "attack_eval.batch_size=4", "attack_eval.panels=2",
                                                 "attack_eval.eps_sweep=[4/255]", "attack_eval.sweep_steps=2",
                                                 "attack_eval.sweep_attacks=[pgd]",
                                                 f"run.ckpt={fitted['best_checkpoint']}"]))
    finally:
        mp.undo()
    return {name: (result, _offline_run(Path(result["run_dir"])))
            for name, result in (("fit", fitted), ("validate", validated), ("attack", attacked))}


def test_fit_logs_best_and_last_checkpoints_as_model_artifacts(study):
    _, run = study["fit"]
    artifacts = _of(wandb_records(run), "artifact")
    models = [a for a in artifacts if a.type == "model" and not a.use_after_commit]
    assert {alias for a in models for alias in a.aliases} >= {"best", "last"}
    run_id = run.name.rsplit("-", 1)[1]
    assert {a.name for a in models} == {f"model-{run_id}"}
    assert all([e.path for e in a.manifest.contents] == ["model.ckpt"] for a in models)


@pytest.mark.parametrize("command", ["validate", "attack"])
def test_evaluations_use_the_fit_runs_checkpoint_artifact(study, command):
    fit_artifacts = [a for a in _of(wandb_records(study["fit"][1]), "artifact") if "best" in a.aliases]
    used = [a for a in _of(wandb_records(study[command][1]), "artifact") if a.use_after_commit]
    assert len(used) == 1 and len(fit_artifacts) == 1
    # the same name and the same content digest: on sync, W&B links fit -> model:best -> this run
    assert used[0].name == fit_artifacts[0].name and used[0].digest == fit_artifacts[0].digest
    assert used[0].type == "model" and "best" in used[0].aliases


def test_runs_of_one_study_share_a_group(study):
    groups = {name: _of(wandb_records(run), "run")[0].run_group for name, (_, run) in study.items()}
    fit_folder = Path(study["fit"][0]["run_dir"]).name
    assert set(groups.values()) == {f"isic/{fit_folder}"}, groups  # <data.name>/<folder of the fit run>
    jobs = {name: _of(wandb_records(run), "run")[0].job_type for name, (_, run) in study.items()}
    assert jobs == {"fit": "fit", "validate": "validate", "attack": "attack"}


def test_summary_holds_the_best_val_dice(study):
    result, run = study["fit"]
    records = wandb_records(run)
    metrics = {m.name: m for m in _of(records, "metric") if m.name}
    assert metrics["val/dice"].summary.max and metrics["val/dice"].summary.last
    summary = _summary(records)
    assert summary["val/dice"]["max"] == pytest.approx(result["best_val_dice"], abs=1e-6)


def _run_table(run: Path, key: str) -> tuple[dict, dict[str, Path]]:
    """A logged table as W&B stores it with its media: the ``run_table`` artifact of ``key`` (the run's own
    media/table/*.json keeps only placeholders for image cells). Returns the table and the artifact's files."""
    flat = key.replace("/", "")
    records = [a for a in _of(wandb_records(run), "artifact") if a.type == "run_table" and f"-{flat}-" in a.name]
    assert records, f"no run_table artifact for {key}"
    files = {e.path: Path(e.local_path) for e in records[-1].manifest.contents}
    table = json.loads(files[f"{key}.table.json"].read_text())
    return table, files


def _class_names(files: dict[str, Path]) -> set[str]:
    names = set()
    for path, local in files.items():
        if path.endswith(".classes.json"):
            names |= {c["name"] for c in json.loads(local.read_text())["class_set"]}
    return names


def test_attack_table_has_image_columns_with_the_tasks_class_names(study):
    _, run = study["attack"]
    table, files = _run_table(run, "attack/asma/images")
    assert table["columns"][:4] == ["image", "input", "adversarial", "perturbation"]
    row = table["data"][0]
    assert row[1]["_type"] == row[2]["_type"] == row[3]["_type"] == "image-file"
    assert set(row[1]["masks"]) == {"ground_truth", "clean_prediction"}
    assert set(row[2]["masks"]) == {"adv_prediction", "target"}  # asma is targeted
    assert all(r[1]["path"] in files for r in table["data"])  # the images travel with the table
    assert _class_names(files) == {"background", "lesion"}  # the task's names, not "foreground"


def test_validation_table_has_image_columns_with_the_tasks_class_names(study):
    _, run = study["fit"]
    table, files = _run_table(run, "val_adv/per_image")
    assert table["columns"][:3] == ["image", "input", "adversarial"]
    row = table["data"][0]
    assert row[1]["_type"] == row[2]["_type"] == "image-file"
    assert set(row[2]["masks"]) == {"adv_prediction", "ground_truth"}
    assert _class_names(files) == {"background", "lesion"}


def test_robustness_is_an_interactive_chart(study):
    _, run = study["attack"]
    table, _ = _run_table(run, "attack/robustness_chart_table")  # the data of wandb.plot.line_series
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    assert table["data"] and all(r[1] == "fit / pgd (n=4)" for r in table["data"])  # model kind / attack (images)
    history = {"/".join(i.nested_key) or i.key for h in _of(wandb_records(run), "history") for i in h.item}
    assert any(k.startswith("attack/robustness_chart") for k in history), sorted(history)


def test_offline_lineage_falls_back_to_the_config_without_wandbs_internal_call(tmp_path, capsys):
    """``run._log_artifact`` is wandb's internal API: on a release without it the checkpoint is still named, in the
    run's config, with its digest, and one line says the lineage is missing."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lightning_seg.training.trainer import use_checkpoint_artifact

    ckpt = tmp_path / "fit" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")

    class Config(dict):
        def update(self, values, allow_val_change=False):
            super().update(values)

    run = SimpleNamespace(settings=SimpleNamespace(_offline=True), config=Config())  # no _log_artifact
    cfg = OmegaConf.create({"logger": {"log_checkpoints": True}})
    assert use_checkpoint_artifact(run, cfg, ckpt) is None
    record = run.config["input_checkpoint"]
    assert record["artifact"].startswith("model-") and len(record["digest"]) == 32 and record["path"] == str(ckpt)
    assert "not as lineage" in capsys.readouterr().out
