"""`defense=...` in the config and the commands: fit / adv-train behind a defense, the validation callback and the
AT hook attacking the defended model, checkpoints (weights_only, old and new) and their reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_seg.cli import main
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import adv_train, fit
from lightning_seg.config import ConfigError, compose
from lightning_seg.defenses import DefendedModel, FrequencyRefinement
from lightning_seg.training.checkpoint import load_module


# ----------------------------------------------------------------------------- config
def test_defense_group_composes_with_typed_params():
    cfg = compose(["defense=fr", "defense.gd=80"])
    assert (cfg.defense.name, cfg.defense.gd, cfg.defense.gradient, cfg.defense.quality) == ("fr", 80.0, "bpda", None)
    assert compose([]).defense.name == "none"
    # a new choice replaces the previous defense's parameters (e.g. a checkpoint's), keeps the attacker's settings
    cfg = compose(["defense=jpeg"], base={"defense": {"name": "fr", "gd": 80.0, "gradient": "surrogate"}})
    assert (cfg.defense.name, cfg.defense.gd, cfg.defense.quality, cfg.defense.gradient) == ("jpeg", None, 75, "surrogate")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["defense=fr", "defense.quality=50"], "defense 'fr' has no parameter(s) defense.quality; its parameters: ac, gd, pd, rounding."),
        (["defense.name=frr"], "Did you mean: 'fr'?"),
        (["defense=frr"], "Did you mean 'defense=fr'?"),
        (["defense.gradient=bpd"], "defense.gradient='bpd'"),
        (["attack_eval.defenses=[fr,jpg]"], "Did you mean 'jpeg'?"),
        (["defense=jpeg", "defense.quality=101"], "quality"),
    ],
)
def test_bad_defense_config_fails_with_one_line(overrides: list[str], expected: str):
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_cli_reports_bad_defense_params(capsys: pytest.CaptureFixture[str]):
    assert main(["fit", "defense=bit_depth", "defense.sigma=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: defense 'bit_depth' has no parameter") and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- commands
@pytest.mark.slow
def test_fit_behind_fr_callback_attacks_the_defended_model(tiny, monkeypatch: pytest.MonkeyPatch):
    import lightning_seg.callbacks.adversarial_validation as cb

    seen: list[type] = []
    real = cb.attack_batch

    def spy(attack, net, *args, **kwargs):
        seen.append(type(net))
        return real(attack, net, *args, **kwargs)

    monkeypatch.setattr(cb, "attack_batch", spy)
    extra = {"defense": "fr", "adv_val.enabled": "true", "adv_val.attack": "pgd", "adv_val.max_batches": 1, "attack": "[pgd]",
             "attack.pgd.steps": 2}
    result = fit(compose(tiny(**extra)))
    assert seen and set(seen) == {DefendedModel}  # adaptive: the callback sees the module's net = model . FR
    assert "val_adv/robust_dice_lesion" in result["metrics"]

    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)  # plain containers only
    assert ckpt["hyper_parameters"]["defense"]["name"] == "fr" and ckpt["lightning_seg_config"]["defense"]["gd"] == 60.0
    module = load_module(result["last_checkpoint"])
    assert isinstance(module.net, DefendedModel) and isinstance(module.net.defense, FrequencyRefinement)
    assert module.net.gradient == "bpda"

    # validate rebuilds the defense from the checkpoint: same loss as at the end of fit; without it the loss differs
    root = Path(result["run_dir"]).parents[1]
    common = [f"run.output_dir={root}", f"run.ckpt={result['last_checkpoint']}", "logger=none", "trainer.enable_progress_bar=false"]
    cfg = compose_for("validate", common)
    assert cfg.defense.name == "fr"
    again = evaluate(cfg, "validate")["metrics"]["val/loss"]
    bare = evaluate(compose_for("validate", [*common, "defense=none"]), "validate")["metrics"]["val/loss"]
    assert again == pytest.approx(result["metrics"]["val/loss"], abs=1e-5)
    assert bare != pytest.approx(again, abs=1e-6)


@pytest.mark.slow
def test_adv_train_hook_attacks_the_defended_model(tiny, monkeypatch: pytest.MonkeyPatch):
    from lightning_seg.training.adversarial_hook import AdversarialTrainingHook

    seen: list[type] = []
    real = AdversarialTrainingHook.__call__

    def spy(self, net, images, labels, **kwargs):
        seen.append(type(net))
        return real(self, net, images, labels, **kwargs)

    monkeypatch.setattr(AdversarialTrainingHook, "__call__", spy)
    result = adv_train(compose(tiny(**{"defense": "jpeg", "trainer.limit_train_batches": 2, "adv_train.steps": 1})))
    assert seen == [DefendedModel, DefendedModel] and result["metrics"]["train/adv_images"] > 0


def test_checkpoints_with_and_without_defense_load_either_way(tiny):
    plain = fit(compose(tiny(**{"trainer.limit_train_batches": 1})))
    path = Path(plain["last_checkpoint"])
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["defense"] is None  # undefended: as before, nothing but a None
    # an old checkpoint: no defense key at all, neither in the hyper-parameters nor in the stored config
    del ckpt["hyper_parameters"]["defense"]
    del ckpt["lightning_seg_config"]["defense"]
    old = path.with_name("old.ckpt")
    torch.save(ckpt, old)
    bare = load_module(str(old))
    assert not isinstance(bare.net, DefendedModel)
    behind = load_module(str(old), defense={"name": "fr"})  # the same weights behind FR (keys net.* -> net.model.*)
    assert isinstance(behind.net, DefendedModel)
    for (k, v), (k2, v2) in zip(bare.net.state_dict().items(), behind.base_net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    root = path.parents[3]
    cfg = compose_for("attack", [f"run.output_dir={root}", f"run.ckpt={old}", "logger=none"])
    assert cfg.defense.name == "none"
    # and a defended checkpoint's weights load into a bare module (net.model.* -> net.*)
    torch.save({**ckpt, "state_dict": behind.state_dict(), "hyper_parameters": {**ckpt["hyper_parameters"], "defense": {"name": "fr"}}}, old)
    again = load_module(str(old), defense=None)
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), bare.net.state_dict().values()))
