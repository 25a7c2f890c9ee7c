"""Attacks inside the Lightning loop: the validation callback and the adversarial-training hook."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning_seg.callbacks.adversarial_validation import AdversarialValidation

from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import adv_train, fit
from lightning_seg.config import compose
from lightning_seg.models import build_model
from lightning_seg.training.adversarial_hook import AdversarialTrainingHook
from lightning_seg.training.module import SegmentationModule
from lightning_seg.training.trainer import build_datamodule_from

PGD_DETERMINISTIC = {"attack": "[pgd]", "attack.pgd.random_start": "false", "attack.pgd.steps": 3, "adv_val.attack": "pgd"}


def test_callback_in_single_device_validate_leaves_the_model_untouched(tiny, tmp_path: Path):
    """The only CPU test that catches an inference-mode Trainer (no input gradients there): validate() + attack callback."""
    cfg = compose(tiny())
    module = SegmentationModule(model={"name": "unet", "width": 4, "depth": 2}, task="lesion")
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    dm = build_datamodule_from(cfg)
    callback = AdversarialValidation("asma", {"asma": {"max_iter": 5}}, max_batches=1, eps_sweep=(1 / 255, 8 / 255), sweep_steps=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=False,
                         use_distributed_sampler=False, enable_checkpointing=False, callbacks=[callback], default_root_dir=tmp_path)
    metrics = trainer.validate(module, datamodule=dm)[0]
    assert {"val_adv/iou", "val_adv/l2", "val_adv/robust_dice_lesion", "val_adv/success_pct", "val_adv/rms_x255"} <= set(metrics)
    assert metrics["val_adv/images"] == 6  # one batch of eval_batch_size=6 attacked
    assert {"val_adv/pgd_eps1/dice", "val_adv/pgd_eps8/dice", "val_adv/pgd_eps8/iou"} <= set(metrics)
    after = module.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # weights and BatchNorm running statistics
    assert all(p.grad is None for p in module.parameters()) and all(p.requires_grad for p in module.parameters())


def test_inference_mode_trainer_is_refused_with_a_clear_error(tiny, tmp_path: Path):
    cfg = compose(tiny())
    module = SegmentationModule(model={"name": "unet", "width": 4, "depth": 2}, task="lesion")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=True,
                         callbacks=[AdversarialValidation("pgd", max_batches=1)], default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="inference"):
        trainer.validate(module, datamodule=build_datamodule_from(cfg))


def test_training_hook_attacks_in_eval_mode_within_budget():
    torch.manual_seed(0)
    net = build_model("unet", width=4, depth=2).train()
    stats = net.down[0][1].running_mean.clone()
    hook = AdversarialTrainingHook("pgd", eps=4 / 255, steps=3, ratio=0.5)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 2, (4, 16, 16))
    mixed, mixed_y, cost = hook(net, x, y)
    assert net.training and torch.equal(net.down[0][1].running_mean, stats)  # BN statistics untouched
    assert torch.equal(mixed[2:], x[2:]) and not torch.equal(mixed[:2], x[:2])  # ratio 0.5: half replaced
    assert (mixed - x).abs().max() <= 4 / 255 + 1e-6 and cost["adv_images"] == 2
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.slow
def test_adv_train_fine_tunes_from_a_fit_checkpoint(tiny):
    base = fit(compose(tiny()))
    result = adv_train(compose(tiny(**{"run.init_from": base["last_checkpoint"], "adv_val.enabled": "true", "adv_val.attack": "pgd"})))
    assert Path(result["run_dir"]).parent.name == "adv-train"
    assert result["metrics"]["train/adv_images"] == 32 and "val_adv/robust_dice_lesion" in result["metrics"]


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_callback_metrics_equal_a_single_process_run(tiny):
    """2 CPU processes, uneven shards (7 + 6 images): the all-reduced val_adv/* equal one process's values."""
    extra = {**PGD_DETERMINISTIC, "adv_val.enabled": "true", "adv_val.max_batches": 20, "data.num_val": 13}
    trained = fit(compose(tiny(**{**extra, "trainer": "ddp_cpu", "data.eval_batch_size": 2})))
    single = evaluate(compose(tiny(**{**extra, "data.eval_batch_size": 1, "run.ckpt": trained["last_checkpoint"]})), "validate")
    for key in ("val_adv/images", "val_adv/l2", "val_adv/linf_x255", "val_adv/iou", "val_adv/robust_dice_lesion"):
        assert single["metrics"][key] == pytest.approx(trained["metrics"][key], abs=1e-5), key
    assert trained["metrics"]["val_adv/images"] == 13


@pytest.mark.slow
@pytest.mark.ddp
def test_adv_train_with_two_processes_and_the_callback(tiny):
    """Attack inside training_step and inside validation on 2 ranks with uneven validation shards: no hang."""
    result = adv_train(compose(tiny(**{"trainer": "ddp_cpu", "adv_val.enabled": "true", "adv_val.attack": "pgd", "adv_val.max_batches": 10,
                                       "data.num_val": 7, "data.eval_batch_size": 2})))
    assert result["metrics"]["val_adv/images"] == 7 and result["metrics"]["train/adv_images"] > 0


def test_training_hook_with_asma_and_realistic_targets():
    torch.manual_seed(0)
    net = build_model("unet", width=4, depth=2).train()
    hook = AdversarialTrainingHook("asma", params={"max_iter": 3}, target="other_image")
    x = torch.rand(3, 3, 16, 16)
    y = torch.zeros(3, 16, 16, dtype=torch.long)
    y[0, 2:8, 2:8] = 1  # the other images' masks are the targets
    mixed, mixed_y, cost = hook(net, x, y)
    assert mixed.shape == x.shape and not torch.equal(mixed, x) and cost["adv_images"] == 3 and net.training
