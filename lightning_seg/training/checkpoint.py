"""Checkpoints: the run config stored inside them, and safe loading.

Every checkpoint the project reads goes through :func:`safe_load`: ``torch.load(..., weights_only=True)`` passed
explicitly, so that torch's restricted unpickler refuses any object other than tensors and plain containers, whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (torch lets that variable override only a call that does not set
``weights_only``). A file that is not a checkpoint of this project, or that holds anything else, is refused with one
line (:class:`CheckpointError`, exit 2 on the command line) before Lightning or the model sees it. Weights trained
elsewhere (state dicts, safetensors, TorchScript) are read by :mod:`lightning_seg.training.weights`, through
:func:`torch_load` for torch.save files.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_seg.config import ConfigError
from lightning_seg.models import describe_model
from lightning_seg.training.module import SegmentationModule

CONFIG_KEY = "lightning_seg_config"


class StoreConfig(Callback):
    """Puts the resolved run config into every checkpoint (plain containers: weights_only-safe)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: not this project's, unsafe, corrupt, or of another architecture."""


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The contents of a ``fit`` checkpoint, loaded without executing code; :class:`CheckpointError` otherwise."""
    ckpt = torch_load(path, map_location)
    if not is_own_checkpoint(ckpt):
        lightning = isinstance(ckpt, dict) and "state_dict" in ckpt and "hyper_parameters" in ckpt
        found = "a Lightning checkpoint of another project" if lightning else "no state_dict / hyper_parameters"
        raise CheckpointError(f"not a lightning_seg checkpoint: {path} ({found}: a checkpoint written by `python -m "
                              f"lightning_seg fit` is expected; weights trained elsewhere: run.weights=<file> for "
                              f"validate/test/attack, run.init_from=<file> for fit/adv-train, with the model on the "
                              f"command line)")
    return ckpt


def is_own_checkpoint(ckpt: Any) -> bool:
    """Whether a loaded object is a checkpoint of this project (a SegmentationModule's: its model and task hparams)."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return False
    hparams = ckpt.get("hyper_parameters")
    return isinstance(hparams, dict) and "model" in hparams and "task" in hparams


def torch_load(path: str | Path, map_location: str | torch.device = "cpu", *, what: str = "lightning_seg checkpoint",
               hint: str | None = None, legacy: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as one :class:`CheckpointError` line: ``not a
    <what>: ...`` for files that are not (whole) torch.save archives, ``refused: ...`` (plus ``hint``) for pickled
    objects other than tensors and plain containers. ``legacy``: also read torch.save's pre-zip format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"not a {what}: {path} (no such file)")
    if not legacy and not zipfile.is_zipfile(path):  # torch.save writes a zip archive; text, images, legacy pickles are not
        with path.open("rb") as f:
            started_as_zip = f.read(2) == b"PK"  # the archive's directory, at its end, is missing: cut short
        reason = "truncated or corrupt: incomplete archive" if started_as_zip else "not a file written by torch.save"
        raise CheckpointError(f"not a {what}: {path} ({reason})")
    try:
        # weights_only=True passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD overrides only calls that leave it out
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refused: {path} holds objects other than tensors and plain containers "
                              f"({_unpickler_reason(str(e))})" + (f"; {hint}" if hint else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if legacy:
            reason = f"truncated or corrupt: {first}"
        else:
            reason = f"truncated or corrupt: {first}" if _holds_pickle(path) else "a zip archive not written by torch.save"
        raise CheckpointError(f"not a {what}: {path} ({reason})") from None


def _holds_pickle(path: Path) -> bool:
    """Whether a zip archive has the ``<name>/data.pkl`` entry every ``torch.save`` archive holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return True  # an archive too damaged to list: report it as corrupt


def _unpickler_reason(message: str) -> str:
    """The weights-only unpickler's own reason, without torch's advice to load unsafely or allowlist the object."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    else:
        message = message.replace("Weights only load failed.", "", 1)
    first = (message.strip().splitlines() or ["unsupported content"])[0]
    return first.split(" Please use", 1)[0].strip()


def load_checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The run config stored in a checkpoint (None for checkpoints written without it)."""
    return safe_load(path).get(CONFIG_KEY)


def load_weights(module: SegmentationModule, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load the checkpoint's weights into ``module``; another architecture is one line naming both model configs."""
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        stored = describe_model(ckpt["hyper_parameters"].get("model"))
        requested = describe_model(module.hparams.get("model"))
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} holds model {stored} but the run asks for model {requested}; use the "
                              f"checkpoint's model settings ({detail})") from None


def load_module(path: str, map_location: str | torch.device = "cpu", defense: Any = "checkpoint") -> SegmentationModule:
    """Load a checkpoint written by ``fit`` safely (``weights_only=True``: no arbitrary unpickling).

    ``defense``: ``"checkpoint"`` keeps the defense the model was trained behind; a defense config section
    (plain mapping, ``None`` = bare network) puts the weights behind that defense instead."""
    ckpt = safe_load(path, map_location)
    hparams = dict(ckpt["hyper_parameters"])
    if not isinstance(defense, str):
        hparams["defense"] = defense
    module = SegmentationModule(**hparams)
    load_weights(module, ckpt, path)
    return module.eval()
