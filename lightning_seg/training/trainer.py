"""Builders of the Trainer, its logger and callbacks, the datamodule and the LightningModule from a run config.

Every Trainer is built here with ``inference_mode=False``: attacks need input gradients during validate and test,
and ``torch.inference_mode`` tensors cannot require them. ``use_distributed_sampler=False``: the datamodules' own
sampler splits ranks without padding evaluation sets, so multi-process metrics equal single-process ones.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig

from lightning_seg.config import FORCED_TRAINER_ARGS, ConfigError, _first_line, _show, check_arguments, to_plain
from lightning_seg.datamodules import SegmentationDataModule, build_datamodule
from lightning_seg.io import write_text
from lightning_seg.training.module import SegmentationModule


def build_datamodule_from(cfg: DictConfig) -> SegmentationDataModule:
    data = to_plain(cfg.data)
    return build_datamodule(data.pop("name"), seed=cfg.seed, **data)


def defense_hparams(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``defense`` section as the module's hyper-parameter (plain; ``None`` = no defense, as in old checkpoints)."""
    return to_plain(cfg.defense) if cfg.defense.name != "none" else None


def build_module(cfg: DictConfig) -> SegmentationModule:
    adv = to_plain(cfg.adv_train) if cfg.adv_train.enabled else None
    return SegmentationModule(model=to_plain(cfg.model), task=cfg.data.task, optim=to_plain(cfg.optim), loss=to_plain(cfg.loss), adv_train=adv,
                              defense=defense_hparams(cfg))


def adversarial_callbacks(cfg: DictConfig) -> list[Callback]:
    if not cfg.adv_val.enabled:
        return []
    from lightning_seg.callbacks.adversarial_validation import AdversarialValidation

    v = cfg.adv_val
    return [AdversarialValidation(v.attack, to_plain(cfg.attack), v.target, v.every_n_epochs, v.max_batches, v.log_images,
                                  tuple(v.eps_sweep), v.sweep_steps)]


# wandb's run folder: [offline-]run-<date>_<time>-<run id>, plus "-1", "-2", ... when a run with the same id started in
# the same second (a quick resume)
_WANDB_RUN_DIR = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9]+)(?:-(\d+))?")


def _run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: derived from its path, so every rank (also ranks started independently
    by torchrun / srun) and a resumed run get the same id without coordination. A run folder that already holds a
    W&B run (``wandb/[offline-]run-<time>-<id>[-<n>]``) keeps that id, also after the folder was moved or copied."""
    earlier = sorted((m[1], int(m[3] or 0), m[2]) for p in (run_dir / "wandb").glob("*run-*")
                     if (m := _WANDB_RUN_DIR.fullmatch(p.name)))
    if earlier:
        return earlier[-1][2]
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing a resumed run's ``metrics.csv`` instead of deleting it.

    Lightning's writer removes an existing metrics.csv when it is created. This one keeps it untouched until the
    first rows of the resumed run are saved (so a resume that fails before training changes nothing), then drops
    the rows logged at or after the resumed checkpoint's step (they are logged again) and appends the new ones.
    Lightning logs every row with the step of the batches already stepped, so the rows a checkpoint already
    covers are exactly those with ``step < `` its ``_batches_that_stepped``."""

    def __init__(self, log_dir: str, keep_before_step: int) -> None:
        self.keep_before_step = keep_before_step
        self._history_loaded = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        pass

    def save(self) -> None:
        if self.metrics and not self._history_loaded:
            self._load_history()
        super().save()

    def _load_history(self) -> None:
        import csv
        import io

        self._history_loaded = True
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _row_step(row) < self.keep_before_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue())
        self.metrics_keys = header  # new keys then rewrite the header (Lightning's own path); the rows are appended


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("-inf")  # a row without a readable step is kept


class ResumedCSVLogger(CSVLogger):
    """:class:`CSVLogger` whose writer continues the run's metrics.csv from a checkpoint's step (see _HistoryWriter)."""

    def __init__(self, *args: Any, keep_before_step: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_before_step = keep_before_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self.keep_before_step)
        return self._experiment


def build_logger(cfg: DictConfig, run_dir: Path, command: str, resume_step: int | None = None) -> Any:
    """The run's logger; ``resume_step`` (the resumed checkpoint's step) continues its history: the CSV rows before
    that step are kept and the new ones appended; W&B resumes the run folder's run id."""
    kind = cfg.logger.name
    if kind == "none":
        return False
    if kind == "csv":
        if resume_step is not None:
            return ResumedCSVLogger(save_dir=str(run_dir), name="", version="csv", keep_before_step=resume_step)
        return CSVLogger(save_dir=str(run_dir), name="", version="csv")
    if kind != "wandb":
        raise ValueError(f"logger.name={kind!r}: use wandb, csv or none")
    if cfg.logger.mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.mode={cfg.logger.mode!r}: use offline, online or disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    # mode goes to wandb.init directly: WandbLogger(offline=True) would set WANDB_MODE for the whole process.
    return _wandb_logger_class()(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        save_dir=str(run_dir),
        name=f"{command}/{run_dir.name}",
        id=_run_id(run_dir),
        resume="allow",
        mode=cfg.logger.mode,
        job_type=command,
        group=wandb_group(cfg, run_dir, command),
        tags=list(cfg.logger.tags),
        config=to_plain(cfg),
    )


# --- W&B: study groups, metric summaries, checkpoint artifacts and their lineage -------------------------------------

TRAINING_COMMANDS = ("fit", "adv-train")
# summaries besides W&B's default (the last value): the best validation scores of a training run
METRIC_SUMMARIES = {"val/dice": "max,last", "val/loss": "min,last"}


def _trained_run_dir(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``; else the file's folder)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def wandb_group(cfg: DictConfig, run_dir: Path, command: str) -> str:
    """The W&B group of a run: ``logger.group`` if set, else the study ``<data.name>/<trained run folder>``: a fit /
    adv-train run's own folder; for validate / test / attack the folder of the run that wrote ``run.ckpt`` (the
    checkpoint they evaluate), so a model and every evaluation of it share a group; ``run.weights``: the file's stem."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    if command in TRAINING_COMMANDS:
        study = run_dir.name
    elif cfg.run.get("weights"):
        study = Path(cfg.run.weights).stem
    else:
        ckpt = _evaluated_checkpoint(cfg)
        study = _trained_run_dir(ckpt).name if ckpt else run_dir.name
    return f"{cfg.data.name}/{study}"


def _evaluated_checkpoint(cfg: DictConfig) -> Path | None:
    try:
        from lightning_seg.runs import resolve_checkpoint

        return resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir)
    except Exception:  # noqa: BLE001 - no checkpoint to name a group after: the run's own folder
        return None


def checkpoint_artifact_name(ckpt: Path) -> str:
    """``model-<W&B run id of the run folder that wrote it>``: the fit run logs its checkpoints under this name and an
    evaluation of the same file names the same artifact, so W&B links them (lineage fit -> model -> attack)."""
    return f"model-{_run_id(_trained_run_dir(ckpt))}"


def checkpoint_artifact(ckpt: Path) -> Any:
    """A ``model`` artifact holding the checkpoint file as ``model.ckpt`` (the digest is the file's: the same file
    logged by fit and declared as input by an evaluation is one artifact version)."""
    import wandb

    ckpt = Path(ckpt)
    artifact = wandb.Artifact(checkpoint_artifact_name(ckpt), type="model",
                              metadata={"run_folder": _trained_run_dir(ckpt).name})
    artifact.add_file(str(ckpt), name="model.ckpt", policy="immutable")
    return artifact


def wandb_run(logger: Any) -> Any:
    """The wandb run of a WandbLogger (created on first use; rank 0 only: call it from rank 0), else None."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    if not hasattr(run, "log_artifact") or type(run).__name__ == "DummyExperiment" or getattr(run, "disabled", False):
        return None  # other ranks, and logger.mode=disabled: nothing to log (no file hashed, nothing written)
    return run


def log_checkpoint_artifacts(run: Any, cfg: DictConfig, checkpoints: dict[str, Any]) -> list[str]:
    """Log each ``alias -> checkpoint file`` (best, last) as a version of the run's ``model`` artifact (offline too:
    uploaded by ``wandb sync``). Returns the aliases logged; nothing without a run or with logger.log_checkpoints=false."""
    if run is None or not cfg.logger.get("log_checkpoints", True):
        return []
    done = []
    for alias, path in checkpoints.items():
        if path and Path(path).is_file():
            run.log_artifact(checkpoint_artifact(Path(path)), aliases=[alias])
            done.append(alias)
    return done


def use_checkpoint_artifact(run: Any, cfg: DictConfig, ckpt: Path | None) -> Any:
    """Declare the evaluated checkpoint as this run's input: the artifact ``model-<fit run id>`` with the file's digest
    (the version the fit run logged), so W&B shows the lineage fit -> model -> validate / attack. Online this is
    ``run.use_artifact``; offline wandb refuses use_artifact, so the same record (an artifact used after commit) is
    written through the call use_artifact makes internally (``run._log_artifact``, wandb 0.17 to 0.31), and ``wandb
    sync`` uploads it as a use. That call is wandb's internal API: where a wandb release lacks it or changed it, the
    checkpoint's artifact name and digest go into the run's config (``input_checkpoint``) with one line saying so."""
    if run is None or ckpt is None or not cfg.logger.get("log_checkpoints", True) or not Path(ckpt).is_file():
        return None
    artifact = checkpoint_artifact(Path(ckpt))
    alias = [Path(ckpt).stem] if Path(ckpt).stem in ("best", "last") else []
    if not run.settings._offline:
        return run.use_artifact(artifact, aliases=alias)
    record = getattr(run, "_log_artifact", None)  # wandb's own internal call: not a public API, so it may go away
    try:
        return record(artifact, aliases=alias, is_user_created=True, use_after_commit=True)
    except TypeError:  # record is None, or its signature changed in another wandb release
        # the lineage then lives in the config only: the artifact name and digest, for a later `use_artifact` by hand
        run.config.update({"input_checkpoint": {"artifact": artifact.name, "digest": artifact.digest,
                                                "path": str(ckpt)}}, allow_val_change=True)
        print(f"W&B: this wandb release has no offline artifact use; the checkpoint {artifact.name} is recorded in the "
              "run's config (input_checkpoint), not as lineage", flush=True)
        return None


def _wandb_logger_class() -> type:
    """Lightning's WandbLogger that also records the best values (:data:`METRIC_SUMMARIES`) when its run starts."""
    from lightning.pytorch.loggers import WandbLogger

    class SegWandbLogger(WandbLogger):
        @property
        def experiment(self) -> Any:
            run = super().experiment  # rank 0: the run; other ranks: a no-op stand-in
            if not getattr(self, "_summaries_defined", False) and hasattr(run, "define_metric"):
                self._summaries_defined = True
                for key, summary in METRIC_SUMMARIES.items():
                    run.define_metric(key, step_metric="trainer/global_step", summary=summary)
            return run

    return SegWandbLogger


# name (snake_case, as in a config) -> lightning.pytorch.callbacks class name, besides the classes' own names
CALLBACK_ALIASES = {"lr_monitor": "LearningRateMonitor", "swa": "StochasticWeightAveraging"}
# base classes and callbacks built from Python callables: nothing a config entry can use
_NOT_CONFIGURABLE = {"Callback", "Checkpoint", "ProgressBar", "BaseFinetuning", "BasePredictionWriter", "LambdaCallback"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def lightning_callbacks() -> dict[str, type[Callback]]:
    """snake_case name -> every callback class of ``lightning.pytorch.callbacks`` (early_stopping, model_checkpoint,
    stochastic_weight_averaging, learning_rate_monitor, ...)."""
    from lightning.pytorch import callbacks as module

    classes = {_snake(n): getattr(module, n) for n in module.__all__ if n not in _NOT_CONFIGURABLE}
    out = {n: c for n, c in classes.items() if isinstance(c, type) and issubclass(c, Callback)}
    return {**out, **{alias: getattr(module, target) for alias, target in CALLBACK_ALIASES.items()}}


def callback_class(spec: str, where: str) -> type[Callback]:
    """The class a ``callbacks`` entry names: a Lightning callback by snake_case name (``early_stopping``, or its class
    name ``EarlyStopping``), or ``package.module:Class`` (a subclass of ``lightning.pytorch.callbacks.Callback``)."""
    from lightning_seg.registry import import_target

    known = lightning_callbacks()
    normalised = {n.replace("_", ""): c for n, c in known.items()}
    if spec.replace("_", "").lower() in normalised:
        return normalised[spec.replace("_", "").lower()]
    if ":" not in spec and "." not in spec.strip("."):
        close = difflib.get_close_matches(spec, list(known), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown callback {spec!r}.{hint} Use a lightning.pytorch.callbacks class "
                          f"({', '.join(sorted(known))}) or target: package.module:Class")
    try:
        cls = import_target(spec)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise ConfigError(f"{where}: {spec} is not a Lightning callback (a subclass of lightning.pytorch.callbacks.Callback)")
    return cls


def config_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of the config's ``callbacks`` section, in its order (each entry: ``target`` = the class, by
    default the entry's name; the other keys = its arguments; a null entry is dropped). :func:`build_trainer` adds them
    to every Trainer (fit, validate, test); a bad entry is one ConfigError line (checked when the config is composed)."""
    out: list[Callback] = []
    for key, entry in to_plain(cfg.callbacks).items():
        where = f"callbacks.{key}"
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}={_show(entry)} is not valid: use a mapping of the callback's arguments "
                              "(target: package.module:Class for a class of your own), or null to drop it")
        params = dict(entry)
        target = params.pop("target", key)
        if not isinstance(target, str):
            raise ConfigError(f"{where}.target={_show(target)} is not valid: use a callback name or package.module:Class")
        cls = callback_class(target, where)
        missing = check_arguments(where, cls, params)
        if missing:
            raise ConfigError(f"{where} ({cls.__name__}) needs {', '.join(f'{where}.{n}=...' for n in missing)}")
        try:
            out.append(cls(**params))
        except Exception as e:  # noqa: BLE001 - a user's class may raise anything: one line naming the entry
            raise ConfigError(f"{where} ({cls.__name__}): {_first_line(e)}") from None
    return out


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` section as ``lightning.pytorch.Trainer`` keyword arguments: the typed keys and any other
    Trainer argument given (``trainer.fast_dev_run``, ``trainer.max_steps``, ...), passed through; the model summary
    off unless ``trainer.enable_model_summary=true``; the forced arguments (FORCED_TRAINER_ARGS) at their values."""
    kwargs: dict[str, Any] = {"enable_model_summary": False, **to_plain(cfg.trainer)}
    kwargs.update({name: value for name, (value, _) in FORCED_TRAINER_ARGS.items()})
    return kwargs


def build_trainer(cfg: DictConfig, run_dir: Path, *, callbacks: list[Callback], logger: Any) -> pl.Trainer:
    """Every command's Trainer: ``trainer`` section (:func:`trainer_arguments`), the command's ``callbacks`` and then
    the config's (:func:`config_callbacks`), the command's logger, the run folder. ``inference_mode=False``: attacks
    need input gradients during validate and test; ``use_distributed_sampler=False``: the datamodules split ranks
    themselves; checkpointing is on exactly when a ModelCheckpoint is among the callbacks (fit)."""
    t = cfg.trainer
    if t.sync_batchnorm and t.accelerator == "cpu":
        raise ValueError("trainer.sync_batchnorm=true only works on GPUs: set trainer.sync_batchnorm=false for CPU runs")
    callbacks = [*callbacks, *config_callbacks(cfg)]
    try:
        return pl.Trainer(
            **trainer_arguments(cfg),
            default_root_dir=str(run_dir),
            callbacks=callbacks,
            logger=logger,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),  # no default checkpoints in validate/test
        )
    except (MisconfigurationException, TypeError, ValueError) as e:  # a combination the Trainer itself refuses
        raise ConfigError(f"trainer: {_first_line(e)}") from None


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if torch.is_tensor(v) and v.numel() == 1 or isinstance(v, (int, float))}


def finish_logger(logger: Any) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish()
