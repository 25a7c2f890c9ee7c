"""Any network behind the project's model contract: ``model.name=monai.<Class>`` (any network of
``monai.networks.nets``), ``model.name=smp.<Arch>`` (any segmentation_models_pytorch architecture) or
``model.target=package.module:callable`` (any importable callable returning an ``nn.Module``), with the network's own
arguments under ``model.params``.

:class:`ExternalModel` holds the contract every attack, defense and loss of the project relies on:

- images [B, 3, H, W] in [0, 1] go in; ``model.mean`` / ``model.std`` normalisation happens inside, before the network;
- logits [B, K, H, W] come out, K = the task's number of classes. A 1-channel (sigmoid) head z becomes the 2-class
  logits ``[0, z]``: softmax([0, z])[1] = 1 / (1 + e^-z) = sigmoid(z) and argmax = 1[z > 0], so the cross-entropy
  of the loss is the BCE of z and the argmax / gather based attacks apply unchanged;
- logits of another size than the input (networks that predict at a stride, e.g. 1/4 resolution) are resized to the
  input size, bilinearly on the logits: bilinear with ``align_corners=False`` puts output pixel centres where the
  strided network's centres are, keeps every logit differentiable for the attacks (nearest would pass the gradient to
  one input-size pixel in s*s), and interpolating logits rather than probabilities or labels is what segmentation
  heads do themselves. A network that predicts a centred sub-window instead (valid convolutions) defines
  ``output_size(height, width)`` like the built-in U-Net: its logits are kept and the labels centre-cropped.

Arguments the network takes by these names are filled in unless ``model.params`` sets them: ``spatial_dims=2``,
``in_channels=3``, ``out_channels`` / ``num_classes`` / ``classes`` = K, ``encoder_weights=None`` (smp's default,
"imagenet", downloads weights at run time; nothing downloads unless the user asks for it).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.normalize import Normalize
from lightning_seg.registry import import_target


class ModelConfigError(ValueError):
    """A model section that cannot build a network; the message is one line naming the key."""


class ModelOutputError(ValueError):
    """A network whose output breaks the contract (not [B, K, H, W] logits of the task's K classes)."""


@dataclass(frozen=True)
class Library:
    title: str  # its name in messages
    module: str  # the module holding its networks
    extra: str  # pip install 'lightning_seg[<extra>]'


LIBRARIES: dict[str, Library] = {
    "monai": Library("MONAI", "monai.networks.nets", "monai"),
    "smp": Library("segmentation_models_pytorch", "segmentation_models_pytorch", "smp"),
}

_IMAGES = {"spatial_dims": 2, "in_channels": 3}  # the data: 2-D RGB images; model.params may not change these


def _filled(num_classes: int) -> dict[str, Any]:
    """Arguments filled in when the network takes them and model.params does not set them (K = the task's classes)."""
    return {**_IMAGES, "out_channels": num_classes, "num_classes": num_classes, "classes": num_classes,
            "encoder_weights": None}


def library_of(name: str | None) -> Library | None:
    """The library a ``model.name`` such as ``monai.UNet`` names (None for the project's own models)."""
    prefix, dot, _ = str(name or "").partition(".")
    return LIBRARIES.get(prefix.lower()) if dot else None


class ExternalModel(nn.Module):
    """``net`` behind the project's contract (module docstring): Normalize inside, [0, 1] images in, [B, K, H, W]
    logits out. ``label`` names the network in messages (``monai.UNet``, ``mypkg.nets:Net``)."""

    def __init__(self, net: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float], label: str) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net  # not `model`: DefendedModel's `net.model.` key prefix must stay unambiguous
        self.num_classes = num_classes
        self.label = label

    def forward(self, x: Tensor) -> Tensor:
        z = _logits(self.net(self.normalize(x)), self.label)
        if z.dim() != 4:
            raise ModelOutputError(f"{self.label} returns logits of shape {tuple(z.shape)}: [B, K, H, W] is expected")
        if z.shape[-2:] != x.shape[-2:] and not callable(getattr(self.net, "output_size", None)):
            z = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if z.shape[1] == 1 and self.num_classes == 2:
            return torch.cat([torch.zeros_like(z), z], dim=1)  # sigmoid head: softmax([0, z])[1] = sigmoid(z)
        if z.shape[1] != self.num_classes:
            single = " or 1 (a sigmoid head)" if self.num_classes == 2 else ""
            raise ModelOutputError(f"{self.label} returns {z.shape[1]} channels but the task (data.task) has "
                                   f"{self.num_classes} classes: give the network {self.num_classes}{single} output channels")
        return z

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the logits for an input of (height, width): the input's, unless the network says otherwise."""
        inner = getattr(self.net, "output_size", None)
        return tuple(inner(height, width)) if callable(inner) else (height, width)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"label={self.label!r}, num_classes={self.num_classes}"


def _logits(out: Any, label: str) -> Tensor:
    """The logits tensor of a network's output: a tensor, the first of a tuple / list (auxiliary heads, MONAI's
    deep-supervision lists), ``out`` / ``logits`` of a mapping (torchvision), or a ``.logits`` attribute (transformers)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, Mapping):
        for key in ("out", "logits"):
            if isinstance(out.get(key), Tensor):
                return out[key]
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    raise ModelOutputError(f"{label} returns {type(out).__name__}, not a logits tensor (or a tuple / list / mapping holding one)")


def resolve(name: str | None, target: str | None) -> tuple[Callable[..., Any], str]:
    """The constructor a model section names and its label: ``model.target`` if set, else a ``monai.`` / ``smp.`` name."""
    if target:
        return _import_target(target), target
    lib = library_of(name)
    if lib is None:
        raise ModelConfigError(f"model.name={name!r} is not a monai.<Class> or smp.<Arch> network")
    _, _, cls = str(name).partition(".")
    module = _import_library(lib, str(name))
    networks = sorted(n for n, v in vars(module).items()
                      if isinstance(v, type) and issubclass(v, nn.Module) and not n.startswith("_"))
    if cls not in networks:
        raise ModelConfigError(f"model.name={name}: {lib.title} has no network {cls!r}.{_close(cls, networks)} "
                               f"(the nn.Module classes of {lib.module}; names are case-sensitive)")
    return getattr(module, cls), str(name)


def _import_library(lib: Library, name: str) -> Any:
    try:
        return importlib.import_module(lib.module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == lib.module.split(".")[0]:
            raise ModelConfigError(f"model.name={name} needs {lib.title}: pip install 'lightning_seg[{lib.extra}]'") from None
        raise ModelConfigError(f"model.name={name}: {lib.title} is installed but does not import ({_first(e)}): "
                               f"pip install 'lightning_seg[{lib.extra}]'") from None
    except Exception as e:  # noqa: BLE001 - any import failure, e.g. a torchvision built for another torch (smp)
        raise ModelConfigError(f"model.name={name}: {lib.title} is installed but does not import ({_first(e)})") from None


def _import_target(target: str) -> Callable[..., Any]:
    """The callable ``model.target`` names (``package.module:callable``)."""
    try:
        obj = import_target(target)
    except ValueError as e:
        raise ModelConfigError(f"model.target={target}: {e}") from None
    if not callable(obj):
        raise ModelConfigError(f"model.target={target} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def network_arguments(fn: Callable[..., Any], params: dict[str, Any], num_classes: int, label: str) -> dict[str, Any]:
    """``model.params`` checked against ``fn``'s signature, with the automatic arguments filled in."""
    try:
        signature = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature (some builtins): pass the params as they are
        return dict(params)
    named = {n: p for n, p in signature.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.values())
    for key, value in params.items():
        if key not in named and not takes_any:
            raise ModelConfigError(f"model.params.{key}: {label} has no parameter {key!r}.{_close(key, named)} "
                                   f"Its parameters: {', '.join(named) or 'none'}.")
        if key in _IMAGES and key in named and value != _IMAGES[key]:
            raise ModelConfigError(f"model.params.{key}={value!r} is not valid: the images are 2-D with 3 channels; "
                                   f"leave it out ({key}={_IMAGES[key]} is filled in)")
    args = {k: v for k, v in _filled(num_classes).items() if k in named and k not in params}
    args.update(params)
    missing = [n for n, p in named.items() if p.default is p.empty and n not in args]
    if missing:
        raise ModelConfigError(f"{label} needs {', '.join(f'model.params.{m}' for m in missing)} (no default): set "
                               f"{'it' if len(missing) == 1 else 'them'}, e.g. model.params.{missing[0]}=...")
    return args


def build_external(name: str | None, target: str | None, params: dict[str, Any], num_classes: int,
                   mean: Sequence[float], std: Sequence[float]) -> ExternalModel:
    """Build the network a model section names, behind :class:`ExternalModel`; one-line :class:`ModelConfigError`s."""
    if target and library_of(name):
        raise ModelConfigError(f"model.target={target} and model.name={name} both choose the network: drop one")
    if library_of(name) is LIBRARIES["smp"] and params.get("activation") is not None:
        raise ModelConfigError(f"model.params.activation={params['activation']!r} is not valid: the project needs "
                               "logits (the loss and the attacks apply softmax / sigmoid); leave it out")
    fn, label = resolve(name, target)
    args = network_arguments(fn, params, num_classes, label)
    try:
        net = fn(**args)
    except Exception as e:  # noqa: BLE001 - the network's own check of its arguments, whatever it raises
        raise ModelConfigError(_blame(e, params, label)) from None
    if not isinstance(net, nn.Module):
        raise ModelConfigError(f"{label} returned a {type(net).__name__}, not a torch.nn.Module")
    return ExternalModel(net, num_classes, mean, std, label)


def _blame(error: Exception, params: dict[str, Any], label: str) -> str:
    """One line for a network that rejected its arguments, naming the model.params key its message mentions."""
    text = str(error).lower()

    def mentioned(key: str, value: Any) -> bool:  # by its name, or by its value when that is a word ('batchy')
        words = [key, value] if isinstance(value, str) else [key]
        return any(re.search(rf"\b{re.escape(w.lower())}\b", text) for w in words)

    reason, keys = _first(error), [k for k, v in params.items() if mentioned(k, v)]
    if len(keys) == 1:
        return f"model.params.{keys[0]}={params[keys[0]]!r} is not valid for {label} ({reason})"
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "none"
    return f"model.params ({shown}) do not build {label} ({reason})"


def probe(model: nn.Module, size: int) -> None:
    """One training-mode forward pass of two blank ``size`` x ``size`` images (no gradients; the network is thrown
    away after), so that a network that does not take the data's size (also InstanceNorm / BatchNorm statistics over
    too few values in training) or returns something else than the task's logits fails in one line before any run."""
    label = getattr(model, "label", type(model).__name__)
    try:
        _forward(model, size)
    except ModelOutputError as e:
        raise ModelConfigError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a size the network cannot take fails in many ways
        fits = next((s for s in _sizes_to_try(size) if _runs(model, s)), None)
        if fits is None:
            raise ModelConfigError(f"{label} fails on blank {size}x{size} images (data.image_size={size}): {_first(e)}") from None
        raise ModelConfigError(f"{label} does not run on {size}x{size} images (data.image_size={size}): {_first(e)}. It "
                               f"runs on data.image_size={fits} (a network that downsamples k times needs sizes "
                               "divisible by 2**k)") from None


def _forward(model: nn.Module, size: int) -> Tensor:
    model.train()
    with torch.no_grad():
        return model(torch.zeros(2, 3, size, size))


def _runs(model: nn.Module, size: int) -> bool:
    try:
        _forward(model, size)
        return True
    except Exception:  # noqa: BLE001 - as in probe
        return False


def _sizes_to_try(size: int) -> list[int]:
    """The next multiples of 8 ... 64 above ``size``."""
    return sorted({math.ceil(size / m) * m for m in (8, 16, 32, 64)} - {size})


def _close(word: str, names: Any) -> str:
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(word.lower(), list(lower), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(repr(lower[c]) for c in close)}?" if close else ""


def _first(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0].strip().rstrip('.')}" if lines else type(e).__name__
