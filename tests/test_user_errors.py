"""Every user error is one line: a bad value fails when the config is composed, with exit 2 and one line naming the key,
the value and the fix; no traceback and no run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_seg.attacks import build_attack
from lightning_seg.attacks.config import AttackParamError
from lightning_seg.cli import main
from lightning_seg.config import ConfigError, compose, config_groups

# (overrides, fragments of the one error line: the key with the bad value, and the fix)
CASES = [
    (["attack.asma.step=foo"], ["attack.asma.step='foo'", "raw, relative, normalized"]),
    (["attack=pgd", "attack.pgd.steps=ten"], ["attack.pgd.steps='ten'", "an integer"]),
    (["attack=pgd", "attack.pgd.eps=big"], ["attack.pgd.eps='big'", "8/255"]),
    (["attack.asma.max_itr=3"], ["attack.asma.max_itr", "Did you mean: 'max_iter'"]),
    (["data.image_size=0"], ["data.image_size=0", ">= 16"]),
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["data.eval_batch_size=-4"], ["data.eval_batch_size=-4", ">= 1"]),
    (["data.num_workers=-1"], ["data.num_workers=-1", ">= 0"]),
    (["data.num_train=0"], ["fit needs the train split", "data.num_train >= 1"]),  # checked at setup, before the run folder
    (["data.num_val=-1"], ["data.num_val=-1", ">= 0"]),
    (["data.val_fraction=1.0"], ["data.val_fraction=1", "[0, 1)"]),
    (["data.source=folder"], ["data.source=folder", "data.root="]),
    (["data.source=folder", "data.root=/no/such/isic"], ["data.root='/no/such/isic'", "is not a folder"]),
    (["data.source=web"], ["data.source='web'", "synthetic, folder"]),
    (["data.split=official_v2"], ["data.split='official_v2'", "random, official"]),
    (["data.task=disc"], ["data.task='disc'", "lesion"]),
    (["model.std=[0,0,0]"], ["model.std=[0,0,0]", "3 numbers > 0"]),
    (["model.mean=[0.5,0.5]"], ["model.mean=[0.5,0.5]", "3 numbers"]),
    (["model.padding=full"], ["model.padding='full'", "same, valid"]),
    (["model.norm=layer"], ["model.norm='layer'", "batch, group, none"]),
    (["model.upsample=nearest"], ["model.upsample='nearest'", "transpose, bilinear"]),
    (["optim.scheduler=linear"], ["optim.scheduler='linear'", "cosine, none"]),
    (["optim.warmup_fraction=1.5"], ["optim.warmup_fraction=1.5", "[0, 1)"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"]),
    (["logger.mode=sometimes"], ["logger.mode='sometimes'", "offline, online, disabled"]),
    (["attack_eval.num_images=0"], ["attack_eval.num_images=0", ">= 1"]),
    (["attack_eval.num_images=1"], ["attack_eval.num_images=1", "other_image", ">= 2"]),
    (["attack_eval.split=holdout"], ["attack_eval.split='holdout'", "train, val, test"]),
    (["attack_eval.target_base=pred"], ["attack_eval.target_base='pred'", "label, prediction"]),
    (["attack_eval.target=shfit"], ["attack_eval.target='shfit'", "Did you mean: 'shift'"]),
    (["attack_eval.target=shift", "attack_eval.target_params.dz=3"], ["attack_eval.target_params.dz", "dy, dx"]),
    (["attack_eval.target=shift", "attack_eval.target_params.dx=far"], ["attack_eval.target_params.dx='far'", "a number"]),
    (["attack_eval.target=scale", "attack_eval.target_params.factor=-1"], ["factor: -1", "must be > 0"]),
    (["attack_eval.target_params.offset=2"], ["attack_eval.target_params={offset: 2}", "remove them"]),
    (["attack_eval.sweep_attacks=[pgd,fgm]"], ["attack_eval.sweep_attacks=['pgd','fgm']", "Did you mean: 'fgsm'"]),
    (["adv_train.ratio=0"], ["adv_train.ratio=0", "(0, 1]"]),
    (["adv_train.attack=pgdd"], ["adv_train.attack='pgdd'", "Did you mean: 'pgd'"]),
    (["adv_train.params.stpes=3"], ["adv_train.params.stpes", "Did you mean: 'steps'"]),
    (["adv_val.attack=asmaa"], ["adv_val.attack='asmaa'", "Did you mean: 'asma'"]),
    (["defense.gradient=backprop"], ["defense.gradient='backprop'", "bpda"]),
    (["loss.dice_weight=0", "loss.ce_weight=0"], ["dice=0.0, ce=0.0", "not both 0"]),
    (["loss.ce_weight=-1"], ["ce=-1.0", "loss.ce_weight >= 0"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_values_fail_in_one_line_before_any_run_folder(overrides: list[str], fragments: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["fit", *overrides, f"run.output_dir={out}", "logger=none"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()  # no run folder, no W&B run


def test_every_shipped_choice_composes() -> None:
    """The checks reject nothing the project ships: every attack yaml, every data set, every defense."""
    groups = config_groups()
    compose([f"attack=[{','.join(groups['attack'])}]"])
    for data in groups["data"]:
        compose([f"data={data}"])
    for defense in groups["defense"]:
        compose([f"defense={defense}"])
    for target, params in [("cup_enlarge", "{to: 0.75}"), ("shift", "{dx: [-5,5], dy: 0}"), ("enlarge", "{radius: 3}")]:
        compose([f"attack_eval.target={target}", f"attack_eval.target_params={params}"])


def test_attack_parameters_are_checked_against_the_function_signature() -> None:
    """build_attack itself (API users, the adversarial-validation callback) names the parameter, value and choices."""
    with pytest.raises(AttackParamError, match=r"step='foo' is not valid: use one of raw, relative, normalized") as info:
        build_attack("asma", step="foo")
    assert (info.value.param, info.value.value) == ("step", "foo")
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="max_iter=2.5 is not valid: use an integer"):
        build_attack("dag", max_iter=2.5)
    with pytest.raises(TypeError, match="has no parameter 'stepz'"):
        build_attack("pgd", stepz=3)
    assert build_attack("pgd", eps="8/255", seed=None).config.eps == pytest.approx(8 / 255)
    assert build_attack("asma", iou_threshold=None).config.iou_threshold is None
    assert build_attack("synthesis", structures=[[1, 2], [2]]).config.structures == [[1, 2], [2]]
    with pytest.raises(ValueError, match="structures"):
        build_attack("synthesis", structures=[["cup"]])


def test_compose_raises_config_error_for_api_users() -> None:
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0 is not valid"):
        compose(["data.batch_size=0"])


@pytest.mark.slow
def test_attack_requests_that_cannot_run_leave_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors found once the checkpoint and the images are loaded come before the attack's run folder is created."""
    from lightning_seg.commands.fit import fit
    from tests.conftest import tiny_overrides

    root = tmp_path / "runs"
    fit(compose(tiny_overrides(root)))
    capsys.readouterr()  # the fit's own log
    base = ["attack", f"run.output_dir={root}", "logger=none"]
    for extra, fragment in [(["attack=asma", "attack_eval.split=test", "data.num_test=1"], "the test split holds 1 image"),
                            (["attack=[]"], "Nothing to do")]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
        assert not (root / "attack").exists()
