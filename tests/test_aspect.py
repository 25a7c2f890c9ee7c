"""Non-square images: ``data.resize=stretch|pad``, padding excluded from loss, metrics and attacks, clinical read-outs
in the original aspect ratio."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_seg.datamodules import build_datamodule
from lightning_seg.datamodules.transforms import build_transform, padded_size

from lightning_seg.attacks import build_attack
from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import fit
from lightning_seg.config import ConfigError, compose
from lightning_seg.evaluation.clinical import clinical_report
from lightning_seg.evaluation.inference import attack_batches, predict, run_attack
from lightning_seg.metrics.clinical import original_aspect, vcdr
from lightning_seg.metrics.segmentation import StructureMetrics, per_image_dice
from lightning_seg.tasks import get_task
from lightning_seg.training.adversarial_hook import AdversarialTrainingHook
from lightning_seg.training.loss import DiceCELoss
from lightning_seg.training.trainer import build_datamodule_from
from tests.helpers.fake_trees import make_isic_tree
from tests.helpers.toy_models import SmallUNet

# ----------------------------------------------------------------------------- transforms and dataset


def _sample(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)  # no black pixel: padding is the only 0
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    return image, mask


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("shape", [(40, 60), (61, 40)])
def test_pad_keeps_the_aspect_and_marks_the_padding(shape: tuple[int, int], train: bool):
    h, w = shape
    image, mask = _sample(h, w)
    ones = np.ones((h, w), np.uint8)
    hv, wv = padded_size(h, w, 32)
    assert max(hv, wv) == 32 and (hv, wv) == (round(32 * h / max(h, w)), round(32 * w / max(h, w)))
    for seed in range(4):
        t = build_transform(32, train=train, augment=True, resize="pad")
        t.set_random_seed(seed)
        out = t(image=image, mask=mask, valid=ones)
        valid = out["valid"].astype(bool)
        assert out["image"].shape == (32, 32, 3) and out["mask"].shape == valid.shape == (32, 32)
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        # a centred rectangle of the resized size; the odd pixel of padding goes to the bottom / right
        assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == ((32 - hv) // 2, (32 - hv) // 2 + hv,
                                                                   (32 - wv) // 2, (32 - wv) // 2 + wv)
        assert valid.sum() == hv * wv
        assert (out["image"][~valid] == 0).all() and (out["mask"][~valid] == 0).all()
        if not train:  # no colour jitter: every image pixel is > 0
            assert (out["image"][valid].max(-1) > 0).all()
        s = build_transform(32, train=train, augment=True, resize="stretch")
        s.set_random_seed(seed)
        assert s(image=image, mask=mask, valid=ones)["valid"].all()


def test_pad_of_a_square_image_is_the_stretch_pipeline():
    image, mask = _sample(50, 50)
    ones = np.ones((50, 50), np.uint8)
    for seed in range(6):
        a, b = (build_transform(32, train=True, augment=True, resize=r) for r in ("stretch", "pad"))
        a.set_random_seed(seed)
        b.set_random_seed(seed)
        oa, ob = a(image=image, mask=mask, valid=ones), b(image=image, mask=mask, valid=ones)
        assert np.array_equal(oa["image"], ob["image"]) and np.array_equal(oa["mask"], ob["mask"]) and ob["valid"].all()


def test_unknown_resize_fails_in_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data.resize='crop' is not valid: use one of stretch, pad"):
        compose(["data.resize=crop", "logger=none"])
    with pytest.raises(ValueError, match="data.resize"):
        build_datamodule("isic", resize="crop")
    assert compose(["logger=none"]).data.resize == "stretch"


def test_dataset_items_carry_valid_and_original_size(tmp_path: Path):
    tree = make_isic_tree(tmp_path / "isic", 2017, n_per_split=2)
    for resize in ("stretch", "pad"):
        dm = build_datamodule("isic", source="folder", root=str(tmp_path / "isic"), image_size=32, resize=resize,
                              val_fraction=0.0, test_fraction=0.0)
        ds = dm.dataset("train")
        for i in range(len(ds)):
            item = ds[i]
            h, w = tree.sizes[item["key"]]
            assert tuple(item["orig_size"].tolist()) == (h, w) and item["valid"].dtype == torch.bool
            expected = 32 * 32 if resize == "stretch" else math.prod(padded_size(h, w, 32))
            assert int(item["valid"].sum()) == expected
            assert not item["mask"][~item["valid"]].any()


# ----------------------------------------------------------------------------- loss and metrics


def _padded_batch(seed: int = 0, b: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with black padding, labels (a blob per image, background on padding) and valid maps."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.zeros(b, size, size, dtype=torch.bool)
    valid[0, 3:13, :] = True  # a wide image: rows padded
    valid[1, :, 2:14] = True  # a tall one: columns padded
    images = torch.rand(b, 3, size, size, generator=g) * valid.unsqueeze(1)
    labels = torch.zeros(b, size, size, dtype=torch.long)
    labels[:, 5:11, 5:11] = 1
    return images, labels * valid, valid


def test_predictions_that_differ_only_on_padding_score_dice_one():
    _, labels, valid = _padded_batch()
    task = get_task("lesion")
    pred = torch.where(valid, labels, torch.ones_like(labels))  # foreground all over the padding
    assert per_image_dice(pred, labels, task).lt(0.9).all()  # counted without the valid map
    assert per_image_dice(pred, labels, task, valid).eq(1).all()
    metrics = StructureMetrics(task, "val")
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    metrics.update(logits, labels, valid)
    out = metrics.compute()
    assert out["val/dice"] == 1 and out["val/iou"] == 1


def test_loss_ignores_padding_and_is_unchanged_without_it():
    _, labels, valid = _padded_batch()
    loss = DiceCELoss(get_task("lesion"))
    logits = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    other = torch.where(valid.unsqueeze(1), logits, torch.randn_like(logits) * 10)
    assert torch.equal(loss(logits, labels, valid), loss(other, labels, valid))
    assert not torch.equal(loss(logits, labels), loss(other, labels))
    everywhere = torch.ones_like(valid)
    assert torch.equal(loss(logits, labels, everywhere), loss(logits, labels))  # stretch: bit-identical
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")[valid].mean()
    assert torch.allclose(DiceCELoss(get_task("lesion"), dice_weight=0.0)(logits, labels, valid), ce)


# ----------------------------------------------------------------------------- attacks


# budgets large enough for the untrained net's best iterate to differ from the clean image (every attack returns the
# iterate that hurts most, which can be the clean image itself)
ATTACKS = {
    "fgsm": {"eps": 0.3}, "pgd": {"steps": 3}, "pgd_l2": {"name": "pgd", "steps": 3, "norm": "l2", "eps": 0.5},
    "segpgd": {"steps": 3}, "cospgd": {"steps": 3}, "dag": {"max_iter": 4, "targeted": True, "gamma": 0.05},
    "ssm": {"max_iter": 4}, "asm": {"max_iter": 4}, "asma": {"max_iter": 4},
    "asma_paper": {"name": "asma", "max_iter": 3, "paper_exact": True, "iou_threshold": None},
}


@pytest.fixture(scope="module")
def net():
    # seed 4: this untrained net does not predict one class everywhere, so an attack can lower the Dice and its best
    # iterate (the one returned) is not the clean image (with seeds 0-3 FGSM and DAG find no better iterate)
    torch.manual_seed(4)
    return SmallUNet(c=4).eval()


@pytest.mark.parametrize("key", list(ATTACKS))
def test_attacks_never_touch_the_padding(key: str, net, single_thread):
    params = dict(ATTACKS[key])
    attack_fn = build_attack(params.pop("name", key), **params)
    images, labels, valid = _padded_batch()
    reference = labels.flip(0) * valid if attack_fn.targeted else labels  # another image's mask as the target
    result = run_attack(attack_fn, net, images, reference, valid)
    pad = ~valid.unsqueeze(1).expand_as(images)
    assert torch.equal(result.adv[pad], images[pad])
    assert (result.adv - images).abs().amax() > 0  # the valid pixels do move
    delta = result.adv - images
    assert torch.allclose(result.l2, (delta * valid.unsqueeze(1)).flatten(1).norm(dim=1))
    assert torch.allclose(result.rms, result.l2 / (3 * valid.flatten(1).sum(1)).sqrt())
    assert not result.pred[~valid].any()  # predictions are background on padding
    # without padding (stretch), the call is the plain one, bit for bit
    plain = attack_fn(net, images, reference)
    full = run_attack(attack_fn, net, images, reference, torch.ones_like(valid))
    assert torch.equal(plain.adv, full.adv) and torch.equal(plain.pred, full.pred) and torch.equal(plain.rms, full.rms)


def test_padding_is_not_counted_in_the_attack_metrics(net, single_thread):
    images, _, valid = _padded_batch()
    pgd = build_attack("pgd", steps=1, eps=0.0, random_start=False)  # eps 0: the clean prediction
    clean = predict(net, images)
    reference = torch.where(valid, clean, 1 - clean)  # wrong on every padded pixel only
    result = attack_batches(pgd, net, images, reference, batch_size=1, valid=valid)
    assert all(r.pixel_acc.eq(1).all() and r.iou.eq(1).all() for r in result)
    assert predict(net, images, valid=valid)[~valid].eq(0).all()


def test_the_defense_report_keeps_the_padding(net, single_thread):
    from lightning_seg.config import defense_section
    from lightning_seg.defenses import defend
    from lightning_seg.evaluation import defense_report as report

    images, labels, valid = _padded_batch()
    pgd = build_attack("pgd", steps=2)
    jpeg = defense_section("jpeg")
    adv = report.run_attack(pgd, report.adaptive(defend(net, jpeg), "bpda"), images, labels, 2, valid=valid)
    pad = ~valid.unsqueeze(1).expand_as(images)
    assert torch.equal(adv[pad], images[pad]) and not torch.equal(adv, images)
    rows = report.defense_report(net, {"jpeg": jpeg}, {"pgd": pgd}, images, labels, labels, get_task("lesion"),
                                 batch_size=2, valid=valid)["rows"]
    delta = (adv - images) * valid.unsqueeze(1)
    assert {r["threat_model"] for r in rows} == {"none (no defense)", "oblivious", "adaptive BPDA", "adaptive SURROGATE",
                                                        "adaptive STE", "adaptive worst case"}
    assert all(r["linf_x255"] <= 4 + 1e-4 for r in rows) and delta.abs().amax() > 0


def test_adversarial_training_hook_keeps_the_padding(net, single_thread):
    images, labels, valid = _padded_batch()
    for attack_name in ("pgd", "random_synthesis"):
        hook = AdversarialTrainingHook(attack_name, eps=8 / 255, steps=2)
        mixed, _, _ = hook(net, images, labels, valid=valid)
        pad = ~valid.unsqueeze(1).expand_as(images)
        assert torch.equal(mixed[pad], images[pad]) and not torch.equal(mixed, images)


# ----------------------------------------------------------------------------- clinical read-outs


def _ellipse(h: int, w: int, ry: float, rx: float, value: int = 1) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.where(((y - (h - 1) / 2) / ry) ** 2 + ((x - (w - 1) / 2) / rx) ** 2 <= 1, value, 0).astype(np.uint8)


def _through(mask: np.ndarray, resize: str, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mask, valid) the data pipeline makes of an original mask."""
    h, w = mask.shape
    image = np.full((h, w, 3), 128, np.uint8)
    out = build_transform(size, train=False, augment=False, resize=resize)(image=image, mask=mask,
                                                                           valid=np.ones((h, w), np.uint8))
    return torch.from_numpy(out["mask"]).long()[None], torch.from_numpy(out["valid"]).bool()[None]


def _shape(resize: str, original: np.ndarray, corrected: bool = True) -> dict[str, float]:
    m, v = _through(original, resize)
    sizes = torch.tensor([original.shape])
    kw = {"sizes": sizes, "valid": v} if corrected else {}
    r = clinical_report("isic", m, m, m, **kw)
    return {"compactness": float(r["compactness_gt"][0]), "area": float(r["area_gt"][0])}


def test_lesion_shape_is_measured_in_the_original_aspect():
    # a 2.4:1 horizontal ellipse in a 2:1 photograph: stretched to a square it looks like a disc
    original = _ellipse(100, 200, 25, 60)
    pad, stretch = _shape("pad", original), _shape("stretch", original)
    raw = _shape("stretch", original, corrected=False)
    true_ci = (math.pi * (3 * 3.4 - math.sqrt(8.2 * 5.4))) ** 2 / (4 * math.pi * math.pi * 2.4)  # Ramanujan, 1.31
    assert pad["compactness"] == pytest.approx(true_ci, rel=0.04)
    assert stretch["compactness"] == pytest.approx(pad["compactness"], rel=0.03)
    assert stretch["area"] == pytest.approx(pad["area"], rel=0.03)
    # the uncorrected stretched mask is a near-disc of twice the area: the read-outs the issue reported
    assert raw["compactness"] < pad["compactness"] - 0.2
    assert raw["area"] > 1.8 * pad["area"]


def test_vcdr_is_measured_in_the_original_aspect():
    # a fundus photograph of the size; vCDR is a ratio of vertical lengths: only the padding must go
    disc_cup = _ellipse(428, 569, 80, 70)  # {0 background, 1 rim, 2 cup}
    disc_cup[_ellipse(428, 569, 44, 40) == 1] = 2
    truth = float(vcdr(torch.from_numpy(disc_cup).long()[None]))
    values = {}
    for resize in ("stretch", "pad"):
        m, v = _through(disc_cup, resize, size=192)
        report = clinical_report("disc_cup", m, m, m, sizes=torch.tensor([disc_cup.shape]), valid=v)
        values[resize] = float(report["vcdr_gt"])
    assert values["stretch"] == pytest.approx(truth, abs=0.02) and values["pad"] == pytest.approx(truth, abs=0.02)


def test_original_aspect_crops_padding_and_follows_valid_convolution_crops():
    original = _ellipse(100, 200, 25, 60)
    m, v = _through(original, "pad")
    hv, wv = padded_size(100, 200, 96)
    full = original_aspect(m, torch.tensor([[100, 200]]), v)
    assert full.shape == (1, hv, wv)  # padding cropped, no resampling of a padded input
    inner = original_aspect(m[:, 4:-4, 4:-4], torch.tensor([[100, 200]]), v)  # a valid-convolution output
    assert inner.shape == (1, hv, wv - 8) and torch.equal(inner[0], full[0, :, 4:-4])
    s, vs = _through(original, "stretch")
    back = original_aspect(s, torch.tensor([[100, 200]]), vs)
    assert back.shape == (1, hv, wv)  # a stretched input shrinks along the original short side


# ----------------------------------------------------------------------------- end to end


def test_fit_validate_and_attack_with_pad_on_non_square_folder(tmp_path: Path, tiny):
    make_isic_tree(tmp_path / "isic", 2017, n_per_split=4)  # 12 images of about 32 x 48 px
    overrides = tiny(**{"data.source": "folder", "data.root": tmp_path / "isic", "data.resize": "pad",
                        "data.val_fraction": 0.34, "data.test_fraction": 0.0, "data.batch_size": 4, "data.eval_batch_size": 4, "adv_val.enabled": "true",
                        "adv_val.attack": "pgd", "attack": "[pgd]", "attack.pgd.steps": 2})
    fitted = fit(compose(overrides))
    assert "val_adv/clin_compactness_clean" in fitted["metrics"] and math.isfinite(fitted["metrics"]["val/dice"])
    cfg = compose_for("validate", [f"run.output_dir={tmp_path / 'runs'}", "logger=none", "adv_val.enabled=true",
                                   "adv_val.attack=pgd", "attack=[pgd]", "attack.pgd.steps=2"])
    assert cfg.data.resize == "pad"  # evaluation commands take the checkpoint's data config
    validated = evaluate(cfg)
    assert "val/dice_lesion" in validated["metrics"] and "val_adv/robust_dice_lesion" in validated["metrics"]
    cfg = compose_for("attack", [f"run.output_dir={tmp_path / 'runs'}", "logger=none", "attack=[pgd,asma]",
                                 "attack.pgd.steps=2", "attack.asma.max_iter=3", "attack_eval.num_images=4",
                                 "attack_eval.batch_size=4", "attack_eval.panels=0"])
    result = attack(cfg)
    ds = build_datamodule_from(cfg).dataset("val")
    counted = [3 * int(ds[(i, 0)]["valid"].sum()) for i in range(4)]
    assert all(c < 3 * 32 * 32 for c in counted)  # the fake photographs are non-square: there is padding
    rows = list(csv.DictReader((Path(result["run_dir"]) / "per_image.csv").open()))
    assert len(rows) == 8
    for i, row in enumerate(rows):
        assert float(row["rms_x255"]) == pytest.approx(255 * float(row["l2"]) / math.sqrt(counted[i % 4]), rel=1e-5)
        assert math.isfinite(float(row["clin_compactness_clean"]))
