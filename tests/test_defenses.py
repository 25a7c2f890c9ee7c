"""Tests for lightning_seg.defenses."""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_seg.defenses import (
    ATTACKER_KEYS,
    DEFENSES,
    JPEG,
    DefendedModel,
    FrequencyRefinement,
    RandomNoise,
    bit_depth_reduction,
    blockwise_quantize,
    build_defense,
    dct_matrix,
    eot_input_grad,
    fr_quant_table,
    frequency_refinement,
    gaussian_blur,
    jpeg,
    jpeg_quant_tables,
    median_filter,
    round_with_mode,
)
from lightning_seg.registry import UnknownNameError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "defense"


# ----------------------------------------------------------------------------- helpers
def smooth_images(b: int, h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Natural-ish uint8-valued images: smooth sinusoids + a blob + mild noise, in [0,1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64), torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    imgs = []
    for _ in range(b):
        chans = []
        for _c in range(3):
            a = torch.rand(6, generator=g, dtype=torch.float64)
            v = 0.5 + 0.2 * torch.sin(2 * math.pi * (3 * a[0] * xx + 3 * a[1] * yy) + 6 * a[2])
            v = v + 0.15 * torch.exp(-((xx - a[3]) ** 2 + (yy - a[4]) ** 2) / (0.05 + 0.1 * a[5]))
            chans.append(v)
        imgs.append(torch.stack(chans))
    x = torch.stack(imgs) + 0.01 * torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)
    return ((x.clamp(0, 1) * 255).round() / 255).to(dtype)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a.double() - b.double()) ** 2).mean()))


def ref_dct_matrix() -> np.ndarray:
    """Orthonormal 8x8 DCT-II built entry by entry from its definition."""
    c = np.zeros((8, 8))
    for u in range(8):
        a = math.sqrt(1 / 8) if u == 0 else math.sqrt(2 / 8)
        for k in range(8):
            c[u, k] = a * math.cos((2 * k + 1) * u * math.pi / 16)
    return c


def ref_fr(x: np.ndarray, pd: float, ac: float, gd: float) -> np.ndarray:
    """Straightforward per-block FR: x [C,H,W] in [0,1] -> [C,H,W]; loops over channels and blocks."""
    q = np.full((8, 8), gd, dtype=np.float64)
    for u in range(8):
        for v in range(8):
            if max(u, v) <= 1:
                q[u, v] = pd
            elif max(u, v) <= 3:
                q[u, v] = ac
    d = ref_dct_matrix()
    c, h, w = x.shape
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    img = np.zeros((c, hp, wp))
    img[:, :h, :w] = x.astype(np.float64) * 255.0
    out = np.zeros_like(img)
    for ch in range(c):
        for i in range(0, hp, 8):
            for j in range(0, wp, 8):
                blk = img[ch, i : i + 8, j : j + 8]
                coef = d @ blk @ d.T
                coef = q * np.round(coef / q)
                out[ch, i : i + 8, j : j + 8] = d.T @ coef @ d
    return np.clip(out[:, :h, :w] / 255.0, 0.0, 1.0)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).double()


# ----------------------------------------------------------------------------- Frequency Refinement
def test_fr_quant_table_layout() -> None:
    q = fr_quant_table(30, 5, 60)
    assert q.shape == (8, 8)
    assert int((q == 30).sum()) == 4 and int((q == 5).sum()) == 12 and int((q == 60).sum()) == 48
    for u in range(8):
        for v in range(8):
            expected = 30 if max(u, v) <= 1 else 5 if max(u, v) <= 3 else 60
            assert q[u, v] == expected, (u, v)
    assert FrequencyRefinement.Config().gd == 60.0  # CLI default, not the class default 80
    with pytest.raises(ValueError, match="gd"):
        fr_quant_table(30, 5, 0)


@pytest.mark.parametrize("hw", [(32, 40), (37, 50)])
@pytest.mark.parametrize("bands", [(30.0, 5.0, 60.0), (30.0, 5.0, 80.0), (7.0, 3.0, 11.0)])
def test_fr_matches_per_block_reference(hw: tuple[int, int], bands: tuple[float, float, float]) -> None:
    x = smooth_images(2, *hw, seed=1, dtype=torch.float64)
    x = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)).clamp(0, 1)
    out = frequency_refinement(x, *bands)
    assert out.shape == x.shape and out.dtype == torch.float64
    ref = np.stack([ref_fr(xi.numpy(), *bands) for xi in x])
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=0)
    assert float((out - x).abs().max()) > 1e-3  # it does change the image


def test_fr_module_equals_function_and_float32_close_to_reference() -> None:
    x = smooth_images(1, 40, 48, seed=3)
    out = FrequencyRefinement(30, 5, 60)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, frequency_refinement(x, 30, 5, 60))
    ref = ref_fr(x[0].double().numpy(), 30, 5, 60)
    err = np.abs(out[0].double().numpy() - ref)
    # float32 can flip a rounding tie in rare blocks; nearly all pixels must match tightly.
    assert (err < 1e-5).mean() > 0.99


def test_fr_identity_with_unit_table() -> None:
    x = smooth_images(2, 48, 40, seed=4, dtype=torch.float64)
    out = frequency_refinement(x, q=torch.ones(8, 8, dtype=torch.float64))
    assert psnr(out, x) > 50.0
    # with a tiny step the transform is an exact orthonormal round trip
    out_fine = frequency_refinement(x, q=torch.full((8, 8), 1e-9, dtype=torch.float64))
    torch.testing.assert_close(out_fine, x, atol=1e-9, rtol=0)


def test_fr_psnr_on_smooth_images_in_sane_range() -> None:
    x = smooth_images(2, 64, 64, seed=5)
    p = psnr(FrequencyRefinement()(x), x)
    assert 33.0 < p < 45.0, p  # a mild transform: far from destroying the image
    # coarser steps everywhere distort more
    assert psnr(frequency_refinement(x, 60, 20, 120), x) < p


def test_fr_crops_back_and_pads_with_zeros() -> None:
    x = smooth_images(1, 37, 50, seed=6, dtype=torch.float64)
    out = frequency_refinement(x)
    assert out.shape == (1, 3, 37, 50)
    padded = torch.zeros(1, 3, 40, 56, dtype=torch.float64)
    padded[..., :37, :50] = x
    torch.testing.assert_close(out, frequency_refinement(padded)[..., :37, :50])
    # replicate padding would give a different result on the border blocks
    rep = torch.nn.functional.pad(x, (0, 6, 0, 3), mode="replicate")
    assert float((out - frequency_refinement(rep)[..., :37, :50]).abs().max()) > 1e-3


def test_fr_batch_independence_and_dtype_consistency() -> None:
    x64 = smooth_images(1, 40, 40, seed=7, dtype=torch.float64)
    single = frequency_refinement(x64)
    batch = frequency_refinement(x64.repeat(3, 1, 1, 1))
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], single, atol=0, rtol=0)
    out32 = frequency_refinement(x64.float())
    assert out32.dtype == torch.float32
    assert float((out32.double() - single).abs().mean()) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fr_cuda_matches_cpu() -> None:  # pragma: no cover - no GPU on the dev machine
    x = smooth_images(2, 37, 50, seed=8, dtype=torch.float64)
    torch.testing.assert_close(frequency_refinement(x.cuda()).cpu(), frequency_refinement(x))


def test_fr_input_errors() -> None:
    with pytest.raises(ValueError, match="B,C,H,W"):
        frequency_refinement(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="float"):
        frequency_refinement(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="rounding"):
        FrequencyRefinement(rounding="floor")


def test_dct_matrix_and_per_channel_tables() -> None:
    fft = pytest.importorskip("scipy.fft")
    eye = np.eye(8)
    np.testing.assert_allclose(dct_matrix().numpy(), fft.dct(eye, axis=0, norm="ortho"), atol=1e-12)
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(19), dtype=torch.float64) * 255
    tables = torch.stack([torch.full((8, 8), 3.0), torch.full((8, 8), 17.0), fr_quant_table()]).double()
    out = blockwise_quantize(x, tables)
    for ch in range(3):
        torch.testing.assert_close(out[:, ch : ch + 1], blockwise_quantize(x[:, ch : ch + 1], tables[ch]))
    with pytest.raises(ValueError, match="multiples of 8"):
        blockwise_quantize(x[..., :15, :], tables)


# ----------------------------------------------------------------------------- rounding and gradients
def test_rounding_modes() -> None:
    x = torch.tensor([0.2, 0.5, 1.5, 2.7, -1.3], dtype=torch.float64, requires_grad=True)
    assert torch.equal(round_with_mode(x, "exact"), torch.tensor([0.0, 0.0, 2.0, 3.0, -1.0], dtype=torch.float64))
    assert torch.equal(round_with_mode(x, "ste"), round_with_mode(x, "exact"))
    (g,) = torch.autograd.grad(round_with_mode(x, "ste").sum(), x)
    assert torch.equal(g, torch.ones_like(x))
    cub = round_with_mode(x, "cubic")
    r = torch.round(x.detach())
    torch.testing.assert_close(cub.detach(), r + (x.detach() - r) ** 3)
    (g,) = torch.autograd.grad(cub.sum(), x)
    torch.testing.assert_close(g, 3 * (x.detach() - r) ** 2)
    (g,) = torch.autograd.grad(round_with_mode(x, "exact").sum(), x)
    assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("name", ["fr", "jpeg", "bit_depth"])
def test_exact_gradient_is_masked_bpda_and_surrogate_are_not(name: str) -> None:
    model = tiny_model()
    x = smooth_images(2, 32, 32, seed=9, dtype=torch.float64)
    grads = {}
    for mode in ("exact", "bpda", "surrogate"):
        dm = DefendedModel(model, name, gradient=mode)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(dm(xg).sum(), xg)
        grads[mode] = g
    assert float(grads["exact"].abs().max()) == 0.0
    assert float(grads["bpda"].abs().mean()) > 1e-6
    assert float(grads["surrogate"].abs().mean()) > 1e-6
    assert not torch.allclose(grads["bpda"], grads["surrogate"])
    # BPDA gradient = model gradient evaluated at the defended input
    y = build_defense(name)(x).requires_grad_(True)
    (g_model,) = torch.autograd.grad(model(y).sum(), y)
    torch.testing.assert_close(grads["bpda"], g_model)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["none", "fr", "jpeg", "bit_depth", "median", "gaussian"])
@pytest.mark.parametrize("mode", ["exact", "bpda", "surrogate"])
def test_defended_model_output_equals_model_of_defense(name: str, mode: str) -> None:
    model = tiny_model()
    x = smooth_images(2, 24, 40, seed=10, dtype=torch.float64)
    defense = build_defense(name)
    expected = model(defense(x))
    out = DefendedModel(model, defense, gradient=mode)(x.clone().requires_grad_(True))
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_defended_model_smoothing_exact_gradient_nonzero() -> None:
    model = tiny_model()
    x = smooth_images(1, 24, 24, seed=11, dtype=torch.float64).requires_grad_(True)
    for name in ("median", "gaussian"):
        (g,) = torch.autograd.grad(DefendedModel(model, name, gradient="exact")(x).sum(), x)
        assert float(g.abs().mean()) > 1e-6


def test_defended_model_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gradient"):
        DefendedModel(tiny_model(), "fr", gradient="identity")
    with pytest.raises(UnknownNameError, match="jpeg"):
        DefendedModel(tiny_model(), "jepg")
    with pytest.raises(ValueError, match="eot_samples"):
        DefendedModel(tiny_model(), "fr", eot_samples=0)


# ----------------------------------------------------------------------------- EOT and the randomised defense
def test_random_noise_is_seeded() -> None:
    x = torch.full((1, 3, 8, 8), 0.5)
    a, b = RandomNoise(0.1, seed=3), RandomNoise(0.1, seed=3)
    first = a(x)
    torch.testing.assert_close(first, b(x))
    assert not torch.equal(first, a(x))  # fresh sample per call
    a.reseed()
    torch.testing.assert_close(a(x), first)


def test_eot_gradient_averages_samples() -> None:
    model = tiny_model()
    x = smooth_images(2, 16, 16, seed=12, dtype=torch.float64)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return logits.pow(2).mean(dim=(1, 2, 3))

    defense = RandomNoise(0.05, seed=1)
    dm = DefendedModel(model, defense, gradient="exact")
    loss, grad = eot_input_grad(dm, x, loss_fn, n_samples=4)
    assert loss.shape == (2,) and grad.shape == x.shape
    defense.reseed()
    manual = []
    for _ in range(4):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(dm(xg)).sum(), xg)
        manual.append(g)
    torch.testing.assert_close(grad, torch.stack(manual).mean(0))
    assert not torch.allclose(manual[0], manual[1])  # really random
    # deterministic defense: n samples == 1 sample
    dm_fr = DefendedModel(model, "fr", gradient="bpda")
    _, g1 = eot_input_grad(dm_fr, x, loss_fn, n_samples=1)
    _, g3 = eot_input_grad(dm_fr, x, loss_fn, n_samples=3)
    torch.testing.assert_close(g1, g3)


def test_eot_samples_average_logits() -> None:
    model = tiny_model()
    x = smooth_images(1, 16, 16, seed=13, dtype=torch.float64)
    defense = RandomNoise(0.05, seed=2)
    out = DefendedModel(model, defense, eot_samples=3)(x)
    defense.reseed()
    expected = sum(model(defense(x)) for _ in range(3)) / 3
    torch.testing.assert_close(out, expected)
    assert DefendedModel(model, defense).randomized and not DefendedModel(model, "fr").randomized


# ----------------------------------------------------------------------------- bit depth, median, Gaussian
def test_bit_depth_exact_values() -> None:
    x = torch.tensor([0.0, 0.1, 0.2, 0.49, 0.51, 0.9, 1.0]).view(1, 1, 1, -1)
    torch.testing.assert_close(bit_depth_reduction(x, 1), torch.tensor([0.0, 0, 0, 0, 1, 1, 1]).view(1, 1, 1, -1))
    torch.testing.assert_close(
        bit_depth_reduction(x, 2), torch.tensor([0.0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1]).view(1, 1, 1, -1)
    )
    levels = torch.arange(32, dtype=torch.float64) / 31
    torch.testing.assert_close(bit_depth_reduction(levels.view(1, 1, 1, -1), 5), levels.view(1, 1, 1, -1))
    y = bit_depth_reduction(smooth_images(1, 16, 16, seed=14), 3)
    assert torch.unique(torch.round(y * 7)).numel() <= 8
    torch.testing.assert_close(y * 7, torch.round(y * 7))
    with pytest.raises(ValueError, match="bits"):
        bit_depth_reduction(x, 0)


@pytest.mark.parametrize("k", [3, 5])
def test_median_matches_scipy(k: int) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 19, 23, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="mirror")
    np.testing.assert_allclose(median_filter(x, k).numpy(), ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        median_filter(x, 2)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_matches_scipy(sigma: float) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 21, 18, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), ref, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- JPEG
def test_jpeg_quant_tables_follow_ijg_rule() -> None:
    luma50, chroma50 = jpeg_quant_tables(50)
    assert luma50[0, 0] == 16 and luma50[7, 7] == 99 and chroma50[0, 0] == 17
    luma100, _ = jpeg_quant_tables(100)
    assert torch.equal(luma100, torch.ones(8, 8, dtype=torch.float64))
    luma10, _ = jpeg_quant_tables(10)  # s = 500: floor((16*500 + 50)/100) = 80
    assert luma10[0, 0] == 80 and luma10[6, 5] == 255  # 121*5 clipped to 255 (baseline)
    luma75, _ = jpeg_quant_tables(75)  # s = 50: floor((16*50+50)/100) = 8
    assert luma75[0, 0] == 8
    with pytest.raises(ValueError, match="quality"):
        jpeg_quant_tables(0)


def _pillow_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in x:
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=2)
        buf.seek(0)
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def test_jpeg_agrees_with_pillow_and_orders_by_quality() -> None:
    x = smooth_images(2, 72, 88, seed=17)  # not a multiple of 16: exercises padding and cropping
    distortions = []
    for q in (10, 25, 50, 90):
        ours = jpeg(x, q)
        assert ours.shape == x.shape
        ref = _pillow_jpeg(x, q)
        assert psnr(ours, ref) > 35.0, (q, psnr(ours, ref))
        # our distortion tracks libjpeg's
        assert abs(psnr(ours, x) - psnr(ref, x)) < 1.0
        distortions.append(psnr(ours, x))
    assert distortions == sorted(distortions) and distortions[-1] - distortions[0] > 5.0
    # 4:4:4 keeps more chroma detail than 4:2:0 at the same quality
    assert psnr(jpeg(x, 90, subsampling=False), x) > psnr(jpeg(x, 90), x)


def test_jpeg_module_and_errors() -> None:
    x = smooth_images(1, 32, 32, seed=18)
    torch.testing.assert_close(JPEG(50)(x), jpeg(x, 50))
    with pytest.raises(ValueError, match="RGB"):
        jpeg(torch.rand(1, 1, 16, 16), 75)
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality=101)


# ----------------------------------------------------------------------------- registry and configs
def test_registry_names_and_build() -> None:
    assert {"none", "fr", "jpeg", "bit_depth", "median", "gaussian"} <= set(DEFENSES.names())
    assert isinstance(build_defense("fr", gd=80), FrequencyRefinement) and build_defense("fr", gd=80).gd == 80
    assert build_defense({"name": "jpeg", "quality": 50}).quality == 50
    assert build_defense(FrequencyRefinement.Config(pd=10)).pd == 10
    with pytest.raises(UnknownNameError, match="median"):
        build_defense("medain")
    with pytest.raises(TypeError, match="quality"):
        build_defense({"name": "fr", "quality": 50})


# The pure transform behind each module: the module's defaults must be the function's (one default per parameter).
PURE_FUNCTIONS = {"fr": frequency_refinement, "jpeg": jpeg, "bit_depth": bit_depth_reduction, "median": median_filter,
                  "gaussian": gaussian_blur}


@pytest.mark.parametrize("name", sorted(DEFENSES.names()))
def test_one_default_per_defense_parameter(name: str) -> None:
    """Function defaults == module defaults == Config defaults == what `defense=<name>` composes; the yaml holds only
    deviations (the attacker's eot_samples for randomised defenses)."""
    from omegaconf import OmegaConf

    from lightning_seg.config import compose

    path = CONF_DIR / f"{name}.yaml"
    assert path.exists(), f"missing {path}"
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    attacker = {k: loaded.pop(k) for k in ATTACKER_KEYS if k in loaded}  # the attacker's settings, not the transform's
    assert set(attacker) <= {"eot_samples"} and (not attacker or DEFENSES.get(name).randomized)
    cls = DEFENSES.get(name)
    config = dataclasses.asdict(cls.Config())
    assert set(loaded) <= set(config), f"conf/defense/{name}.yaml has keys the defense does not take"
    init = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"
            and p.default is not inspect.Parameter.empty}
    assert {k: v for k, v in config.items() if k != "name"} == init
    if name in PURE_FUNCTIONS:
        fn = inspect.signature(PURE_FUNCTIONS[name]).parameters
        assert {k: fn[k].default for k in init} == init, f"{name}: module and function defaults differ"
    composed = {k: v for k, v in OmegaConf.to_container(compose([f"defense={name}"]).defense).items()
                if k in config}
    assert composed == {**config, **loaded}
    assert isinstance(build_defense(OmegaConf.merge(OmegaConf.structured(cls.Config), loaded)), cls)
