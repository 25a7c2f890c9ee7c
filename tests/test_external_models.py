"""Networks of other libraries and user callables behind the project's model contract (lightning_seg.models.external):
``model.name=monai.<Class>``, ``model.name=smp.<Arch>``, ``model.target=package.module:callable``, their arguments
under ``model.params``; [0,1] images in, normalisation inside, [B, K, H, W] logits out."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.cli import main
from lightning_seg.config import ConfigError, compose, config_groups, defense_section, to_plain
from lightning_seg.defenses import DefendedModel
from lightning_seg.models import ExternalModel, build_model
from lightning_seg.training.checkpoint import CheckpointError, load_module, load_weights, safe_load
from lightning_seg.training.module import SegmentationModule

pytest.importorskip("monai", reason="MONAI is part of the dev install (pip install -e '.[dev]')")

HELPERS = "tests.helpers.external_nets"
TINY_UNET = {"model.name": "monai.UNet", "model.params.channels": "[4,8,16]", "model.params.strides": "[2,2]"}


def _smp_import_problem() -> str | None:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - not installed, or its torchvision does not match this torch
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


SMP_PROBLEM = _smp_import_problem()
needs_smp = pytest.mark.skipif(
    SMP_PROBLEM is not None,
    reason=f"segmentation_models_pytorch does not import here ({SMP_PROBLEM}): it is the optional extra "
           "pip install 'lightning_seg[smp]', outside the dev install, because it needs a torchvision built for this torch")


def _overrides(size: int = 32, **extra: object) -> list[str]:
    values: dict[str, object] = {"data.image_size": size, "data.num_train": 8, "data.num_val": 4, "data.num_test": 4,
                                 "logger": "none"}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _module(size: int = 32, **extra: object) -> SegmentationModule:
    cfg = compose(_overrides(size, **extra))
    return SegmentationModule(model=to_plain(cfg.model), task=cfg.data.task)


def _inner_io(module: SegmentationModule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(what the wrapped network received, what it returned, the module's logits) for images ``x``."""
    seen: dict[str, torch.Tensor] = {}
    net = module.net.net
    handles = [net.register_forward_pre_hook(lambda m, args: seen.update(input=args[0])),
               net.register_forward_hook(lambda m, args, out: seen.update(output=out))]
    try:
        logits = module(x)
    finally:
        for h in handles:
            h.remove()
    return seen["input"], seen["output"], logits


MONAI_NETS = [
    ("monai.UNet", {"channels": "[4,8,16]", "strides": "[2,2]"}, 32, "isic"),
    ("monai.AttentionUnet", {"channels": "[4,8,16]", "strides": "[2,2]"}, 32, "glaucoma"),
    ("monai.SegResNet", {"init_filters": 4, "norm": "batch"}, 32, "isic"),
    ("monai.BasicUNet", {"features": "[4,4,8,8,16,4]"}, 32, "glaucoma"),  # 3-D by default: spatial_dims=2 filled in
    pytest.param("monai.SwinUNETR", {"feature_size": 12, "depths": "[1,1,1,1]", "num_heads": "[1,1,1,1]", "window_size": 4},
                 64, "isic", marks=pytest.mark.slow),  # the transformer: seconds on CPU even this small
]


@pytest.mark.parametrize(("name", "params", "size", "data"), MONAI_NETS,
                         ids=["monai.UNet", "monai.AttentionUnet", "monai.SegResNet", "monai.BasicUNet", "monai.SwinUNETR"])
def test_monai_networks_follow_the_contract(name: str, params: dict, size: int, data: str) -> None:
    module = _module(size, data=data, **{"model.name": name, **{f"model.params.{k}": v for k, v in params.items()}})
    k = module.task.num_classes
    assert isinstance(module.net, ExternalModel) and module.net.label == name
    x = torch.rand(2, 3, size, size, requires_grad=True)
    seen, _, logits = _inner_io(module, x)
    assert logits.shape == (2, k, size, size)
    # normalisation inside the model: the network sees (x - mean) / std of the [0, 1] images
    torch.testing.assert_close(seen, (x - 0.5) / 0.25)
    (grad,) = torch.autograd.grad(logits.sum(), x)
    assert grad.abs().sum() > 0
    loss = module.criterion(logits, torch.randint(0, k, (2, size, size)))
    assert torch.isfinite(loss)


def test_preset_and_its_stored_config() -> None:
    cfg = compose(_overrides(32, model="monai_unet"))
    assert cfg.model.name == "monai.UNet" and dict(cfg.model.params)["strides"] == [2, 2, 2]
    module = SegmentationModule(model=to_plain(cfg.model), task="lesion")
    assert module(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    assert module.hparams["model"]["params"] == {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}


def test_every_shipped_model_choice_composes() -> None:
    for choice in config_groups()["model"]:
        if choice.startswith("smp") and SMP_PROBLEM is not None:
            continue
        compose(_overrides(64, model=choice))


def test_user_callable_by_target() -> None:
    module = _module(data="glaucoma", **{"model.target": f"{HELPERS}:TinyNet"})
    assert module.net.net.body[-1].out_channels == 3  # num_classes filled in from the task (disc_cup)
    assert module(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    factory = _module(**{"model.target": f"{HELPERS}.make_tiny", "model.params.width": 2})  # dotted form, classes=K
    assert factory(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    for out in ("dict", "tuple"):  # torchvision's {"out": ...}; an auxiliary head after the logits
        wrapped = _module(**{"model.target": f"{HELPERS}:TinyNet", "model.params.out": out})
        assert wrapped(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("overrides", [
    {**TINY_UNET, "model.params.out_channels": 1},
    {"model.target": f"{HELPERS}:TinyNet", "model.params.num_classes": 1},
], ids=["monai", "target"])
def test_single_logit_head_becomes_two_class_logits(overrides: dict) -> None:
    module = _module(**overrides).eval()
    x = torch.rand(2, 3, 32, 32)
    _, z, logits = _inner_io(module, x)
    assert z.shape == (2, 1, 32, 32) and logits.shape == (2, 2, 32, 32)
    assert torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0]))
    torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(z[:, 0]))
    assert torch.equal(logits.argmax(1), (z[:, 0] > 0).long())
    labels = torch.randint(0, 2, (2, 32, 32))  # the cross-entropy of [0, z] is the BCE of z
    torch.testing.assert_close(F.cross_entropy(logits, labels), F.binary_cross_entropy_with_logits(z[:, 0], labels.float()))


def test_smaller_outputs_are_resized_or_cropped_as_the_network_says() -> None:
    strided = _module(**{"model.target": f"{HELPERS}:TinyNet", "model.params.stride": 2}).eval()
    x = torch.rand(2, 3, 32, 32)
    _, z, logits = _inner_io(strided, x)
    assert z.shape[-2:] == (16, 16) and logits.shape == (2, 2, 32, 32)
    torch.testing.assert_close(logits, F.interpolate(z, size=(32, 32), mode="bilinear", align_corners=False))
    assert strided.crop_labels(x, torch.zeros(2, 32, 32)).shape == (2, 32, 32)
    valid = _module(**{"model.target": f"{HELPERS}:ValidNet"})  # defines output_size: kept, labels cropped
    assert valid(x).shape == (2, 2, 24, 24)
    assert valid.crop_labels(x, torch.zeros(2, 32, 32)).shape == (2, 24, 24)


ERRORS = [
    ({"model.name": "monai.Unett"}, ["model.name=monai.Unett: MONAI has no network 'Unett'. Did you mean:", "'UNETR'"]),
    ({"model.name": "untt"}, ["model.name='untt'", "Did you mean: 'unet'", "model.name=monai.<Class>"]),
    ({"model.name": "monai.UNet"}, ["monai.UNet needs model.params.channels, model.params.strides (no default)"]),
    ({**TINY_UNET, "model.params.chanels": "[4,8]"},
     ["model.params.chanels: monai.UNet has no parameter 'chanels'. Did you mean: 'channels'"]),
    ({**TINY_UNET, "model.params.norm": "batchy"}, ["model.params.norm='batchy' is not valid for monai.UNet (ValueError"]),
    ({**TINY_UNET, "model.params.strides": "[2]"}, ["do not build monai.UNet", "strides"]),
    ({**TINY_UNET, "model.params.spatial_dims": 3}, ["model.params.spatial_dims=3 is not valid: the images are 2-D"]),
    ({**TINY_UNET, "model.params.out_channels": 3}, ["monai.UNet returns 3 channels but the task (data.task) has 2"]),
    ({**TINY_UNET, "model.width": 8}, ["model.width=8 is a setting of the built-in U-Net"]),
    ({"model.params.channels": "[4,8]"}, ["model.params is for monai./smp./model.target networks"]),
    ({"model.name": "monai.SegResNet", "model.params.init_filters": 4, "model.params.norm": "batch", "data.image_size": 60},
     ["monai.SegResNet does not run on 60x60 images (data.image_size=60)", "It runs on data.image_size=64"]),
    ({"model.name": "monai.BasicUNet", "model.params.features": "[4,4,8,8,16,4]", "data.image_size": 16},  # InstanceNorm
     ["monai.BasicUNet does not run on 16x16 images", "It runs on data.image_size=32"]),  # of 1x1 maps in training
    ({"model.target": "no_such_package.nets:Net"}, ["model.target=no_such_package.nets:Net: cannot import no_such_package"]),
    ({"model.target": f"{HELPERS}:TinyNett"}, [f"model.target={HELPERS}:TinyNett", "Did you mean: 'TinyNet'"]),
    ({"model.target": f"{HELPERS}:NOT_CALLABLE"}, ["is a int, not a callable"]),
    ({"model.target": f"{HELPERS}:not_a_module"}, ["returned a str, not a torch.nn.Module"]),
    ({"model.target": "nets"}, ["model.target='nets' is not valid: use package.module:callable"]),
    ({**TINY_UNET, "model.target": f"{HELPERS}:TinyNet"}, ["both choose the network: drop one"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), ERRORS, ids=[" ".join(f"{k}={v}" for k, v in o.items()) for o, _ in ERRORS])
def test_bad_model_sections_fail_at_compose_time_in_one_line(overrides: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        compose(_overrides(**overrides))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(("name", "modules", "line"), [
    ("monai.UNet", ("monai", "monai.networks.nets"), "model.name=monai.UNet needs MONAI: pip install 'lightning_seg[monai]'"),
    ("smp.Unet", ("segmentation_models_pytorch",),
     "model.name=smp.Unet needs segmentation_models_pytorch: pip install 'lightning_seg[smp]'"),
])
def test_a_missing_extra_names_the_install_command(name: str, modules: tuple[str, ...], line: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for module in modules:  # None in sys.modules: `import` raises ModuleNotFoundError, as for a package not installed
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "runs"
    assert main(["fit", *_overrides(**{"model.name": name}), f"run.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {line}"], err
    assert not out.exists()


class _StandInUnet(torch.nn.Module):
    """segmentation_models_pytorch 0.6's ``Unet`` signature (its first arguments), recording what it was given."""

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights: str | None = "imagenet",
                 in_channels: int = 3, classes: int = 1, activation: str | None = None, aux_params: dict | None = None,
                 **kwargs: object) -> None:
        super().__init__()
        self.given = {"encoder_name": encoder_name, "encoder_weights": encoder_weights, "in_channels": in_channels,
                      "classes": classes}
        self.head = torch.nn.Conv2d(in_channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_smp_arguments_with_a_stand_in_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The smp wiring without smp: encoder_weights=None (nothing downloads) unless set, classes = the task's."""
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", types.SimpleNamespace(Unet=_StandInUnet))
    module = _module(data="glaucoma", **{"model.name": "smp.Unet"})
    assert module.net.net.given == {"encoder_name": "resnet34", "encoder_weights": None, "in_channels": 3, "classes": 3}
    assert module(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    asked = _module(**{"model.name": "smp.Unet", "model.params.encoder_weights": "imagenet"})
    assert asked.net.net.given["encoder_weights"] == "imagenet"  # the user's choice is kept
    with pytest.raises(ConfigError, match=r"model.params.activation='sigmoid' is not valid: the project needs logits"):
        compose(_overrides(**{"model.name": "smp.Unet", "model.params.activation": "sigmoid"}))
    with pytest.raises(ConfigError, match=r"model.name=smp.UNet: segmentation_models_pytorch has no network 'UNet'\. "
                                          r"Did you mean: 'Unet'"):
        compose(_overrides(**{"model.name": "smp.UNet"}))


@needs_smp
def test_smp_architecture_builds_without_downloading(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch as smp

    def no_download(*args, **kwargs):
        raise AssertionError("encoder weights were downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    module = _module(**{"model.name": "smp.Unet", "model.params.encoder_name": "resnet18", "model.params.encoder_depth": 3,
                        "model.params.decoder_channels": "[16,8,4]"})
    assert isinstance(module.net.net, smp.Unet)
    assert module(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)


def test_fit_a_monai_network_then_reload_its_checkpoint_safely(tmp_path: Path) -> None:
    from lightning_seg.commands.fit import fit

    start = time.perf_counter()
    overrides = _overrides(32, **TINY_UNET, **{"model.params.norm": "batch", "trainer.max_epochs": 1, "data.batch_size": 4,
                                               "data.eval_batch_size": 4, "trainer.enable_progress_bar": "false",
                                               "run.output_dir": tmp_path / "runs"})
    result = fit(compose(overrides))
    ckpt_path = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain containers only
    assert raw["hyper_parameters"]["model"]["name"] == "monai.UNet"
    module = load_module(str(ckpt_path))  # rebuilds the same network from the stored model config
    assert isinstance(module.net, ExternalModel) and module.net.label == "monai.UNet"
    for key, value in module.state_dict().items():
        if key in raw["state_dict"]:
            assert torch.equal(value, raw["state_dict"][key]), key
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module(x), load_module(str(ckpt_path))(x))
    defended = load_module(str(ckpt_path), defense=defense_section("jpeg"))  # the weights behind a defense
    assert isinstance(defended.net, DefendedModel) and defended(x).shape == (2, 2, 32, 32)
    unet = SegmentationModule(model={"name": "unet", "width": 4, "depth": 2}, task="lesion")
    with pytest.raises(CheckpointError) as info:  # another architecture: one line naming both model configs
        load_weights(unet, safe_load(ckpt_path), ckpt_path)
    line = str(info.value)
    assert "'name': 'monai.UNet'" in line and "'width': 4" in line and "\n" not in line, line
    print(f"fit + reload: {time.perf_counter() - start:.1f} s")


def test_build_model_keeps_the_unet_path_and_old_hyper_parameters() -> None:
    # a checkpoint written before model.params / model.target existed stores neither key
    old = {"name": "unet", "width": 4, "depth": 2, "padding": "same", "norm": "batch", "upsample": "transpose",
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert SegmentationModule(model=old, task="lesion")(torch.rand(1, 3, 16, 16)).shape == (1, 2, 16, 16)
    net = build_model("monai.UNet", num_classes=3, params={"channels": [4, 8], "strides": [2]}, width=16)
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)  # width at its default: accepted, unused
