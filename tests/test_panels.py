"""Attack panels and robustness plots that explain themselves: columns, title, legend, palette, fundus crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_seg.tasks import get_task
from lightning_seg.viz.panels import OKABE_ITO, PALETTE, attack_figure, columns, save_panels

OKABE_RGB = {tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in OKABE_ITO.values()}


def _fundus(size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A 96 px fundus-like tile: a disc of ~10 px with a cup, off-centre, as the synthetic glaucoma data draw it."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - 40.0) ** 2 + (xx - 62.0) ** 2).sqrt()
    mask = (r <= 5).long() + (r <= 2.5).long()  # 1 rim, 2 cup
    image = torch.rand(3, size, size) * 0.2 + 0.4
    image[:, r <= 5] += 0.3
    return image.clamp(0, 1), mask


def _lesion(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[8:20, 10:24] = 1
    return torch.rand(3, size, size) * 0.8 + 0.1, mask  # away from 0 and 1: no clamping of the perturbation


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts] + [fig._suptitle.get_text() if fig._suptitle else ""]


@pytest.mark.parametrize("targeted", [True, False])
def test_panel_columns_title_and_legend(targeted: bool):
    image, mask = _lesion()
    adv = (image + 2 / 255 * torch.sign(torch.randn_like(image))).clamp(0, 1)
    pred = torch.zeros_like(mask)
    fig = attack_figure(image, mask, mask, adv, pred, target=mask.roll(4, 1) if targeted else None,
                        class_names=get_task("lesion").class_names, task="lesion", key="ISIC_0000003", method="asma", iou=0.25)
    titles = [ax.get_title() for ax in fig.axes]
    expected = list(columns(targeted))
    assert len(fig.axes) == len(expected) == (7 if targeted else 6)
    assert [t.split(" x")[0].split("\n")[0] for t in titles] == expected
    assert ("target" in titles) == targeted
    # the perturbation column says by how much it is amplified; 2/255 -> 0.5 / (2/255) = 64
    pert = next(t for t in titles if t.startswith("perturbation"))
    assert pert.startswith("perturbation x64") and fig.panel_info["factor"] == pytest.approx(63.75, rel=1e-3)
    title = fig.panel_info["title"]
    assert "ISIC_0000003" in title and "IoU 0.250" in title and "RMS 2.00/255" in title and "Linf 2.0/255" in title
    assert "L2" in title and title in _texts(fig)
    # a legend names the task's classes in the palette's colours
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["lesion"]
    # every tile has the image's size (no crop for lesions)
    assert all(ax.images[0].get_array().shape[:2] == (32, 32) for ax in fig.axes)


def test_palette_is_colour_blind_safe():
    assert {tuple(int(v) for v in c) for c in PALETTE} <= OKABE_RGB
    assert tuple(PALETTE[1]) != (0, 255, 0) and tuple(PALETTE[1]) != (255, 0, 0)


def test_fundus_panel_is_cropped_around_the_disc_and_prints_vcdr():
    image, mask = _fundus()
    adv_pred = mask.clone()
    adv_pred[adv_pred == 1] = 2  # the attack enlarges the cup to the whole disc: vCDR 0.5 -> 1.0
    fig = attack_figure(image, mask, mask, image * 0.99, adv_pred, target=adv_pred,
                        class_names=get_task("disc_cup").class_names, task="disc_cup", key="V0001", method="asma", iou=0.9)
    top, left, h, w = fig.panel_info["crop"]
    tile = fig.axes[1].images[0].get_array()
    assert tile.shape[:2] == (h, w) and h < 40 and w < 40
    before = float((mask >= 1).float().mean())  # disc fraction of the whole 96 px tile
    after = float((mask[top:top + h, left:left + w] >= 1).float().mean())
    assert after > 5 * before
    assert (mask[top:top + h, left:left + w] >= 1).sum() == (mask >= 1).sum()  # the whole disc is in the crop
    v = fig.panel_info["vcdr"]
    assert v["adv"] == pytest.approx(1.0, abs=1e-3) and v["clean"] < 0.7
    assert f"vCDR {v['clean']:.2f} -> {v['adv']:.2f}" in fig.panel_info["title"]
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["rim", "cup"]


def test_save_panels_writes_readable_pngs(tmp_path: Path):
    image, mask = _lesion()
    images, labels = image[None].repeat(2, 1, 1, 1), mask[None].repeat(2, 1, 1)
    adv = (images + 1 / 255).clamp(0, 1)
    paths = save_panels("pgd", adv, labels[:, 2:-2, 2:-2], torch.tensor([0.5, 0.6]), images, labels, 2, tmp_path,
                        ["a", "b"], labels=labels, clean_pred=labels, targeted=False, task=get_task("lesion"))
    from PIL import Image

    assert [p.name for p in paths] == ["pgd_000.png", "pgd_001.png"]
    arr = np.asarray(Image.open(paths[0]))
    assert arr.shape[1] > 6 * 150 and arr.shape[0] > 200  # six columns, readable size


def test_robustness_plot_names_models_counts_images_and_draws_a_band(tmp_path: Path, monkeypatch):
    import matplotlib.pyplot as plt

    from lightning_seg.evaluation import robustness

    rows = []
    for model, base in (("fit", 0.9), ("adv-train", 0.8)):
        for eps in (0, 2, 8):
            d = base - (0.08 if model == "adv-train" else 0.1) * eps
            rows.append({"checkpoint": f"isic-{model}/best", "model": model, "attack": "clean" if eps == 0 else "pgd",
                         "eps_x255": float(eps), "dice": d, "dice_q25": d - 0.05, "dice_q75": d + 0.05, "iou": d,
                         "n_images": 8})
    captured = {}
    real_close = plt.close

    def keep(fig=None):
        captured["fig"] = fig
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    path = robustness.plot_curve(rows, tmp_path / "robustness.png")
    assert path.is_file()
    ax = captured["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "fit / pgd" in labels and "adv-train / pgd" in labels and "interquartile range over images" in labels
    assert "n = 8 images" in ax.get_title()
    assert len(ax.collections) >= 2  # one band per curve
    import matplotlib.colors as mc

    assert {tuple(round(v * 255) for v in mc.to_rgb(line.get_color())) for line in ax.lines} <= OKABE_RGB
