"""Segmentation models: the project's own behind a name-to-builder registry (``model.name=unet``), and any network of
MONAI (``model.name=monai.<Class>``), segmentation_models_pytorch (``model.name=smp.<Arch>``) or a user callable
(``model.target=package.module:callable``) with its arguments under ``model.params``, put behind the same contract
(:mod:`lightning_seg.models.external`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_seg.config import ModelConfig
from lightning_seg.models.external import ExternalModel, ModelConfigError, build_external, library_of, probe
from lightning_seg.models.normalize import Normalize
from lightning_seg.models.unet import UNet, center_crop
from lightning_seg.registry import Registry, UnknownNameError

MODELS: Registry[nn.Module] = Registry("model")

_DEFAULT = ModelConfig()
UNET_KEYS = ("width", "depth", "padding", "norm", "upsample")  # the built-in U-Net's own settings
OTHER_NETWORKS = ("Other networks: model.name=monai.<Class> (MONAI), model.name=smp.<Arch> "
                  "(segmentation_models_pytorch), model.target=package.module:callable.")


@MODELS.register("unet")
def _build_unet(**kwargs: Any) -> nn.Module:
    return UNet(**kwargs)


def is_external(name: str | None, target: str | None = None) -> bool:
    """Whether a model section names a network of another library or a user callable."""
    return bool(target) or library_of(name) is not None


def build_model(name: str = "unet", *, target: str | None = None, params: dict[str, Any] | None = None,
                **kwargs: Any) -> nn.Module:
    """The network of a model section (``build_model(**model_config, num_classes=K)``): a registered model by
    ``name``, or (``monai.<Class>``, ``smp.<Arch>``, ``target``) a network built with ``params`` behind
    :class:`ExternalModel`. Unknown names fail with the closest registered ones."""
    if is_external(name, target):
        unet = {k: kwargs[k] for k in UNET_KEYS if k in kwargs and kwargs[k] != getattr(_DEFAULT, k)}
        if unet:
            key, value = next(iter(unet.items()))
            raise ModelConfigError(f"model.{key}={value} is a setting of the built-in U-Net (model.name=unet); "
                                   f"{target or name} takes its own arguments under model.params")
        return build_external(name, target, dict(params or {}), kwargs.get("num_classes", 2),
                              kwargs.get("mean", _DEFAULT.mean), kwargs.get("std", _DEFAULT.std))
    _check_own(name, params)
    return MODELS.build(name, **kwargs)


def _check_own(name: str, params: dict[str, Any] | None) -> None:
    """A registered (own) model: a known name, and no model.params (its settings are typed keys)."""
    try:
        MODELS.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e} {OTHER_NETWORKS}") from None
    if params:
        raise ModelConfigError(f"model.params is for monai./smp./model.target networks; the built-in model {name!r} is "
                               f"set with model.{', model.'.join(UNET_KEYS)}")


def check_model_config(model: dict[str, Any], num_classes: int, image_size: int) -> None:
    """Compose-time check of a model section: the name, and for another library's network or a user callable its
    install, class, arguments (against its signature) and one forward pass of a blank image of the data's size (CPU,
    no gradients). Raises a ValueError / UnknownNameError whose message is one line naming the key."""
    model = dict(model)
    name = model.pop("name", "unet")
    if not is_external(name, model.get("target")):
        try:
            _check_own(name, model.get("params"))
        except UnknownNameError as e:
            raise ModelConfigError(f"model.name={name!r}: {e}") from None
        return  # the U-Net's keys are checked by the config's value rules; it is not built here
    probe(build_model(name, num_classes=num_classes, **model), image_size)


def describe_model(model: dict[str, Any] | None) -> dict[str, Any] | None:
    """The keys of a model section that make its architecture (for messages): the U-Net's settings, or the network,
    its params and the normalisation."""
    if not model:
        return model
    if is_external(model.get("name"), model.get("target")):
        keys = ("target",) if model.get("target") else ("name",)
        return {k: model[k] for k in (*keys, "params", "mean", "std") if k in model}
    return {k: v for k, v in model.items() if k not in ("params", "target")}


__all__ = ["MODELS", "ExternalModel", "ModelConfigError", "Normalize", "UNet", "build_model", "center_crop",
           "check_model_config", "describe_model", "is_external"]
