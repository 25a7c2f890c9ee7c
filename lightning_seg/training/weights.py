"""Weights trained elsewhere (``run.weights=...`` of validate / test / attack, ``run.init_from=...`` of fit /
adv-train): a file of tensors for the network that the config's ``model`` section describes, read without executing
anything the file holds.

Formats, told apart by their content (not the file name):

- a ``torch.save`` file (zip or legacy) holding a state dict, or one under ``"state_dict"`` (a Lightning checkpoint of
  another project), ``"model_state_dict"`` or ``"model"``: read with ``torch.load(..., weights_only=True)`` passed
  explicitly, so that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn the restricted unpickler off; a pickled object
  other than tensors and plain containers (a whole pickled model, a payload) is refused in one line;
- a ``.safetensors`` file (the safetensors package: a JSON header and raw tensor bytes, no code by design);
- a TorchScript archive (``torch.jit.save``): **not** loaded with ``torch.jit.load``, which runs the archive's
  TorchScript program (``__setstate__`` methods at load time) and whose C++ deserialiser PyTorch supports for trusted
  files only (PyTorch's SECURITY.md: treat TorchScript models like locally executable code from an unknown source).
  Instead the archive's ``data.pkl`` (the modules' attributes) is read by :class:`_TorchScriptUnpickler`, a Python
  unpickler whose only globals are stand-ins for the archive's ``__torch__`` classes (plain attribute holders, none of
  the file's code is imported or run) and tensor / list rebuilders of this module; the tensor bytes come from the
  archive's ``data/<n>`` records. Of the ``code/`` folder only the ``__parameters__`` / ``__buffers__`` declarations
  are read, as text, to tell parameters and buffers from other tensor attributes.

Keys: the file's keys are matched to the state dict of the configured network *inside* the project's module (behind a
defense, and for ``monai.`` / ``smp.`` / ``model.target`` networks inside :class:`~lightning_seg.models.ExternalModel`,
whose Normalize comes from ``model.mean`` / ``model.std``). The keys are read under one prefix: the exact keys if they
hold every key of the network, else the shortest dotted prefix (``model.``, ``net.``, ``module.``, ...) under which they
do, keys outside it (a loss's weights, an EMA copy of another project's module) being ignored; ``run.weights_prefix``
sets the prefix instead (``""``: the exact keys). Under the prefix every key of the network must be there with its
shape and no other key may be: otherwise one line lists the first missing, unexpected and mismatched keys and their
counts. The built-in U-Net holds its normalisation in its state dict (``normalize.mean`` / ``normalize.std``); a file
that holds other values than ``model.mean`` / ``model.std`` is refused (the config is the record of the normalisation).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.models import ExternalModel, Normalize, describe_model
from lightning_seg.training.checkpoint import CheckpointError, is_own_checkpoint, load_weights, torch_load
from lightning_seg.training.module import SegmentationModule

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # where a saved dict may hold the state dict
SHOWN = 3  # keys listed per kind of mismatch

# torch.save's legacy (non-zip) format: a pickle starting with protocol 2 and torch's magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "build_floatlist")
_MAX_CODE_BYTES = 16 << 20  # a declaration file larger than this is not read (the keys then count every tensor)


def load_foreign_weights(module: SegmentationModule, path: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Load a weights file (module docstring) into the configured network of ``module``; returns what the run records:
    path, sha256, format, the prefix read and the number of tensors. A lightning_seg checkpoint is refused (it is
    evaluated with ``run.ckpt``, with its own model and data); other problems are one-line :class:`CheckpointError`s."""
    path = Path(path)
    fmt, content = read_weights(path)
    if fmt == "torch.save" and is_own_checkpoint(content):
        raise CheckpointError(f"{path} is a lightning_seg checkpoint: evaluate it with run.ckpt={path} (its own model "
                              "and data); run.weights is for weights trained elsewhere")
    return _apply(module, path, fmt, content, prefix)


def load_initial_weights(module: SegmentationModule, path: str | Path, prefix: str | None = None) -> dict[str, Any] | None:
    """``run.init_from``: a lightning_seg checkpoint (its whole module's weights, same architecture) or weights trained
    elsewhere (:func:`load_foreign_weights`; returns their record, None for a lightning_seg checkpoint)."""
    path = Path(path)
    fmt, content = read_weights(path)
    if fmt == "torch.save" and is_own_checkpoint(content):
        load_weights(module, content, path)
        return None
    return _apply(module, path, fmt, content, prefix)


def module_from_weights(cfg: Any) -> tuple[SegmentationModule, dict[str, Any]]:
    """The module that the config describes (model, task, defense, loss) with the weights of ``run.weights``."""
    from lightning_seg.training.trainer import build_module  # lazy: the trainer module imports the datamodules

    module = build_module(cfg)
    record = load_foreign_weights(module, cfg.run.weights, cfg.run.weights_prefix)
    return module.eval(), record


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------- reading


def read_weights(path: Path) -> tuple[str, Any]:
    """``(format, content)``: ``("torch.save", <the loaded object>)``, ``("safetensors", {key: tensor})`` or
    ``("torchscript", {key: tensor})``; one-line :class:`CheckpointError` for anything else."""
    if not path.is_file():
        raise CheckpointError(f"not a weights file: {path} (no such file)")
    with path.open("rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            root = _torchscript_root(archive)
            if root is not None:
                return "torchscript", _read_torchscript(path, archive, root)
        return "torch.save", torch_load(path, what="weights file", hint=_PICKLED_MODEL_HINT)
    if head.startswith(_LEGACY_MAGIC):
        return "torch.save", torch_load(path, what="weights file", hint=_PICKLED_MODEL_HINT, legacy=True)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors", _read_safetensors(path)
    reason = "truncated or corrupt: incomplete archive" if head[:2] == b"PK" else (
        "neither a torch.save file, a safetensors file nor a TorchScript archive")
    raise CheckpointError(f"not a weights file: {path} ({reason})")


_PICKLED_MODEL_HINT = ("a pickled model or object is not read: if you trust its source, save its state_dict() with plain "
                       "PyTorch where it loads and pass that file")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors' own error type (SafetensorError) and I/O errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"not a weights file: {path} (truncated or corrupt safetensors file: {first})") from None


def _torchscript_root(archive: zipfile.ZipFile) -> str | None:
    """The top folder of a TorchScript archive (it holds ``code/`` and ``constants.pkl``; torch.save's does not)."""
    names = archive.namelist()
    roots = {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    for root in sorted(roots):
        if any(n.startswith(f"{root}/code/") for n in names) or f"{root}/constants.pkl" in names:
            return root
    return None


class _ScriptObject:
    """Stand-in for an object of one of the archive's TorchScript classes: it only keeps the attributes it was given."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_lightning_seg_state", state)


class _Storage:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl`` with a closed set of globals (module docstring): nothing of the file
    is imported, called or run. Each load makes its own stand-in classes and rebuild functions."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.path = archive, root, path
        self.classes: dict[str, type] = {}  # qualified TorchScript class name -> stand-in class
        self.names: dict[type, str] = {}
        self.storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                cls = type("ScriptObject", (_ScriptObject,), {})
                self.classes[qualified], self.names[cls] = cls, qualified
            return self.classes[qualified]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor_function()
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return lambda values: values
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, type_tag: value
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} in a TorchScript archive")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)
                and isinstance(pid[2], str) and re.fullmatch(r"[0-9A-Za-z_]+", pid[2]) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError("a storage record of an unknown form")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in self.storages:
            nbytes = numel * torch.empty(0, dtype=kind.dtype).element_size()
            try:
                info = self.archive.getinfo(f"{self.root}/data/{key}")
            except KeyError:
                raise ValueError(f"no record data/{key}") from None
            if info.file_size != nbytes:
                raise ValueError(f"record data/{key} holds {info.file_size} bytes, {nbytes} expected")
            raw = bytearray(self.archive.read(info))
            self.storages[key] = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage(0)
        return (self.storages[key], kind.dtype)

    @staticmethod
    def _rebuild_tensor_function() -> Any:
        def rebuild(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Tensor:
            ints = (isinstance(offset, int) and all(isinstance(v, int) for v in (*size, *stride))
                    if isinstance(size, tuple) and isinstance(stride, tuple) else False)
            if not (isinstance(storage, tuple) and len(storage) == 2 and ints and len(size) == len(stride)):
                raise pickle.UnpicklingError("a tensor record of an unknown form")
            untyped, dtype = storage
            return torch.empty(0, dtype=dtype).set_(untyped, offset, size, stride)  # bounds checked by torch

        return rebuild


def _read_torchscript(path: Path, archive: zipfile.ZipFile, root: str) -> dict[str, Tensor]:
    """The parameters and buffers of a TorchScript archive by their state-dict keys, read without running it."""
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).decode(errors="replace").strip() != sys.byteorder:
        raise CheckpointError(f"not a weights file: {path} (a TorchScript archive of another byte order)")
    unpickler = _TorchScriptUnpickler(archive.read(f"{root}/data.pkl"), archive, root, path)
    try:
        top = unpickler.load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refused: {path} holds objects other than tensors and plain containers ({e}); "
                              "nothing of it was run") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive fails in many ways; nothing of it runs either way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"not a weights file: {path} (truncated or corrupt TorchScript archive: {first})") from None
    declared = _declared_tensors(archive, root)
    out: dict[str, Tensor] = {}
    _collect(top, "", out, declared, unpickler.names, set())
    return out


def _collect(obj: Any, prefix: str, out: dict[str, Tensor], declared: dict[str, set[str]], names: dict[type, str],
             seen: set[int]) -> None:
    if not isinstance(obj, _ScriptObject) or id(obj) in seen:
        return
    seen.add(id(obj))
    state = vars(obj).get("_lightning_seg_state")
    if not isinstance(state, dict):  # a class with its own __getstate__: no attributes to read
        return
    kept = declared.get(names.get(type(obj), ""))
    for name, value in state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, declared, names, seen)
        elif isinstance(value, Tensor) and (kept is None or name in kept):
            out[prefix + name] = value


def _declared_tensors(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """``{qualified class: names of its parameters and buffers}`` from the ``__parameters__`` / ``__buffers__`` lines
    of the archive's code files (read as text; nothing is run)."""
    out: dict[str, set[str]] = {}
    start = f"{root}/code/"
    for info in archive.infolist():
        if not (info.filename.startswith(start) and info.filename.endswith(".py")) or info.file_size > _MAX_CODE_BYTES:
            continue
        module = info.filename[len(start):-3].replace("/", ".")
        current = None
        for line in archive.read(info).decode("utf-8", errors="replace").splitlines():
            match = re.match(r"class (\w+)\b", line)
            if match:
                current = out.setdefault(f"{module}.{match.group(1)}", set())
            elif current is not None and re.match(r"\s+__(parameters|buffers)__ = \[", line):
                current.update(re.findall(r'"([^"]*)"', line))
    return out


# ---------------------------------------------------------------------------------------------------------- matching


def _state_dict_of(content: Any, path: Path) -> tuple[dict[str, Tensor], str]:
    """The state dict a torch.save'd object holds, and where (``""``: the object itself, else its wrapper key): the
    first of :data:`WRAPPER_KEYS` whose value is a mapping of tensors, else the object itself if it is one."""
    if isinstance(content, Mapping):
        for key in WRAPPER_KEYS:
            if _tensor_mapping(content.get(key)):
                return _tensors(content[key]), key
    if _tensor_mapping(content):
        return _tensors(content), ""
    found = (f"a mapping with keys {', '.join(map(repr, list(content)[:6]))}" if isinstance(content, Mapping)
             else f"a {type(content).__name__}")
    raise CheckpointError(f"no state dict in {path}: found {found}; a mapping of tensors is expected, or one under "
                          f"{', '.join(repr(k) for k in WRAPPER_KEYS)}")


def _tensor_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, Tensor) for v in value.values())


def _tensors(mapping: Mapping[Any, Any]) -> dict[str, Tensor]:
    return {str(k): v for k, v in mapping.items() if isinstance(v, Tensor)}


def target_network(module: SegmentationModule) -> nn.Module:
    """The configured network inside ``module``: behind its defense, inside ExternalModel (whose Normalize is the
    config's)."""
    net = module.base_net
    return net.net if isinstance(net, ExternalModel) else net


def _normalize_keys(net: nn.Module) -> set[str]:
    """State-dict keys of the Normalize buffers inside ``net`` (the built-in U-Net's ``normalize.mean`` / ``.std``)."""
    return {f"{name}.{b}" if name else b for name, m in net.named_modules() if isinstance(m, Normalize)
            for b, _ in m.named_buffers(recurse=False)}


def choose_prefix(keys: list[str], expected: set[str]) -> str:
    """The exact keys if they hold every expected key, else the shortest dotted prefix under which they do; with no
    such prefix, the one that matches most keys (for the mismatch message)."""
    candidates = sorted({""} | {k[: i + 1] for k in keys for i, c in enumerate(k) if c == "."})

    def score(prefix: str) -> tuple[bool, int, int]:
        under = {k[len(prefix):] for k in keys if k.startswith(prefix)}
        return expected <= under, len(under & expected), -len(prefix)

    return max(candidates, key=score)


def _apply(module: SegmentationModule, path: Path, fmt: str, content: Any, prefix: str | None) -> dict[str, Any]:
    if fmt == "torch.save":
        tensors, wrapper = _state_dict_of(content, path)
    else:
        tensors, wrapper = content, ""
    net = target_network(module)
    own = net.state_dict()
    norm = _normalize_keys(net)
    expected = [k for k in own if k not in norm]
    chosen = choose_prefix(list(tensors), set(expected)) if prefix is None else _as_prefix(prefix)
    under = {k[len(chosen):]: v for k, v in tensors.items() if k.startswith(chosen)}
    model = module.hparams.get("model")
    _check_keys(path, under, own, expected, norm, chosen, wrapper, model, prefix is None)
    _check_normalisation(path, under, own, norm)
    net.load_state_dict({k: under[k] for k in expected}, strict=False)
    record = {"path": str(path), "sha256": sha256(path), "format": fmt, "prefix": chosen, "tensors": len(expected)}
    if wrapper:
        record["wrapper_key"] = wrapper
    ignored = len(tensors) - len(under)
    if ignored:
        record["ignored_keys"] = ignored
    where = f" under the prefix {chosen!r}" + (f" ({ignored} keys outside it ignored)" if ignored else "") if chosen else ""
    print(f"weights: {len(expected)} tensors of {path} ({fmt}{f', {wrapper!r}' if wrapper else ''}){where} loaded into "
          f"{_label(model)}", flush=True)
    return record


def _as_prefix(prefix: str) -> str:
    prefix = str(prefix)
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def _check_keys(path: Path, under: dict[str, Tensor], own: dict[str, Tensor], expected: list[str], norm: set[str],
                chosen: str, wrapper: str, model: Any, automatic: bool) -> None:
    missing = [k for k in expected if k not in under]
    unexpected = [k for k in under if k not in own]
    shapes = [f"{k} {list(under[k].shape)} in the file, {list(own[k].shape)} in the network"
              for k in [*expected, *norm] if k in under and under[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = [_listed(n, what, items) for n, what, items in ((len(missing), "missing", missing),
                                                            (len(unexpected), "unexpected", unexpected),
                                                            (len(shapes), "of another shape", shapes)) if n]
    if chosen:
        read = f"the keys under the prefix {chosen!r}" + (" (the best match)" if automatic else "")
    else:
        read = "the keys as they are"
    inside = f" (its {wrapper!r})" if wrapper else ""
    raise CheckpointError(
        f"{path}{inside} does not fit the network {_label(model)}, reading {read}: {'; '.join(parts)}. Set model.name / "
        f"model.params to the network the weights were trained for, or run.weights_prefix=... to read the keys under "
        f"another prefix ('' for the keys as they are)")


def _listed(count: int, what: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN]) + (", ..." if count > SHOWN else "")
    return f"{count} {what} ({shown})" if what == "of another shape" else f"{count} {what} key{'s' * (count != 1)} ({shown})"


def _check_normalisation(path: Path, under: dict[str, Tensor], own: dict[str, Tensor], norm: set[str]) -> None:
    """Normalisation stored in the file (the built-in U-Net's buffers) must be the config's model.mean / model.std."""
    differing = sorted(k for k in norm if k in under and not torch.allclose(under[k].float(), own[k].float(), atol=1e-6))
    if differing:
        stored = ", ".join(f"{k}={_values(under[k])}" for k in differing)
        config = " ".join(f"model.{k.rsplit('.', 1)[-1]}={_values(under[k])}" for k in differing)
        raise CheckpointError(f"{path} holds the normalisation {stored}, not the config's (model.mean / model.std): "
                              f"set {config}")


def _values(t: Tensor) -> str:
    return "[" + ",".join(f"{v:.6g}" for v in t.flatten().tolist()) + "]"


def _label(model: Any) -> str:
    described = describe_model(model) or {}
    return ", ".join(f"model.{k}={v}" for k, v in described.items() if k not in ("mean", "std")) or "of the config"


__all__ = ["WRAPPER_KEYS", "choose_prefix", "load_foreign_weights", "load_initial_weights", "module_from_weights",
           "read_weights", "sha256", "target_network"]
