"""Lightning parity: any Trainer argument from the command line, the optimiser and scheduler chosen in the config,
extra callbacks from the config; the default optimiser and schedule unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging
from omegaconf import OmegaConf

from lightning_seg.cli import main
from lightning_seg.commands.fit import fit
from lightning_seg.commands.resume import config_differences
from lightning_seg.config import ConfigError, compose, to_plain
from lightning_seg.training.module import SegmentationModule
from lightning_seg.training.trainer import build_module, build_trainer, config_callbacks

# -- the trainer section: any Trainer argument


def test_any_trainer_argument_is_a_plain_key_passed_to_the_trainer(tmp_path: Path) -> None:
    cfg = compose(["logger=none", "trainer.max_steps=100", "trainer.accumulate_grad_batches=4",
                   "trainer.val_check_interval=0.5", "trainer.num_sanity_val_steps=0",
                   "trainer.enable_model_summary=true", "trainer.max_time={hours: 2}", "trainer.max_epochs=3"])
    assert (cfg.trainer.max_steps, cfg.trainer.accumulate_grad_batches, cfg.trainer.val_check_interval) == (100, 4, 0.5)
    trainer = build_trainer(cfg, tmp_path, callbacks=[], logger=False)
    assert (trainer.max_steps, trainer.accumulate_grad_batches, trainer.val_check_interval) == (100, 4, 0.5)
    assert trainer.num_sanity_val_steps == 0 and trainer.max_epochs == 3
    assert any(type(c).__name__ == "ModelSummary" for c in trainer.callbacks)
    # the forced arguments stay forced; the typed keys still arrive
    assert trainer.predict_loop.inference_mode is False and type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert trainer._accelerator_connector.use_distributed_sampler is False
    fast = build_trainer(compose(["logger=none", "trainer.fast_dev_run=true"]), tmp_path, callbacks=[], logger=False)
    assert fast.fast_dev_run is True and fast.limit_train_batches == 1
    default = build_trainer(compose(["logger=none"]), tmp_path, callbacks=[], logger=False)
    assert default.max_steps == -1 and default.accumulate_grad_batches == 1 and not default.fast_dev_run
    assert not any(type(c).__name__ == "ModelSummary" for c in default.callbacks)  # off unless asked for


def test_trainer_arguments_show_in_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "trainer.max_steps=7", "trainer.accumulate_grad_batches=2", "--print-config"]) == 0
    trainer = OmegaConf.create(capsys.readouterr().out).trainer
    assert (trainer.max_steps, trainer.accumulate_grad_batches, trainer.max_epochs) == (7, 2, 20)


@pytest.mark.parametrize(("override", "fragments"), [
    ("trainer.fast_dev_rn=1", ["Unknown config key 'trainer.fast_dev_rn'", "Did you mean 'trainer.fast_dev_run'?"]),
    ("trainer.devise=2", ["Unknown config key 'trainer.devise'", "Did you mean 'trainer.devices'?"]),
    ("trainer.max_steps=many", ["trainer.max_steps='many'", "an integer"]),
    ("trainer.accumulate_grad_batches=true", ["trainer.accumulate_grad_batches=true", "an integer"]),
    ("trainer.inference_mode=true", ["trainer.inference_mode=true is not allowed", "input gradients"]),
    ("trainer.use_distributed_sampler=true", ["use_distributed_sampler=false", "without padding"]),
    ("trainer.callbacks=[]", ["trainer.callbacks cannot be set", "callbacks=[early_stopping]"]),
    ("trainer.logger=false", ["trainer.logger cannot be set", "logger=wandb|csv|none"]),
    ("trainer.default_root_dir=/tmp/x", ["trainer.default_root_dir cannot be set", "run.output_dir"]),
    ("trainer.enable_checkpointing=false", ["trainer.enable_checkpointing cannot be set", "ModelCheckpoint"]),
    ("optim.name=adamm", ["optim.name='adamm'", "Did you mean 'adam'?"]),
    (["optim.name=sgd", "optim.params.momentun=0.9"], ["optim.params.momentun", "Did you mean 'momentum'?"]),
    ("optim.params.lr=0.1", ["optim.params.lr", "set optim.lr instead"]),
    ("optim.params.amsgrad=maybe", ["optim.params.amsgrad='maybe'", "true or false"]),
    ("optim.scheduler=steplrr", ["optim.scheduler='steplrr'", "Did you mean 'StepLR'?"]),
    ("optim.scheduler=step", ["optim.scheduler=step (StepLR) needs optim.scheduler_params.step_size"]),
    ("optim.scheduler=lambdalr", ["optim.scheduler='lambdalr'", "Python callables"]),
    ("optim.scheduler_params.gamma=0.5", ["optim.scheduler_params={gamma: 0.5}", "remove them"]),
    ("optim.interval=batch", ["optim.interval='batch'", "step, epoch or null"]),
    ("optim.name=rprop", ["optim.name=rprop (Rprop) has no weight decay", "optim.weight_decay=0"]),
    ("callbacks.early_stopping.patiense=3", ["callbacks.early_stopping.patiense", "Did you mean 'patience'?"]),
    ("callbacks.early_stopping.mode=maxx", ["callbacks.early_stopping (EarlyStopping)", "maxx"]),
    ("callbacks.stopper={target: early_stoping}", ["callbacks.stopper: unknown callback 'early_stoping'",
                                                   "Did you mean 'early_stopping'?"]),
    ("callbacks.stopper={target: early_stopping}", ["callbacks.stopper (EarlyStopping) needs callbacks.stopper.monitor"]),
    ("callbacks.mine={target: collections:OrderedDict}", ["callbacks.mine: collections:OrderedDict is not a Lightning callback"]),
    ("callbacks.mine={target: no_such_package.cbs:Cb}", ["callbacks.mine: cannot import no_such_package.cbs"]),
    ("callbacks.mine=3", ["callbacks.mine=3 is not valid", "a mapping"]),
])
def test_bad_trainer_optim_and_callback_settings_fail_in_one_line(override: str | list[str], fragments: list[str]) -> None:
    overrides = [override] if isinstance(override, str) else override
    with pytest.raises(ConfigError) as error:
        compose(["logger=none", *overrides])
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_command_line_reports_them_with_exit_2_and_no_run_folder(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    for override in ("trainer.fast_dev_rn=1", "optim.scheduler=steplrr", "callbacks.early_stopping.patiense=3"):
        assert main(["fit", override, f"run.output_dir={out}", "logger=none"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and override.split("=")[0] in err, err
    assert not out.exists()


def test_unknown_trainer_key_in_a_config_file_fails_too(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer:\n  max_step: 5\n")  # a yaml merges without the dotlist's key check
    with pytest.raises(ConfigError, match=r"'trainer.max_step'.*Did you mean 'trainer.max_steps'"):
        compose(["logger=none"], extra_files=[extra])
    extra.write_text("trainer:\n  max_steps: 5\n  gradient_clip_algorithm: value\n")
    cfg = compose(["logger=none"], extra_files=[extra])
    assert (cfg.trainer.max_steps, cfg.trainer.gradient_clip_algorithm) == (5, "value")


def test_a_resumed_run_keeps_its_trainer_arguments_and_callbacks() -> None:
    """A resume composes on top of the stored config: untyped trainer keys and callbacks merge back, no difference."""
    stored = to_plain(compose(["logger=none", "trainer.accumulate_grad_batches=2", "callbacks=[early_stopping]"]))
    again = compose(["logger=none"], base={k: v for k, v in stored.items() if k != "run"})
    assert again.trainer.accumulate_grad_batches == 2 and again.callbacks.early_stopping.patience == 5
    assert config_differences(stored, to_plain(again)) == {}
    changed = compose(["logger=none", "trainer.accumulate_grad_batches=4"], base={k: v for k, v in stored.items() if k != "run"})
    assert config_differences(stored, to_plain(changed)) == {"trainer.accumulate_grad_batches": (2, 4)}


# -- the optimiser and scheduler


def _attach(module: SegmentationModule, steps: int, **extra: object) -> SegmentationModule:
    """A stand-in Trainer: what configure_optimizers reads of it."""
    values = {"estimated_stepping_batches": steps, "num_training_batches": 10, "accumulate_grad_batches": 1,
              "max_epochs": 4, "check_val_every_n_epoch": 1, **extra}
    module._trainer = SimpleNamespace(**values)
    return module


def _old_warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The schedule as it was before the scheduler could be chosen (a copy, so a change to the module shows)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def test_default_optimiser_and_schedule_are_the_previous_adamw_cosine() -> None:
    cfg = compose(["logger=none", "model.width=4", "model.depth=2"])
    assert (cfg.optim.name, cfg.optim.scheduler, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", "cosine", 3e-3, 1e-4)
    torch.manual_seed(0)
    module = _attach(build_module(cfg), steps=40)
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
    assert type(optimizer) is torch.optim.AdamW and schedule["interval"] == "step"
    reference = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4)
    assert optimizer.defaults == reference.defaults
    warmup, lrs, expected = int(0.05 * 40), [], []
    for step in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        expected.append(3e-3 * _old_warmup_cosine(step, warmup, 40))
        optimizer.step()
        schedule["scheduler"].step()
    assert lrs == expected  # bit for bit


def test_optimiser_by_name_with_its_arguments() -> None:
    cfg = compose(["logger=none", "model.width=4", "model.depth=2", "optim.name=SGD", "optim.lr=0.1",
                   "optim.params.momentum=0.9", "optim.params.nesterov=true", "optim.scheduler=none"])
    optimizer = _attach(build_module(cfg), steps=10).configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 1e-4)
    adam = _attach(build_module(compose(["logger=none", "model.width=4", "model.depth=2", "optim.name=adam",
                                         "optim.params.betas=[0.8,0.9]", "optim.scheduler=none"])), 10).configure_optimizers()
    assert type(adam) is torch.optim.Adam and tuple(adam.param_groups[0]["betas"]) == (0.8, 0.9)


def _configured(optim: dict[str, object], **trainer: object) -> dict[str, object]:
    """configure_optimizers of a tiny module with this ``optim`` section (the section itself is checked by compose in
    the error tests above and in the fit below)."""
    module = SegmentationModule(model={"name": "unet", "width": 4, "depth": 2}, task="lesion", optim=optim)
    return _attach(module, steps=40, **trainer).configure_optimizers()


@pytest.mark.parametrize(("optim", "kind", "interval", "check"), [
    ({"scheduler": "step", "scheduler_params": {"step_size": 2, "gamma": 0.5}}, "StepLR", "epoch",
     lambda s: (s.step_size, s.gamma) == (2, 0.5)),
    ({"scheduler": "plateau"}, "ReduceLROnPlateau", "epoch", lambda s: s.mode == "max"),
    ({"scheduler": "plateau", "monitor": "val/loss"}, "ReduceLROnPlateau", "epoch", lambda s: s.mode == "min"),
    ({"scheduler": "onecycle"}, "OneCycleLR", "step", lambda s: s.total_steps == 40),
    ({"scheduler": "CosineAnnealingLR"}, "CosineAnnealingLR", "epoch", lambda s: s.T_max == 4),  # 40 steps / 10 per epoch
    ({"scheduler": "cosineannealinglr", "interval": "step"}, "CosineAnnealingLR", "step", lambda s: s.T_max == 40),
    ({"scheduler": "multisteplr", "scheduler_params": {"milestones": [1, 3]}}, "MultiStepLR", "epoch",
     lambda s: sorted(s.milestones) == [1, 3]),
    ({"scheduler": "torch.optim.lr_scheduler:ExponentialLR", "scheduler_params": {"gamma": 0.9}}, "ExponentialLR",
     "epoch", lambda s: s.gamma == 0.9),
])
def test_scheduler_by_name(optim: dict[str, object], kind: str, interval: str, check) -> None:
    schedule = _configured(optim)["lr_scheduler"]
    assert type(schedule["scheduler"]).__name__ == kind and schedule["interval"] == interval
    assert check(schedule["scheduler"])
    if kind == "ReduceLROnPlateau":
        assert schedule["monitor"] == optim.get("monitor", "val/dice") and "frequency" not in schedule


def test_plateau_steps_only_after_the_epochs_that_validate() -> None:
    assert _configured({"scheduler": "plateau"}, check_val_every_n_epoch=3)["lr_scheduler"]["frequency"] == 3


# -- callbacks


def test_callbacks_from_presets_names_and_targets(tmp_path: Path) -> None:
    cfg = compose(["logger=none", "callbacks=[early_stopping]", "callbacks.early_stopping.patience=2",
                   "callbacks.swa={swa_lrs: 0.01}",
                   "callbacks.ckpt={target: lightning.pytorch.callbacks:ModelCheckpoint, monitor: val/iou, mode: max}"])
    built = config_callbacks(cfg)
    assert [type(c) for c in built] == [EarlyStopping, StochasticWeightAveraging, ModelCheckpoint]
    assert (built[0].monitor, built[0].mode, built[0].patience) == ("val/dice", "max", 2)
    # validate / test get them too, and a ModelCheckpoint from the config switches checkpointing on
    trainer = build_trainer(cfg, tmp_path, callbacks=[], logger=False)
    assert sum(isinstance(c, (EarlyStopping, StochasticWeightAveraging)) for c in trainer.callbacks) == 2
    assert trainer.checkpoint_callback is not None
    # a parameter of a preset alone adds it; null drops an entry; callbacks=[] drops all
    assert compose(["logger=none", "callbacks.early_stopping.patience=1"]).callbacks.early_stopping.monitor == "val/dice"
    assert config_callbacks(compose(["logger=none", "callbacks=[early_stopping]", "callbacks.early_stopping=null"])) == []
    assert not compose(["logger=none", "callbacks=[]"]).callbacks
    assert not compose(["logger=none"]).callbacks  # none by default


# -- end to end


@pytest.mark.slow
def test_fit_fast_dev_run(tiny, tmp_path: Path) -> None:
    """One training and one validation batch; Lightning writes no checkpoint and replaces the logger (csv here, with
    the LearningRateMonitor fit adds for it), the run folder still gets its config and results."""
    assert main(["fit", *tiny(**{"trainer.fast_dev_run": "true", "trainer.max_epochs": 3, "logger": "csv"})]) == 0
    runs = list((tmp_path / "runs" / "fit").iterdir())
    assert len(runs) == 1
    run = runs[0]
    result = json.loads((run / "results.json").read_text())
    assert result["best_checkpoint"] is None and result["best_val_dice"] is None
    assert "val/dice" in result["metrics"] and result["epochs"] == 1
    assert not list(run.rglob("*.ckpt"))
    assert "fast_dev_run: true" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_fit_with_sgd_plateau_early_stopping_and_accumulation(tiny) -> None:
    """The chosen optimiser, scheduler and callback run in a real fit and land in its checkpoints with the config."""
    result = fit(compose(tiny(**{
        "trainer.max_epochs": 4, "trainer.accumulate_grad_batches": 2, "trainer.num_sanity_val_steps": 0,
        "optim.name": "sgd", "optim.params.momentum": 0.9, "optim.scheduler": "plateau",
        "callbacks": "[early_stopping]", "callbacks.early_stopping.stopping_threshold": 0.0,  # stops after epoch 1
    })))
    assert result["epochs"] == 1  # stopped early: val/dice >= 0 at the first validation
    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    stored = ckpt["lightning_seg_config"]
    assert stored["trainer"]["accumulate_grad_batches"] == 2
    assert stored["callbacks"]["early_stopping"]["stopping_threshold"] == 0.0
    assert ckpt["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["lr_schedulers"][0]["mode"] == "max"
    assert any(k.startswith("EarlyStopping") for k in ckpt["callbacks"])
    assert ckpt["global_step"] == 2  # 32 images / batch 8 = 4 batches, accumulated by 2
