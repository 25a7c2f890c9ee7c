"""The project installs like a package: a wheel built from the checkout, installed into a fresh virtual environment
outside the checkout, runs every command.

An editable install hides packaging bugs (its finder maps lightning_seg.* to the checkout's folders), so the wheel
is installed into a new venv whose only view of this project is the wheel. The dependencies (torch, lightning, ...)
are not installed again (no network, and slow): a ``.pth`` file adds the running environment's site-packages behind
the new venv's own. Python processes ``.pth`` files only in site directories, so the running environment's editable
finder (``__editable__*.pth``) is not activated there and cannot point back at the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Checkout folder -> its place in the wheel ([tool.setuptools] package-dir in pyproject.toml).
SHIPPED = {"lightning_seg": "lightning_seg", "datamodules": "lightning_seg/datamodules",
           "callbacks": "lightning_seg/callbacks", "conf": "lightning_seg/conf"}
NOT_COPIED = {".git", "build", "dist", "runs", "wandb", "__pycache__", ".pytest_cache", ".ruff_cache"}
TINY_FIT = ["data.num_train=8", "data.num_val=4", "data.num_test=4", "data.image_size=32", "data.batch_size=4",
            "data.eval_batch_size=4", "model.width=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "logger=none"]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    command = " ".join(map(str, cmd))
    assert out.returncode == 0, f"{command} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _not_copied(folder: str, names: list[str]) -> set[str]:
    # also any virtual environment (.venv, or $LIGHTNING_SEG_VENV inside the checkout) and build metadata
    return {n for n in names if n in NOT_COPIED or n.endswith(".egg-info") or (Path(folder, n, "pyvenv.cfg").is_file())}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("install")
    assert not tmp.resolve().is_relative_to(ROOT), f"{tmp} is inside the checkout: run pytest with --basetemp elsewhere"
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the checkout.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_not_copied)
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, src])
    (wheel,) = wheels.glob("lightning_seg-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    # the running pip installs into the new venv (pip --python), so its console script points at the venv's python
    _run([*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # every site folder of the running environment (its venv, and system or user site-packages where it uses them)
    deps = dict.fromkeys(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))
    (site / "_lightning_seg_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    work = tmp / "work"  # the commands run here: outside the checkout, nothing of it on the path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "LIGHTNING_SEG_RUN_DIR")}
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true")
    return {"tmp": tmp, "wheel": wheel, "venv": venv, "python": python, "site": site, "work": work, "env": env}


def _in(installed: dict, cmd: list) -> subprocess.CompletedProcess:
    return _run(cmd, cwd=installed["work"], env=installed["env"], timeout=300)


def test_wheel_ships_every_source_and_config_file_under_lightning_seg(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"lightning_seg"}  # no top-level datamodules/callbacks
    for folder, target in SHIPPED.items():
        files = [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts]
        assert files, folder
        missing = sorted(str(p.relative_to(ROOT)) for p in files
                         if f"{target}/{p.relative_to(ROOT / folder).as_posix()}" not in names)
        assert not missing, f"not in the wheel (packages / package-data in pyproject.toml): {missing}"


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    # find_spec locates the subpackages without running them (they import torch and lightning: slow)
    code = (
        "from importlib.util import find_spec\n"
        "from lightning_seg.config import conf_dir, config_groups\n"
        "names = ('lightning_seg', 'lightning_seg.datamodules', 'lightning_seg.callbacks', 'lightning_seg.conf')\n"
        "print(*(find_spec(n).origin for n in names), conf_dir())\n"
        "assert find_spec('datamodules') is None and find_spec('callbacks') is None\n"
        "assert {'data', 'model', 'trainer', 'logger', 'attack', 'defense'} <= set(config_groups())\n"
    )
    paths = [Path(p) for p in _in(installed, [installed["python"], "-c", code]).stdout.split()]
    for path in paths:
        assert path.is_relative_to(installed["site"]), path


def test_help_of_module_and_console_script(installed):
    out = _in(installed, [installed["python"], "-m", "lightning_seg", "--help"])
    assert "glaucoma" in out.stdout  # the config groups, read from the installed conf/
    out = _in(installed, [installed["venv"] / "bin" / "lightning-seg", "--help"])
    assert "glaucoma" in out.stdout


def test_fit_then_attack_from_the_wheel(installed):
    runs = installed["tmp"] / "runs"
    _in(installed, [installed["python"], "-m", "lightning_seg", "fit", *TINY_FIT, f"run.output_dir={runs}"])
    assert list(runs.glob("fit/*/checkpoints/last.ckpt"))
    _in(installed, [installed["python"], "-m", "lightning_seg", "attack", "attack_eval.num_images=2",
                    "attack.asma.max_iter=3", "logger=none", f"run.output_dir={runs}"])
    assert list(runs.glob("attack/*"))
