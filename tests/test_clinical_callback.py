"""Clinical read-outs in the adversarial validation callback: per-image values, NaN-aware DDP-exact means, logging."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning_seg.callbacks.adversarial_validation import AdversarialValidation

from lightning_seg.attacks.config import build_named_attack
from lightning_seg.config import compose
from lightning_seg.evaluation.batch_attack import attack_batch, metric_keys
from lightning_seg.evaluation.clinical import CALLBACK_KEYS, callback_values, target_flip_shares
from lightning_seg.metrics.clinical import vcdr
from lightning_seg.metrics.per_image_means import PerImageMeans
from lightning_seg.models import build_model
from lightning_seg.tasks import get_task
from lightning_seg.training.module import SegmentationModule
from lightning_seg.training.trainer import build_datamodule_from

pytestmark = pytest.mark.usefixtures("single_thread")


def optic(cup_rows: tuple[int, int], size: int = 32) -> torch.Tensor:
    """Disc rows 6..25 (diameter 20) in columns 10..21; cup in the given rows (half-open) -> vCDR = len / 20."""
    m = torch.zeros(size, size, dtype=torch.long)
    m[6:26, 10:22] = 1
    m[cup_rows[0]:cup_rows[1], 13:19] = 2
    return m


def test_glaucoma_values_and_flips():
    gt = torch.stack([optic((10, 20)), optic((10, 20))])  # vCDR 0.5
    clean = torch.stack([optic((10, 21)), optic((8, 23))])  # 0.55, 0.75
    adv = torch.stack([optic((8, 22)), optic((8, 23))])  # 0.70, 0.75
    v = callback_values("disc_cup", gt, clean, adv)
    assert set(v) == set(CALLBACK_KEYS["disc_cup"])
    assert torch.allclose(v["vcdr_gt"], torch.tensor([0.5, 0.5]), atol=1e-6)
    assert torch.allclose(v["vcdr_clean"], vcdr(clean)) and torch.allclose(v["vcdr_adv"], torch.tensor([0.7, 0.75]), atol=1e-6)
    assert v["flip@0.6"].tolist() == [1.0, 0.0] and v["flip@0.7"].tolist() == [1.0, 0.0]
    # the target masks' flips are the upper bound a targeted attack can reach
    shares = target_flip_shares("disc_cup", clean, adv)
    assert float(shares["target_flip@0.6"]) == 0.5 and target_flip_shares("isic", clean, adv) == {}


def test_lesion_values_relative_area_and_asymmetry():
    gt = torch.zeros(2, 32, 32, dtype=torch.long)
    gt[:, 8:24, 8:24] = 1
    clean = gt.clone()
    adv = gt.clone()
    adv[0, 8:24, 24:30] = 1  # grows by 6 columns: +37.5 %, and becomes asymmetric about no axis more than before
    adv[1] = 0  # erased: compactness / asymmetry undefined
    v = callback_values("isic", gt, clean, adv)
    assert set(v) == set(CALLBACK_KEYS["isic"])
    assert v["rel_area_change"].tolist() == pytest.approx([6 / 16, -1.0])
    assert math.isnan(float(v["compactness_adv"][1])) and math.isnan(float(v["asym_adv"][1]))
    assert float(v["compactness_adv"][0]) > 0 and float(v["asym_clean"][0]) < 0.2


def test_per_image_means_skip_nan_per_key():
    m = PerImageMeans(("a", "b"))
    m.update({"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([float("nan"), 4.0])})
    m.update({"a": torch.tensor([5.0]), "b": torch.tensor([float("nan")])})
    out = m.compute()
    assert float(out["a"]) == 3.0 and float(out["b"]) == 4.0 and float(out["images"]) == 3.0
    m2 = PerImageMeans(("c",))
    m2.update({"c": torch.tensor([float("nan")])})
    assert math.isnan(float(m2.compute()["c"]))


def test_attack_batch_adds_clinical_values_for_disc_cup():
    torch.manual_seed(0)
    net = build_model("unet", width=4, depth=2, num_classes=3).eval()
    task = get_task("disc_cup")
    x = torch.rand(3, 3, 32, 32)
    y = torch.stack([optic((10, 20)), optic((8, 22)), optic((12, 18))])
    atk = build_named_attack("pgd", None, steps=2, eps=8 / 255, alpha=4 / 255)
    result, values = attack_batch(atk, net, x, y, task, "other_image")
    keys = metric_keys(task)
    assert set(values) == set(keys) and {f"clin_{k}" for k in CALLBACK_KEYS["disc_cup"]} <= set(keys)
    assert torch.allclose(values["clin_vcdr_gt"], vcdr(y).double())
    assert torch.allclose(values["clin_vcdr_adv"], vcdr(result.pred).double())
    with torch.no_grad():
        assert torch.allclose(values["clin_vcdr_clean"], vcdr(net(x).argmax(1)).double())


def test_callback_logs_clinical_readouts_for_glaucoma(tiny, tmp_path: Path):
    cfg = compose(tiny(data="glaucoma"))
    module = SegmentationModule(model={"name": "unet", "width": 4, "depth": 2}, task="disc_cup")
    callback = AdversarialValidation("pgd", {"pgd": {"steps": 2}}, max_batches=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=False,
                         use_distributed_sampler=False, enable_checkpointing=False, callbacks=[callback], default_root_dir=tmp_path)
    metrics = trainer.validate(module, datamodule=build_datamodule_from(cfg))[0]
    for k in ("clin_vcdr_gt", "clin_vcdr_clean", "clin_vcdr_adv", "clin_flip@0.6", "clin_flip@0.7"):
        assert f"val_adv/{k}" in metrics, k
    assert 0.2 < metrics["val_adv/clin_vcdr_gt"] < 0.9  # synthetic fundus: vCDR drawn in [0.3, 0.8]
    assert 0.0 <= metrics["val_adv/clin_flip@0.6"] <= 1.0


def test_summary_normal_to_suspect_share_among_clean_normal_images():
    from lightning_seg.evaluation.clinical import clinical_report, summarize_clinical

    gt = torch.stack([optic((10, 20))] * 3)
    clean = torch.stack([optic((10, 20)), optic((10, 20)), optic((8, 23))])  # 0.5, 0.5, 0.75 (already suspect)
    adv = torch.stack([optic((8, 22)), optic((10, 20)), optic((8, 23))])  # 0.7, 0.5, 0.75
    s = summarize_clinical(clinical_report("disc_cup", gt, clean, adv))
    assert float(s["flip@0.6"]) == pytest.approx(1 / 3) and float(s["n2s_of_normal@0.6"]) == pytest.approx(1 / 2)
    t = target_flip_shares("disc_cup", clean, adv)
    assert float(t["target_n2s_of_normal@0.7"]) == pytest.approx(1 / 2)
