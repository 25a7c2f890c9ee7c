"""Weights trained elsewhere (``run.weights=...``, ``run.init_from=...``): a plain state dict, a Lightning checkpoint
of another project, safetensors and TorchScript load into the network of the config's model section, without running
anything the file holds; a key or shape mismatch, or a pickled payload, gets one line (lightning_seg.training.weights)."""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_seg.cli import main
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import adv_train
from lightning_seg.metrics.segmentation import StructureMetrics
from lightning_seg.models import UNet
from lightning_seg.tasks import get_task
from lightning_seg.training.trainer import build_datamodule_from, build_module
from lightning_seg.training.weights import choose_prefix, load_foreign_weights, module_from_weights, target_network

from .conftest import tiny_overrides

monai_nets = pytest.importorskip("monai.networks.nets", reason="MONAI is part of the dev install (pip install -e '.[dev]')")

MONAI = ["model.name=monai.UNet", "model.params.channels=[4,8,16]", "model.params.strides=[2,2]"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # the config's default normalisation


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: the marker file shows that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _plain_monai_net() -> torch.nn.Module:
    """The network as another project builds and trains it: plain MONAI, its own random weights."""
    torch.manual_seed(1)
    return monai_nets.UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=[4, 8, 16], strides=[2, 2]).eval()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One network saved in every accepted form, by plain PyTorch / safetensors code."""
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("weights")
    net = _plain_monai_net()
    sd = net.state_dict()
    paths = {name: out / name for name in ("state_dict.pt", "weights.safetensors", "scripted.pt", "traced.pt",
                                           "lightning_other.ckpt", "wrapped.pth", "data_parallel.pt", "legacy.pt")}
    torch.save(sd, paths["state_dict.pt"])
    save_file(sd, str(paths["weights.safetensors"]))
    torch.jit.save(torch.jit.script(net), paths["scripted.pt"])
    with warnings.catch_warnings():  # tracing MONAI's InstanceNorm checks warns; the trace is right for this size
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), paths["traced.pt"])
    # another project's LightningModule: the network under `model.`, a loss buffer beside it, its own hparams
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(2)},
                "hyper_parameters": {"lr": 0.001}, "epoch": 3}, paths["lightning_other.ckpt"])
    torch.save({"model_state_dict": sd, "epoch": 3}, paths["wrapped.pth"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, paths["data_parallel.pt"])
    torch.save(sd, paths["legacy.pt"], _use_new_zipfile_serialization=False)
    return paths


@pytest.fixture(scope="module")
def monai_config(files, tmp_path_factory: pytest.TempPathFactory):
    """The config of the MONAI network (composed once: the compose-time check builds and runs the network)."""
    return compose_for("test", _overrides(tmp_path_factory.mktemp("cfg"), *MONAI, f"run.weights={files['state_dict.pt']}"))


def _overrides(root: Path, *extra: str) -> list[str]:
    """Tiny synthetic data; the built-in U-Net's keys left out (they are not settings of a MONAI network)."""
    return [o for o in tiny_overrides(root / "runs") if not o.startswith(("model.width", "model.depth"))] + list(extra)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_state_dict_of_a_plain_monai_unet_validates_as_the_plain_model(files, tmp_path: Path) -> None:
    path = files["state_dict.pt"]
    cfg = compose_for("validate", _overrides(tmp_path, *MONAI, f"run.weights={path}"))
    net = _plain_monai_net()
    module, _ = module_from_weights(cfg)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(_normalised(x)), rtol=0, atol=1e-6)

    result = evaluate(cfg, "validate")
    expected = StructureMetrics(get_task(cfg.data.task), "val")
    datamodule = build_datamodule_from(cfg)
    datamodule.setup("validate")
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            expected.update(net(_normalised(batch["image"])), batch["mask"], batch.get("valid"))
    for key, value in expected.compute().items():
        assert result["metrics"][key] == pytest.approx(float(value), abs=1e-6), key
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert result["checkpoint"] is None
    assert result["weights"] == {"path": str(path), "sha256": digest, "format": "torch.save", "prefix": "",
                                 "tensors": len(net.state_dict())}
    stored = json.loads((Path(result["run_dir"]) / "results.json").read_text())
    assert stored["weights"]["sha256"] == digest
    assert f"weights: {path}" in (Path(result["run_dir"]) / "config.yaml").read_text()


@pytest.mark.parametrize("name, fmt, prefix", [
    ("weights.safetensors", "safetensors", ""),
    ("scripted.pt", "torchscript", ""),
    ("traced.pt", "torchscript", ""),
    ("lightning_other.ckpt", "torch.save", "model."),  # the loss buffer outside the prefix is ignored
    ("wrapped.pth", "torch.save", ""),
    ("data_parallel.pt", "torch.save", "module."),
    ("legacy.pt", "torch.save", ""),
])
def test_every_format_loads_the_same_network(name: str, fmt: str, prefix: str, files, monai_config) -> None:
    module = build_module(monai_config)
    record = load_foreign_weights(module.eval(), files[name])
    assert (record["format"], record["prefix"]) == (fmt, prefix)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _plain_monai_net()(_normalised(x)), rtol=0, atol=1e-6)


def test_builtin_unet_state_dict_with_a_model_prefix(tmp_path: Path, capsys) -> None:
    torch.manual_seed(2)
    net = UNet(width=4, depth=2).eval()  # the project's U-Net, trained by someone's own Lightning module as `model`
    path = tmp_path / "unet_model_prefix.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    overrides = tiny_overrides(tmp_path / "runs", **{"run.weights": path})
    module, record = module_from_weights(compose_for("validate", overrides))
    assert record["prefix"] == "model." and record["wrapper_key"] == "state_dict"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x), rtol=0, atol=0)
    assert main(["validate", *overrides]) == 0
    capsys.readouterr()
    # its state dict holds its normalisation: other values than the config's are refused, with the fix
    assert main(["validate", *overrides, "model.mean=[0.4,0.4,0.4]"]) == 2
    line = _error_line(capsys)
    assert "normalize.mean=[0.5,0.5,0.5]" in line and "set model.mean=[0.5,0.5,0.5]" in line, line


def test_a_mismatch_is_one_line_listing_the_first_keys(files, tmp_path: Path, capsys) -> None:
    path = files["state_dict.pt"]
    other = ["model.name=monai.UNet", "model.params.channels=[4,8,32]", "model.params.strides=[2,2]"]
    assert main(["validate", *_overrides(tmp_path, *other, f"run.weights={path}")]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {path} does not fit the network model.name=monai.UNet"), line
    assert "of another shape (model.1.submodule.1.submodule.conv.weight [16, 8, 3, 3] in the file, [32, 8, 3, 3] " \
           "in the network" in line, line
    assert "model.params" in line and "run.weights_prefix" in line, line
    # the built-in U-Net for a MONAI state dict: missing and unexpected keys, counted and the first few listed
    assert main(["validate", *tiny_overrides(tmp_path / "runs", **{"run.weights": path})]) == 2
    line = _error_line(capsys)
    assert "missing keys (down.0.0.weight, down.0.1.weight, down.0.1.bias, ...)" in line, line
    assert "14 unexpected keys (model.0.conv.weight, model.0.conv.bias, model.0.adn.A.weight, ...)" in line, line
    # a prefix that holds none of the keys; init_from gets the same line, before any run folder
    assert main(["fit", *_overrides(tmp_path, *MONAI, f"run.init_from={path}", "run.weights_prefix=net.")]) == 2
    line = _error_line(capsys)
    assert "reading the keys under the prefix 'net.': 14 missing keys" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
@pytest.mark.parametrize("command", ["validate", "attack", "fit"])
def test_a_pickled_payload_is_refused_whatever_the_environment_says(kind: str, command: str, files, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    if kind == "state_dict":
        torch.save({**torch.load(files["state_dict.pt"], weights_only=True), "extra": Payload(marker)}, path)
    else:  # a TorchScript archive whose module data is a pickled call
        with zipfile.ZipFile(files["scripted.pt"]) as src, zipfile.ZipFile(path, "w") as dst:
            for item in src.infolist():
                data = pickle.dumps(Payload(marker), protocol=2) if item.filename.endswith("/data.pkl") else src.read(item)
                dst.writestr(item, data)
    key = "run.init_from" if command == "fit" else "run.weights"
    extra = ["attack=[pgd]", "attack_eval.num_images=2"] if command == "attack" else []
    assert main([command, *_overrides(tmp_path, *MONAI, *extra, f"{key}={path}")]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: refused: {path} holds objects other than tensors and plain containers ("), line
    assert "getattr" in line and "weights_only=False" not in line and "add_safe_globals" not in line, line
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "runs").exists()


def test_weights_and_ckpt_together_or_in_the_wrong_place_are_one_line(files, tmp_path: Path, capsys) -> None:
    path = files["state_dict.pt"]
    assert main(["validate", *_overrides(tmp_path, *MONAI, f"run.weights={path}", f"run.ckpt={path}")]) == 2
    line = _error_line(capsys)
    assert f"run.weights={path} and run.ckpt={path} both choose the weights to evaluate: drop one" in line, line
    assert main(["adv-train", *_overrides(tmp_path, *MONAI, f"run.weights={path}")]) == 2
    assert f"adv-train starts from weights trained elsewhere with run.init_from={path}" in _error_line(capsys)
    assert main(["test", *_overrides(tmp_path, *MONAI, f"run.weights={tmp_path / 'nope.pt'}")]) == 2
    assert "is not a file" in _error_line(capsys)
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights\n")
    assert main(["test", *_overrides(tmp_path, *MONAI, f"run.weights={text}")]) == 2
    assert _error_line(capsys).startswith(f"error: not a weights file: {text} (neither a torch.save file")
    own = tmp_path / "own.ckpt"  # a lightning_seg checkpoint: evaluated with its own model and data, by run.ckpt
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"name": "unet"}, "task": "lesion"}}, own)
    assert main(["validate", *_overrides(tmp_path, *MONAI, f"run.weights={own}")]) == 2
    assert f"is a lightning_seg checkpoint: evaluate it with run.ckpt={own}" in _error_line(capsys)
    # a plain state dict given as run.ckpt: the line says where weights trained elsewhere go
    assert main(["validate", *_overrides(tmp_path, f"run.ckpt={path}")]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: not a lightning_seg checkpoint: {path} (") and "run.weights=<file>" in line, line
    assert not (tmp_path / "runs").exists()


def test_prefix_rule() -> None:
    expected = {"a.weight", "b.weight"}
    assert choose_prefix(["a.weight", "b.weight"], expected) == ""
    assert choose_prefix(["ema_model.a.weight", "ema_model.b.weight", "model.a.weight", "model.b.weight"], expected) == "model."
    assert choose_prefix(["net.net.a.weight", "net.net.b.weight", "net.normalize.mean"], expected) == "net.net."
    assert choose_prefix(["model.a.weight", "x"], expected) == "model."  # the best match, for the mismatch message


@pytest.mark.slow
def test_attack_with_weights_records_the_file(files, tmp_path: Path) -> None:
    path = files["scripted.pt"]
    overrides = _overrides(tmp_path, *MONAI, f"run.weights={path}", "attack=[pgd]", "attack.pgd.steps=2",
                           "attack_eval.num_images=2", "attack_eval.batch_size=2", "attack_eval.panels=0",
                           "attack_eval.eps_sweep=[2/255]", "attack_eval.sweep_steps=1", "attack_eval.sweep_attacks=[pgd]")
    assert main(["attack", *overrides]) == 0
    (run,) = (tmp_path / "runs" / "attack").iterdir()
    result = json.loads((run / "results.json").read_text())
    assert result["checkpoint"] is None and result["weights"]["format"] == "torchscript"
    assert result["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [r["attack"] for r in result["robustness"]] == ["clean", "pgd"]
    assert f"Weights `{path}`" in (run / "summary.md").read_text()


@pytest.mark.slow
def test_adv_train_starts_from_a_state_dict(files, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import Callback

    class FirstWeights(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.state = {k: v.detach().clone() for k, v in target_network(pl_module).state_dict().items()}

    seen = FirstWeights()
    overrides = _overrides(tmp_path, *MONAI, f"run.init_from={files['lightning_other.ckpt']}", "adv_train.steps=1",
                           "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    result = adv_train(compose_for("adv-train", overrides), extra_callbacks=[seen])
    plain = _plain_monai_net().state_dict()
    assert seen.state.keys() == plain.keys()
    for key, value in plain.items():
        torch.testing.assert_close(seen.state[key], value, rtol=0, atol=0)
    assert Path(result["last_checkpoint"]).is_file()
