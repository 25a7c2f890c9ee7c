"""The `attack` command end to end on a tiny trained model: files, table, panels, errors, W&B."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_seg.cli import main
from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose

FAST = {"attack.ssm.max_iter": 15, "attack.asm.max_iter": 15, "attack.asma.max_iter": 15, "attack.dag.max_iter": 15,
        "attack.dag.targeted": "true", "attack_eval.num_images": 4, "attack_eval.batch_size": 4, "attack_eval.panels": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("attack_cmd") / "runs"
    result = fit(compose(tiny_overrides(root, **{"trainer.max_epochs": 2})))
    return root, result


def test_no_fit_run_gives_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["attack", f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "No fit run" in err and "python -m lightning_seg fit" in err


def test_unknown_attack_key_fails_before_anything_runs(trained):
    root, _ = trained
    with pytest.raises(TypeError, match="Did you mean: 'max_iter'"):
        attack(_with(root, {"attack.asma.max_itr": 3}))
    assert not (root / "attack").exists()


def _with(root: Path, extra: dict) -> object:
    from omegaconf import OmegaConf

    cfg = compose([f"run.output_dir={root}", "attack=[asma]", "logger=none"])
    OmegaConf.set_struct(cfg, False)
    for key, value in extra.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_table1_run_folder(trained):
    root, fitted = trained
    overrides = [f"run.output_dir={root}", "attack=[ssm,asm,asma,dag]", "logger=none", *[f"{k}={v}" for k, v in FAST.items()]]
    cfg = compose_for("attack", overrides)
    assert cfg.data.task == "lesion"  # data config from the checkpoint
    result = attack(cfg)
    run = Path(result["run_dir"])
    rows = list(csv.DictReader((run / "per_image.csv").open()))
    assert len(rows) == 16 and {r["method"] for r in rows} == {"ssm", "asm", "asma", "dag"}
    for r in rows:
        assert r["image"] != r["reference"]  # targets come from another image (the paper's protocol)
        assert 0 <= float(r["iou"]) <= 1 and float(r["l2"]) >= 0 and float(r["linf_x255"]) <= 255
    assert json.loads((run / "per_image.json").read_text()) and (run / "summary.csv").is_file()
    table = (run / "summary.md").read_text()
    assert "| method | reference | L2 ([0,1] units) | Linf (x255) | IoU [0,1] | pixel acc. [0,1] | success (%) |" in table
    assert "robust Dice lesion vs GT [0,1]" in table
    for name in ("ssm", "asm", "asma", "dag"):
        assert f"| {name} | target |" in table
        assert (run / "panels" / f"{name}_000.png").is_file()
    assert "| method | rel. area change (ratio) | compactness clean / adv | asymmetry score clean / adv |" in table
    assert all("clin_rel_area_change" in r and "clin_compactness_adv" in r for r in rows)
    summary = {s["method"]: s for s in json.loads((run / "results.json").read_text())["summary"]}
    # one forward per iteration (15), then forward-only: the scale refinement (1 check + refine_steps 8) and the result
    assert summary["asma"]["forwards_per_image"] <= 15 + 1 + 8 + 1
    assert summary["asma"]["backwards_per_image"] <= 15


@pytest.mark.slow
def test_attack_logs_tables_and_panels_to_wandb_offline(trained, monkeypatch: pytest.MonkeyPatch):
    root, _ = trained
    monkeypatch.delenv("WANDB_MODE")
    overrides = [f"run.output_dir={root}", "attack=[asma]", "logger.mode=offline", "attack_eval.eps_sweep=[4/255]",
                 "attack_eval.sweep_steps=2", *[f"{k}={v}" for k, v in FAST.items() if "asma" in k or "eval" in k]]
    result = attack(compose_for("attack", overrides))
    offline = list((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    media = offline[0] / "files" / "media"
    assert list((media / "images" / "attack" / "asma").glob("panels_*.png"))  # adversarial images
    assert list((media / "images" / "mask" / "attack" / "asma").glob("*.mask.png"))  # prediction / reference overlays
    tables = {p.name.split("_")[0] for p in (media / "table" / "attack").glob("*.table.json")}
    assert tables == {"summary", "per", "robustness"}, tables
    assert list((media / "images" / "attack").glob("robustness_curve_*.png"))


def test_robustness_sweep_over_two_checkpoints(trained, tmp_path: Path):
    from tests.conftest import tiny_overrides

    root, first = trained
    second = fit(compose(tiny_overrides(tmp_path / "other", **{"seed": 1})))
    overrides = [f"run.output_dir={root}", "attack=[]", "logger=none", "attack_eval.eps_sweep=[2/255,8/255]",
                 "attack_eval.sweep_steps=3", "attack_eval.num_images=6",
                 f"attack_eval.checkpoints=[{first['last_checkpoint']},{second['last_checkpoint']}]"]
    result = attack(compose_for("attack", overrides))
    run = Path(result["run_dir"])
    rows = list(csv.DictReader((run / "robustness.csv").open()))
    assert len(rows) == 2 * (1 + 2 * 2)  # checkpoints x (clean + {pgd, segpgd} x 2 budgets)
    assert {float(r["eps_x255"]) for r in rows} == {0.0, 2.0, 8.0}
    for ckpt in {r["checkpoint"] for r in rows}:
        clean = next(float(r["dice"]) for r in rows if r["checkpoint"] == ckpt and r["attack"] == "clean")
        strongest = [float(r["dice"]) for r in rows if r["checkpoint"] == ckpt and float(r["eps_x255"]) == 8.0]
        assert max(strongest) <= clean + 1e-6  # sanity: an attack never helps
    assert all(r["check"] == "" for r in rows)  # Dice falls with the budget on every curve
    assert (run / "robustness.png").stat().st_size > 10_000 and "Robustness" in (run / "summary.md").read_text()


def test_minimum_budget_per_image_from_the_command(trained):
    """``attack_eval.min_budget.enabled=true`` alone is a request: per-image smallest eps, written and in the table."""
    root, _ = trained
    overrides = [f"run.output_dir={root}", "attack=[]", "logger=none", "attack_eval.num_images=5",
                 "attack_eval.min_budget.enabled=true", "attack_eval.min_budget.steps=3",
                 "attack_eval.min_budget.bisection_steps=3", "attack_eval.min_budget.level=0.9"]
    result = attack(compose_for("attack", overrides))
    run = Path(result["run_dir"])
    rows = list(csv.DictReader((run / "min_budget.csv").open()))
    assert len(rows) == 5 and {r["image"] for r in rows} and (run / "min_budget.png").is_file()
    assert result["min_budget"]["min_budget_n"] == 5
    assert "Minimum budget per image" in (run / "summary.md").read_text()


@pytest.mark.slow
def test_validation_callback_logs_panels_and_table_to_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.conftest import tiny_overrides

    monkeypatch.delenv("WANDB_MODE")
    overrides = tiny_overrides(tmp_path / "runs", **{"logger": "wandb", "logger.mode": "offline", "adv_val.enabled": "true",
                                                      "adv_val.attack": "asma", "attack.asma.max_iter": 5})
    result = fit(compose(overrides))
    offline = next((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
    media = offline / "files" / "media"
    assert list((media / "images" / "val_adv").glob("panels_*.png"))
    assert list((media / "images" / "mask" / "val_adv").glob("*.mask.png"))
    assert list((media / "table" / "val_adv").glob("per_image_*.table.json"))
    assert "val_adv/robust_dice_lesion" in result["metrics"]


def test_glaucoma_attack_reports_vcdr_and_screening_flips(tmp_path: Path):
    from tests.conftest import tiny_overrides

    fitted = fit(compose(tiny_overrides(tmp_path / "runs", **{"data": "glaucoma"})))
    overrides = [f"run.output_dir={tmp_path / 'runs'}", "attack=[asma]", "logger=none", "attack.asma.max_iter=5",
                 "attack_eval.num_images=4", f"run.ckpt={fitted['last_checkpoint']}"]
    result = attack(compose_for("attack", overrides))
    table = (Path(result["run_dir"]) / "summary.md").read_text()
    assert ("| method | vCDR gt / clean / adv | screening flips (%) at 0.6 / 0.7 | target masks' flips (%) at 0.6 / 0.7 | "
            "normal->suspect of clean-normal (%) at 0.6 / 0.7 | same for the target masks (%) | mean abs dvCDR |") in table
    rows = list(csv.DictReader((Path(result["run_dir"]) / "per_image.csv").open()))
    assert all(0.0 <= float(r["clin_vcdr_gt"]) <= 1.0 for r in rows) and "clin_n2s@0.6" in rows[0]
    summary = result["summary"][0]
    assert summary["clin_flip_pct@0.6"] == pytest.approx(summary["clin_n2s_pct@0.6"] + summary["clin_s2n_pct@0.6"])
    assert 0.0 <= summary["clin_target_flip_pct@0.6"] <= 100.0 and "clin_target_n2s_of_normal_pct@0.7" in summary


def test_robustness_rows_flag_dice_rising_with_the_budget():
    from lightning_seg.evaluation.robustness import flag_monotone, robustness_table

    def row(attack, eps, dice):
        return {"checkpoint": "a/best", "attack": attack, "eps_x255": eps * 255, "dice_lesion": dice, "dice": dice, "iou": dice}

    rows = flag_monotone([row("clean", 0.0, 0.9), row("pgd", 8 / 255, 0.5), row("pgd", 2 / 255, 0.6), row("pgd", 4 / 255, 0.7)])
    checks = {round(r["eps_x255"]): r["check"] for r in rows if r["attack"] == "pgd"}
    assert checks[2] == "" and checks[8] == ""
    assert checks[4].startswith("WARN: Dice rises from 0.600 at eps 2/255 to 0.700")
    assert "| WARN: Dice rises" in robustness_table(rows)


def test_targets_can_be_built_from_the_clean_prediction(tmp_path: Path):
    from tests.conftest import tiny_overrides

    fitted = fit(compose(tiny_overrides(tmp_path / "runs")))
    base = [f"run.output_dir={tmp_path / 'runs'}", "attack=[asma]", "logger=none", "attack.asma.max_iter=0",
            "attack_eval.num_images=4", "attack_eval.target=shift", "attack_eval.target_params={dx: 0, dy: 0}",
            f"run.ckpt={fitted['last_checkpoint']}", "attack_eval.panels=0"]
    # an identity edit of the model's own mask is reached with no perturbation at all; of the ground truth it is not
    on_pred = attack(compose_for("attack", [*base, "attack_eval.target_base=prediction"]))["summary"][0]
    on_label = attack(compose_for("attack", base))["summary"][0]
    assert on_pred["iou_mean"] == pytest.approx(1.0) and on_pred["l2_mean"] == 0.0
    assert on_label["iou_mean"] < 0.99
    with pytest.raises(ValueError, match="target_base='pred'.*label.*prediction"):
        attack(compose_for("attack", [*base, "attack_eval.target_base=pred"]))
