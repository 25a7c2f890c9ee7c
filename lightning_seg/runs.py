"""Run folders: where every command writes its config, checkpoints, logs and results.

Layout: ``<run.output_dir>/<command>/<data.name>-<YYYYmmdd-HHMMSS>/`` holding ``config.yaml``
(resolved), ``checkpoints/{best,last}.ckpt``, ``results.json`` and the logger's files.
The folder is chosen once by the launching process and handed to DDP children through the
environment, so all ranks agree (per-process timestamps can differ by a second and split one run over folders).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_RUN_DIR = "LIGHTNING_SEG_RUN_DIR"


class NoRunError(FileNotFoundError):
    pass


def launcher_id() -> str | None:
    """The job id of an external multi-process launcher (torchrun, SLURM), identical on every rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return None
    for var in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = os.environ.get(var)
        if value and value != "none":
            return f"{var.split('_')[0].lower()}{value}"
    raise RuntimeError(
        "Launched as several processes without a shared job id: ranks could not agree on a run folder. "
        "Set run.name=<name>, or launch with torchrun --rdzv-id=<id> or inside a SLURM job."
    )


def new_run_dir(output_dir: str | Path, command: str, data_name: str, name: str | None = None) -> Path:
    inherited = os.environ.get(ENV_RUN_DIR)
    if inherited:  # a DDP child re-executing the command: reuse the parent's folder
        return Path(inherited)
    base = Path(output_dir) / command
    if name is None and (job := launcher_id()):  # torchrun / srun start every rank independently
        name = f"{data_name}-{job}"
    stem = name or f"{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = base / stem
    suffix = 1
    while name is None and run_dir.exists():  # two runs started within the same second
        suffix += 1
        run_dir = base / f"{stem}-{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@contextmanager
def run_scope(run_dir: Path) -> Iterator[Path]:
    """Hand ``run_dir`` to DDP children for the duration of a command, then forget it in the launching
    process, so the next command in the same process (tests, notebooks) starts its own folder."""
    inherited = os.environ.get(ENV_RUN_DIR)
    os.environ[ENV_RUN_DIR] = str(run_dir.resolve())
    try:
        yield run_dir
    finally:
        if inherited is None:
            os.environ.pop(ENV_RUN_DIR, None)


def command_runs(output_dir: str | Path, command: str = "fit") -> list[Path]:
    """Run folders of ``command`` (fit, adv-train) that hold a checkpoint, oldest first (by modification time of
    the checkpoint)."""
    base = Path(output_dir) / command
    runs = [p for p in base.glob("*") if (p / "checkpoints" / "last.ckpt").is_file()] if base.is_dir() else []
    return sorted(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime)


def fit_runs(output_dir: str | Path) -> list[Path]:
    """Fit run folders that hold a checkpoint, oldest first (by modification time of the checkpoint)."""
    return command_runs(output_dir, "fit")


def latest_run(output_dir: str | Path, command: str = "fit", option: str = "run.ckpt") -> Path:
    """The latest run of ``command``; the error names ``option``, the way to give a run or checkpoint instead."""
    runs = command_runs(output_dir, command)
    if not runs:
        alternative = f"{option}=/path/to/checkpoint.ckpt" if option == "run.ckpt" else f"{option}=/path/to/run"
        raise NoRunError(
            f"No {command} run with a checkpoint under {Path(output_dir) / command}: train one first with "
            f"`python -m lightning_seg {command}`, or pass {alternative}"
        )
    return runs[-1]


def latest_fit_run(output_dir: str | Path) -> Path:
    return latest_run(output_dir, "fit")


def resolve_checkpoint(spec: str | None, output_dir: str | Path, prefer: str = "best", command: str = "fit",
                       option: str = "run.ckpt") -> Path:
    """A checkpoint from a file, a run folder, or (``None``/"latest"/"last") the latest run of ``command``: the
    latest fit run for evaluation and ``run.init_from``; ``run.resume=last`` of ``adv-train`` continues the latest
    adv-train run."""
    if spec in (None, "", "latest", "last"):
        run = latest_run(output_dir, command, option)
        name = "last" if spec == "last" else prefer
        path = run / "checkpoints" / f"{name}.ckpt"
        return path if path.is_file() else run / "checkpoints" / "last.ckpt"
    path = Path(spec)
    if path.is_dir():
        for candidate in (path / "checkpoints" / f"{prefer}.ckpt", path / "checkpoints" / "last.ckpt", path / f"{prefer}.ckpt"):
            if candidate.is_file():
                return candidate
        raise NoRunError(f"No checkpoint in run folder {path} (looked for checkpoints/{prefer}.ckpt and checkpoints/last.ckpt)")
    if not path.is_file():
        raise NoRunError(f"Checkpoint {path} does not exist")
    return path
