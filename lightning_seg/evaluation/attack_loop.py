"""The attack phase of the ``attack`` command through Lightning: one device, one GPU, or DDP ranks.

Every attack is one predict dataloader of a single ``trainer.predict`` call (one launch of the DDP processes for all
attacks). Rank ``r`` of ``W`` attacks the images ``r, r+W, r+2W, ...`` of those not attacked yet: a shard per rank
without padding or duplicates (unlike ``DistributedSampler``, which pads the last shards with repeated images), in
batches of ``attack_eval.batch_size``. Each batch's results go to their own files in the run folder,
``shards/<attack>-<fingerprint>/<first index>.pt`` with a ``.json`` sidecar naming its images, written under a
temporary name and renamed, so a file there is always complete. The launching process merges an attack's files in
image order once every rank is done: the merged results are those of one process, whatever the number of ranks.

Resuming: a rerun on the same run folder finds the files and attacks only the images they lack. The fingerprint
covers what changes an image's result (the attack's settings, targets, checkpoint, uint8 round-trip), so files of
other settings are never reused. Each batch seeds the random generators from ``attack_eval.seed`` and the index of
its first image: random starts depend on which images share a batch, not on the rank that attacks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_seg.attacks import AttackResult
from lightning_seg.evaluation.inference import (
    concat_results,
    quantize_result,
    result_from_state,
    result_state,
    run_attack,
)
from lightning_seg.evaluation.progress import Progress

SHARDS = "shards"


def fingerprint(*parts: Any) -> str:
    """A short digest of ``parts`` (anything JSON can write, tensors by their values)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            digest.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def done_indices(folder: Path) -> set[int]:
    """The images whose results ``folder`` holds (the sidecars of complete batch files)."""
    done: set[int] = set()
    for sidecar in folder.glob("*.json") if folder.is_dir() else ():
        if sidecar.with_suffix(".pt").is_file():
            done.update(json.loads(sidecar.read_text())["indices"])
    return done


def merge_shards(folder: Path, n: int) -> tuple[AttackResult, float] | None:
    """All ``n`` images' results of ``folder`` as one result in image order, and the attack's seconds (each batch's
    seconds over the number of processes that ran it); None while any image is missing."""
    batches: list[AttackResult] = []
    indices: list[int] = []
    seconds = 0.0
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        meta = json.loads(sidecar.read_text())
        fresh = [i for i in meta["indices"] if i < n and i not in indices]
        if len(fresh) != len(meta["indices"]) or not sidecar.with_suffix(".pt").is_file():
            continue  # a batch beyond attack_eval.num_images (an earlier, larger run) or a repeat
        batches.append(result_from_state(torch.load(sidecar.with_suffix(".pt"), weights_only=True)))
        indices += fresh
        seconds += meta["seconds"] / meta["world_size"]
    if sorted(indices) != list(range(n)):
        return None
    order = torch.tensor(indices).argsort()
    return concat_results(batches, order), seconds


def _save(folder: Path, indices: list[int], result: AttackResult, seconds: float, world_size: int) -> None:
    """The batch's results and sidecar, each written to a temporary name and renamed (the sidecar last)."""
    stem = folder / f"{indices[0]:08d}"
    for path, write in ((stem.with_suffix(".pt"), lambda f: torch.save(result_state(result), f)),
                        (stem.with_suffix(".json"), lambda f: f.write(json.dumps(
                            {"indices": indices, "seconds": seconds, "world_size": world_size}).encode()))):
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                write(f)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def _quiet() -> None:
    """Lightning's warnings that do not apply here: predict_step returns nothing on purpose (the results are in the
    files), and a rank may have no batch left of a resumed attack."""
    warnings.filterwarnings("ignore", message="predict returned None")
    warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks is zero")


class AttackJob:
    """One attack of the phase: its label, the attack, the masks it aims at, its shard folder and the images to do."""

    def __init__(self, name: str, attack: Any, reference: Tensor, folder: Path, todo: list[int]) -> None:
        self.name, self.attack, self.reference, self.folder, self.todo = name, attack, reference.cpu(), folder, todo


class ShardedAttacks(pl.LightningModule):
    """``predict_step`` attacks one batch of one job (dataloader ``k`` = job ``k``) and writes its files.

    Images, references and validity maps stay on the CPU (a spawned process receives them pickled); each batch moves
    to the rank's device. Gradients w.r.t. the inputs only (``torch.enable_grad`` inside the predict loop's
    ``no_grad``; the Trainer is built with ``inference_mode=False``)."""

    def __init__(self, net: nn.Module, jobs: list[AttackJob], images: Tensor, valid: Tensor | None, batch_size: int,
                 seed: int, quantize: bool) -> None:
        super().__init__()
        self.net = net
        self.jobs, self.images = jobs, images.cpu()
        self.valid = None if valid is None else valid.cpu()
        self.batch_size, self.seed, self.quantize = batch_size, seed, quantize
        self._progress: Progress | None = None
        self._job: int | None = None
        self._succeeded = self._done = 0

    def setup(self, stage: str) -> None:
        _quiet()
        # every rank works from rank 0's list of images to do (read before any rank wrote this launch's files)
        todo = self.trainer.strategy.broadcast([job.todo for job in self.jobs], src=0)
        for job, indices in zip(self.jobs, todo):
            job.todo = indices

    def _batches(self, job: AttackJob) -> list[list[int]]:
        mine = job.todo[self.trainer.global_rank::self.trainer.world_size]
        return [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def predict_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self._batches(job), batch_size=None, collate_fn=lambda b: b) for job in self.jobs]

    def predict_step(self, batch: list[int], batch_idx: int, dataloader_idx: int = 0) -> None:
        job = self.jobs[dataloader_idx]
        self._start(dataloader_idx)
        torch.manual_seed(self.seed * 1_000_003 + batch[0])
        index = torch.tensor(batch)
        x, ref = self.images[index].to(self.device), job.reference[index].to(self.device)
        valid = None if self.valid is None else self.valid[index].to(self.device)
        start = time.perf_counter()
        with torch.enable_grad():
            result = run_attack(job.attack, self.net, x, ref, valid)
        if self.quantize:
            result = quantize_result(job.attack, self.net, x, ref, result, valid)
        _save(job.folder, batch, result, time.perf_counter() - start, self.trainer.world_size)
        self._succeeded += int(result.success.sum())
        self._done += len(batch)
        if self._progress is not None:  # rank 0's share of the work stands for the whole: advance by W images each
            left = self._progress.total - self._progress.done
            self._progress.update(min(len(batch) * self.trainer.world_size, left),
                                  success=f"{self._succeeded}/{self._done} (rank 0)")
        if self.trainer.received_sigterm:
            # SLURM preemption, scancel, a job limit: Lightning's handler only records SIGTERM and its predict loop
            # never looks, so stop here, after this batch's file, and leave like a Ctrl-C (partial report, resume)
            raise SIGTERMException

    def _start(self, k: int) -> None:
        """A progress bar (with ETA) per attack, on rank 0; closes the previous attack's."""
        if self._job == k:
            return
        self._close()
        self._job, self._succeeded, self._done = k, 0, 0
        if self.trainer.is_global_zero:
            job = self.jobs[k]
            self._progress = Progress(f"attack {job.name}", len(job.todo), enabled=True)

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._progress.total - self._progress.done)
            self._progress.close()
            self._progress = None

    def on_predict_end(self) -> None:
        self._close()
        self.trainer.strategy.barrier("attacks written")  # every rank's files are there before rank 0 merges

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles the module: no open progress bar
        state = super().__getstate__()
        state["_progress"] = None
        return state


def run_sharded(trainer_kwargs: dict[str, Any], net: nn.Module, jobs: list[AttackJob], images: Tensor,
                valid: Tensor | None, *, batch_size: int, seed: int, quantize: bool) -> int:
    """Attack every job's images left to do through a Trainer of ``trainer_kwargs``; returns this process's rank.

    A Ctrl-C stays a :class:`KeyboardInterrupt` (Lightning turns it into ``sys.exit(1)`` and ignores further ones), and
    so does a SIGTERM (the attack stops after the batch it is on); the files written so far are kept for a resume."""
    for job in jobs:
        job.folder.mkdir(parents=True, exist_ok=True)
    if not any(job.todo for job in jobs):
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    _quiet()
    trainer = pl.Trainer(**trainer_kwargs)
    jobs = [job for job in jobs if job.todo]  # one dataloader per attack with images left
    module = ShardedAttacks(net, jobs, images, valid, batch_size, seed, quantize)
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.predict(module, return_predictions=False)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, handler)
        module._close()  # an interrupted predict never reaches on_predict_end: stop the progress bar's heartbeat
    return trainer.global_rank


def shard_jobs(run_dir: Path, attacks: dict[str, Any], references: dict[str, Tensor], n: int,
               keys: dict[str, str]) -> list[AttackJob]:
    """One job per attack: its shard folder ``shards/<name>-<keys[name]>`` and the images it still lacks."""
    jobs = []
    for name, atk in attacks.items():
        folder = run_dir / SHARDS / f"{name}-{keys[name]}"
        done = done_indices(folder)
        jobs.append(AttackJob(name, atk, references[name], folder, [i for i in range(n) if i not in done]))
    return jobs


def iter_merged(jobs: list[AttackJob], n: int) -> Iterator[tuple[str, AttackResult | None, float]]:
    """Each job's merged result (None when the run stopped before all its images were attacked) and seconds."""
    for job in jobs:
        merged = merge_shards(job.folder, n)
        yield job.name, None if merged is None else merged[0], 0.0 if merged is None else merged[1]


__all__ = ["SHARDS", "AttackJob", "ShardedAttacks", "done_indices", "fingerprint", "iter_merged", "merge_shards",
           "run_sharded", "shard_jobs"]
