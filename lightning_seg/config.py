"""Typed configuration schemas and composition (OmegaConf structured configs).

``compose(overrides)`` = schema defaults <- ``conf/config.yaml`` <- the chosen group files
(``data=glaucoma`` picks ``conf/data/glaucoma.yaml``) <- dotlist overrides (``trainer.max_epochs=5``).
The dataclass schemas make an unknown key or a wrong type fail with one line that names the key
and suggests the nearest valid one. They hold every default once: a group file (``conf/<group>/<choice>.yaml``) holds
only what its choice changes, and the ``name`` of the data, model and logger sections (MISSING here), which the chosen
file always sets. :func:`check_values` then checks the composed values (ranges, choices, the parameters of the attacks
and target generators), so that a bad value fails in one line before any run folder exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A bad config key or value; the message is one line that says what to write instead."""


@dataclass
class DataConfig:
    """The data section; also the defaults of the datamodules' keyword arguments (lightning_seg.datamodules)."""

    name: str = MISSING  # isic | glaucoma (picks the LightningDataModule); set by conf/data/<name>.yaml
    source: str = "synthetic"  # synthetic (embedded, procedural) | folder (real data under `root`)
    root: Optional[str] = None  # data folder for source=folder
    layout: str = "auto"  # auto-detect, or a layout name (isic2016, isic2017, isic2018, refuge, drishti, ...)
    task: str = MISSING  # lesion (ISIC) | disc | disc_cup (glaucoma); conf/data/<name>.yaml sets the data set's default
    image_size: int = 96  # images are resized to image_size x image_size
    # stretch: both sides to image_size (distorts non-square images; the published protocols' choice, and what every
    # checkpoint trained before this option saw) | pad: longest side to image_size, aspect kept, symmetric padding
    # excluded from loss, metrics and attacks. Clinical read-outs are measured in the original aspect either way.
    resize: str = "stretch"
    num_train: int = 256  # synthetic set sizes
    num_val: int = 64
    num_test: int = 64
    data_seed: int = 0  # seed of the synthetic images and of the random split (independent of the training seed)
    split: str = "random"  # random (by data_seed) | official (folder layouts that define splits)
    val_fraction: float = 0.15  # random split of folder data
    test_fraction: float = 0.15
    batch_size: int = 16  # global batch size; divided by the number of DDP processes
    eval_batch_size: int = 32
    num_workers: int = 0
    augment: bool = True
    skip_bad: bool = False  # drop bad image/mask pairs with a warning instead of failing
    soft_threshold: str = "majority"  # Drishti-GS soft maps: majority | all | any
    # folder data: keep each pair decoded once, already resized (datamodules/cache.py; bit-identical samples).
    # memory: in RAM, 4 bytes per input pixel (36 KiB per pair at 96 px) | disk: one file per pair under cache_dir, kept
    # between runs (a second run skips the decode), invalidated when a file changes | none: decode every access
    cache: str = "memory"
    cache_dir: Optional[str] = None  # data.cache=disk: its folder (default: ~/.cache/lightning_seg/decoded)
    options: dict[str, Any] = field(default_factory=dict)  # layout-specific options passed to the loader


@dataclass
class ModelConfig:
    """The model section (lightning_seg.models). Every network takes images in [0, 1] and normalises them inside with
    ``mean`` / ``std``."""

    # unet (the built-in U-Net) | monai.<Class> (monai.networks.nets) | smp.<Arch> (segmentation_models_pytorch);
    # set by conf/model/<name>.yaml
    name: str = MISSING
    # the built-in U-Net's settings (model.name=unet); setting them for another network is an error
    width: int = 16
    depth: int = 3
    padding: str = "same"  # same | valid
    norm: str = "batch"  # batch | group | none
    upsample: str = "transpose"  # transpose | bilinear
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    # the arguments of a monai./smp./model.target network, checked against its signature (model.params.channels=[16,32])
    params: dict[str, Any] = field(default_factory=dict)
    target: Optional[str] = None  # package.module:callable returning an nn.Module; built instead of model.name


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (lightning_seg/training/optim.py); the defaults are AdamW + warm-up cosine."""

    # any torch.optim optimiser, case-insensitive (adamw, adam, sgd, rmsprop, ...), or package.module:Class
    name: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4  # 0 for optimisers without weight decay (rprop, lbfgs)
    params: dict[str, Any] = field(default_factory=dict)  # the optimiser's other arguments (momentum, betas, nesterov)
    # cosine (linear warm-up over warmup_fraction of the steps, then cosine decay to 0, stepped per optimiser step) |
    # none | step (StepLR) | plateau (ReduceLROnPlateau on `monitor`) | onecycle (OneCycleLR up to lr) | any
    # torch.optim.lr_scheduler class by name (MultiStepLR, exponentiallr, ...) | package.module:Class
    scheduler: str = "cosine"
    warmup_fraction: float = 0.05  # cosine only
    scheduler_params: dict[str, Any] = field(default_factory=dict)  # the scheduler's arguments (step_size, gamma, ...)
    interval: str | None = None  # step | epoch; null: per step for cosine, onecycle and CyclicLR, else per epoch
    monitor: str = "val/dice"  # the metric plateau schedulers follow (mode max; min for a loss)


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    ce_weight: float = 1.0


@dataclass
class TrainerConfig:
    """The ``lightning.pytorch.Trainer`` arguments. The common ones are typed here; any other argument of
    ``Trainer.__init__`` is accepted as ``trainer.<name>`` too (``trainer.fast_dev_run=true``, ``trainer.max_steps=100``,
    ``trainer.accumulate_grad_batches=4``, ``trainer.val_check_interval=0.5``), checked against the Trainer's signature
    and annotations when the config is composed, and passed through. The project sets ``callbacks``, ``logger``,
    ``default_root_dir`` and ``enable_checkpointing`` itself, and forces ``inference_mode`` and
    ``use_distributed_sampler`` to false (:data:`FORCED_TRAINER_ARGS`)."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int = 20  # the faint embedded ISIC lesions need about this many epochs to be segmented well
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    sync_batchnorm: bool = False  # GPU only (fails on CPU)
    gradient_clip_val: Optional[float] = None
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | csv | none; set by conf/logger/<name>.yaml
    project: str = "lightning_seg"
    mode: str = "offline"  # offline (sync later with `wandb sync`) | online | disabled
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    # W&B run group; default (null): one group per study = "<data.name>/<folder of the trained run>": a fit /
    # adv-train run's own folder, and for validate / test / attack the folder of the checkpoint's run (run.ckpt), so a
    # model and every evaluation of it share a group (run.weights: the weights file's name)
    group: Optional[str] = None
    # fit / adv-train: log best.ckpt and last.ckpt as versions of the W&B artifact "model-<run id>" (type model, aliases
    # best / last); validate / test / attack declare the checkpoint they read as input of that artifact (lineage)
    log_checkpoints: bool = True


@dataclass
class RunConfig:
    output_dir: str = "runs"  # run folders: <output_dir>/<command>/<data.name>-<timestamp>
    name: Optional[str] = None  # fixed run folder name instead of a timestamp
    resume: Optional[str] = None  # fit: "last" (latest fit run), a run folder, or a checkpoint file
    ckpt: Optional[str] = None  # validate/test/attack: checkpoint file or run folder (default: latest fit run)
    init_from: Optional[str] = None  # fit/adv-train: start from these weights ("latest" = latest fit run), new optimizer
    # validate/test/attack: a file of weights trained elsewhere (state dict, .safetensors, TorchScript) for the network
    # of the model section and data.task (instead of run.ckpt); read without running code (docs/training.md)
    weights: Optional[str] = None
    # run.weights / run.init_from with weights trained elsewhere: read the file's keys under this prefix ("model.";
    # "" = the keys as they are); default: the exact keys, else the shortest prefix under which they fit the network
    weights_prefix: Optional[str] = None


@dataclass
class MinBudgetConfig:
    """Minimum budget per image (lightning_seg.evaluation.min_budget): the smallest Linf eps at which an untargeted
    worst-case attack drives the image's Dice vs the ground truth below ``level``, found by bisection per image."""

    enabled: bool = False
    level: float = 0.5  # Dice [0,1] below which an image counts as broken
    eps_max: float = 16 / 255  # largest budget searched ([0,1] units; accepts 16/255); above it: "> eps_max"
    attack: str = "apgd"  # worst-case evaluator at each probed eps: apgd (CE loss) | pgd
    steps: int = 20  # gradient steps of the attack at each probed eps
    restarts: int = 1  # random restarts of the attack at each probed eps
    bisection_steps: int = 6  # halvings of [0, eps_max]: resolution eps_max / 2**bisection_steps


@dataclass
class AttackEvalConfig:
    split: str = "val"  # images attacked by the `attack` command: val | test | train
    # first N images of the split (sorted); None: the whole split. Targets come from the same N images.
    num_images: Optional[int] = None
    batch_size: int = 16  # images per attack batch and process (DDP: each rank attacks batches of this size)
    target: str = "other_image"  # target generator (lightning_seg.targets.TARGETS); other_image = the ASMA paper's protocol
    target_params: dict[str, Any] = field(default_factory=dict)
    # Mask the targets are built from: label (ground truth; the paper's protocol) | prediction (the model's clean
    # mask: a clinical edit such as cup_enlarge then changes only what the edit changes, not the model's own errors)
    target_base: str = "label"
    seed: int = 0  # seeds target pairing (other_image: a seeded derangement) and random target edits
    panels: int = 3  # image panels saved per attack
    up_train_batches: int = 8  # training batches used to fit the universal perturbation (attack=up)
    # Robustness curve: untargeted attacks at these Linf budgets (e.g. [1/255,2/255,4/255,8/255]) on every checkpoint
    # in `checkpoints` (default: run.ckpt); robust Dice / IoU vs the ground truth; plotted as Dice vs eps.
    eps_sweep: list[float] = field(default_factory=list)
    sweep_attacks: list[str] = field(default_factory=lambda: ["pgd", "segpgd"])
    sweep_steps: int = 20
    checkpoints: list[str] = field(default_factory=list)
    # Defense report: names of conf/defense/*.yaml (e.g. [fr,jpeg,bit_depth]) evaluated in front of the undefended
    # checkpoint under every attack: benign loss, oblivious and adaptive (BPDA / EOT) defense efficiency.
    defenses: list[str] = field(default_factory=list)
    # Score the adversarial images after a uint8 round-trip (round(x*255)/255, as when saved to PNG): prediction, IoU,
    # success and norms are those of the quantized images; pixels the attack left untouched keep their clean value.
    quantize: bool = False
    # An earlier attack run folder to continue: images whose results it already holds (same attack settings) are
    # skipped, and its per_image.csv / summary are rewritten as one uninterrupted run would have written them.
    resume: Optional[str] = None
    # Minimum budget per image (untargeted): median and per-image curve of the smallest eps that breaks each image.
    min_budget: MinBudgetConfig = field(default_factory=MinBudgetConfig)


@dataclass
class AdvValConfig:
    """The adversarial validation callback (callbacks/adversarial_validation.py)."""

    enabled: bool = False  # also switched on by `attack`-free commands with adv_val.enabled=true
    attack: str = "asma"  # a key of the `attack` section (its hyper-parameters) or a registered attack name
    target: str = "other_image"  # targets for targeted attacks; untargeted attacks use the ground truth
    every_n_epochs: int = 1
    max_batches: int = 2  # validation batches attacked per epoch and rank
    log_images: int = 4  # panels with mask overlays logged from rank 0's first attacked batch
    eps_sweep: list[float] = field(default_factory=list)  # also robust Dice / IoU under untargeted PGD at these budgets
    sweep_steps: int = 10


@dataclass
class AdvTrainConfig:
    """The adversarial-training hook (lightning_seg/adv_training.py); `adv-train` switches it on."""

    enabled: bool = False
    # pgd | segpgd | fgsm | cospgd | asma (targeted, random realistic targets) | synthesis (adversarial deformation +
    # bias field, trained on the deformed labels; params = conf/attack/synthesis.yaml keys) | random_synthesis
    attack: str = "pgd"
    eps: float = 4 / 255  # Linf budget in [0,1] units (PGD family); accepts 4/255 on the command line
    steps: int = 3
    alpha: Optional[float] = None  # step size; None: lightning_seg.attacks.pgd.default_alpha(eps, steps)
    ratio: float = 1.0  # share of each batch replaced by adversarial examples (1.0 robust, 0.5 DDC-AT style)
    target: str = "other_image"  # ASMA only: target generator for random realistic targets
    params: dict[str, Any] = field(default_factory=dict)  # extra attack hyper-parameters
    # synthesis only: the adversary optimises the deformation (and noise, if on); the bias field is drawn at random
    # (alpha ~ U[0,1], budget params.eps_bias) on top. An optimised bias field can erase the cup's pallor, the only cue
    # for the cup, so its label becomes noise; a random one keeps the appearance variation without targeting that cue.
    random_bias: bool = False


@dataclass
class DefenseConfig:
    """Input-transformation defense in front of the model (lightning_seg.defenses); conf/defense/<name>.yaml.

    One flat schema for every defense: a parameter left at None takes the defense's own default; setting a parameter
    the chosen defense does not have fails (lightning_seg.defenses.defense_from_config)."""

    name: str = "none"  # none | fr | jpeg | bit_depth | median | gaussian | random_noise
    gradient: str = "bpda"  # backward used by attacks on the defended model: bpda (identity) | exact | surrogate (cubic rounding) | ste (straight-through rounding)
    eot_samples: int = 1  # logits averaged over this many samples of a randomised defense (EOT)
    pd: Optional[float] = None  # fr: step of the priority-defense band, max(u,v) <= 1 (0..255 DCT units)
    ac: Optional[float] = None  # fr: accuracy-compensation band, 2 <= max(u,v) <= 3
    gd: Optional[float] = None  # fr: global-defense band, max(u,v) >= 4
    quality: Optional[int] = None  # jpeg: 1..100
    subsampling: Optional[bool] = None  # jpeg: 4:2:0 chroma
    bits: Optional[int] = None  # bit_depth
    rounding: Optional[str] = None  # fr, jpeg, bit_depth: exact | ste | cubic (forward rounding)
    kernel_size: Optional[int] = None  # median
    sigma: Optional[float] = None  # gaussian: pixels; random_noise: [0,1] units
    truncate: Optional[float] = None  # gaussian
    seed: Optional[int] = None  # random_noise


@dataclass
class RootConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    attack_eval: AttackEvalConfig = field(default_factory=AttackEvalConfig)
    adv_val: AdvValConfig = field(default_factory=AdvValConfig)
    adv_train: AdvTrainConfig = field(default_factory=AdvTrainConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    # attack name -> its hyper-parameters (conf/attack/<name>.yaml); validated by lightning_seg.attacks.build_attack
    attack: dict[str, Any] = field(default_factory=dict)
    # extra Trainer callbacks, name -> the callback's arguments (conf/callbacks/<name>.yaml: callbacks=[early_stopping]);
    # `target` picks the class (a lightning.pytorch.callbacks class by snake_case name, or package.module:Class), by
    # default the entry's name; null drops an entry. Built by lightning_seg.training.trainer.config_callbacks.
    callbacks: dict[str, Any] = field(default_factory=dict)


# Groups whose choice can be a list (attack=[ssm,asm,asma,dag]): each choice becomes a sub-key.
MULTI_GROUPS = ("attack", "callbacks")

# Trainer arguments the project sets: forced ones (value, why) and derived ones (what to use instead).
FORCED_TRAINER_ARGS: dict[str, tuple[Any, str]] = {
    "inference_mode": (False, ("attacks need input gradients in validate and test, and torch.inference_mode tensors "
                               "cannot require them")),
    "use_distributed_sampler": (False, ("the datamodules' own sampler splits the ranks without padding the evaluation "
                                        "sets, so multi-process metrics equal single-process ones")),
}
PROJECT_TRAINER_ARGS: dict[str, str] = {
    "callbacks": "add callbacks with the callbacks section (callbacks=[early_stopping], or "
                 "callbacks.<name>={target: package.module:Class, <argument>: <value>})",
    "logger": "choose the logger with logger=wandb|csv|none",
    "default_root_dir": "every command writes into its run folder under run.output_dir (run.name fixes its name)",
    "enable_checkpointing": "it follows the command (fit writes checkpoints/best.ckpt and last.ckpt, validate and "
                            "test write none); add a ModelCheckpoint through the callbacks section for more",
}


def conf_dir() -> Path:
    """The folder of the config groups: the package ``lightning_seg.conf``, i.e. ``conf/`` of the checkout in an
    editable install and ``lightning_seg/conf/`` in an installed wheel. It is a regular package, so ``resources.files``
    returns its folder itself (a namespace package would give a MultiplexedPath, which is not a folder path)."""
    root = resources.files("lightning_seg.conf")
    if not isinstance(root, Path) or not (root / "config.yaml").is_file():
        raise ConfigError(
            f"lightning_seg.conf ({root}) is not a folder holding config.yaml: reinstall lightning_seg unzipped "
            "(`pip install .`, or `pip install -e .` in a checkout)"
        )
    return root


def config_groups() -> dict[str, list[str]]:
    """Config group -> available choices (yaml file stems)."""
    root = conf_dir()
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*.yaml"))}


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_flat_keys(node._get_node(k), f"{full}."))
    return keys


def _suggest(key: str, cfg: DictConfig) -> str:
    close = difflib.get_close_matches(key, _flat_keys(cfg), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _merge(cfg: DictConfig, other: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)  # type: ignore[return-value]
    except ConfigKeyError as e:
        key = str(e.full_key) if getattr(e, "full_key", None) else str(e)
        raise ConfigError(f"Unknown config key '{key}' (from {origin}).{_suggest(key, cfg)}") from None
    except ValidationError as e:
        key = e.full_key or "?"
        raise ConfigError(f"Bad value for '{key}' (from {origin}): {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"Bad config (from {origin}): {str(e).splitlines()[0]}") from None


def _load_yaml(path: Path) -> DictConfig:
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return node


def _choice_list(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        return [v.strip() for v in value[1:-1].split(",") if v.strip()]
    return [value]


def split_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Separate group choices (``data=glaucoma``, ``attack=[asma,dag]``) from dotlist overrides (``data.task=disc``)."""
    groups = config_groups()
    choices: dict[str, Any] = {}
    dotlist: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. trainer.max_epochs=5 or data=glaucoma)")
        key, value = item.split("=", 1)
        if key in groups:
            values = _choice_list(value)
            if len(values) != 1 and key not in MULTI_GROUPS:
                raise ConfigError(f"{key}={value}: only one choice is allowed for {key}")
            for v in values:
                if v not in groups[key]:
                    close = difflib.get_close_matches(v, groups[key], n=1)
                    hint = f" Did you mean '{key}={close[0]}'?" if close else ""
                    raise ConfigError(f"Unknown choice {key}={v}.{hint} Choices for {key}: {', '.join(groups[key])}.")
            choices[key] = values if key in MULTI_GROUPS else values[0]
        else:
            dotlist.append(item)
    return choices, dotlist


def compose(
    overrides: list[str] | None = None, *, extra_files: list[str | Path] | None = None,
    base: dict[str, Any] | None = None, check: bool = True,
) -> DictConfig:
    """Compose the run config: schema <- conf/config.yaml <- default group files <- ``base`` <- chosen group files
    <- extra files <- overrides. ``base`` carries sections of a stored run config (e.g. the data section of the
    checkpoint being evaluated), so ``validate`` evaluates on the data the model was trained for unless told otherwise."""
    overrides = list(overrides or [])
    root = conf_dir()
    cfg: DictConfig = OmegaConf.structured(RootConfig)
    OmegaConf.set_struct(cfg.trainer, False)  # trainer.<any Trainer argument>: checked by _check_trainer
    top = _load_yaml(root / "config.yaml")
    defaults = top.pop("defaults", [])
    cfg = _merge(cfg, top, "conf/config.yaml")
    choices, dotlist = split_overrides(overrides)
    selected: dict[str, Any] = {}
    for entry in defaults if isinstance(defaults, ListConfig) else []:
        for group, choice in dict(entry).items():
            selected[str(group)] = [str(c) for c in choice] if isinstance(choice, ListConfig) else str(choice)
    if base:
        cfg = _merge_groups(cfg, root, {g: c for g, c in selected.items() if g not in choices})
        cfg = _merge(cfg, base, "the checkpoint's stored config")
        selected = dict(choices)
    else:
        selected.update(choices)
    cfg = _merge_groups(cfg, root, selected)
    for extra in extra_files or []:
        cfg = _merge(cfg, _load_yaml(Path(extra)), str(extra))
    for item in dotlist:
        key = item.split("=", 1)[0]
        cfg = _callback_preset(cfg, root, key)
        if (OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not _free_form_parent(cfg, key)
                and not _trainer_argument(key)):
            hint = _trainer_suggestion(key.split(".")[1]) if key.count(".") == 1 and key.startswith("trainer.") else _suggest(key, cfg)
            raise ConfigError(f"Unknown config key '{key}'.{hint} Run `python -m lightning_seg --help` for the groups.")
        cfg = _merge(cfg, OmegaConf.from_dotlist([_fraction(item)]), f"override {item}")
    OmegaConf.set_readonly(cfg, False)
    if check:  # False only for a first pass whose values a stored config will still replace
        check_values(cfg)
    return cfg


def _check_defenses(cfg: DictConfig, root: Path) -> None:
    """Unknown defense names / parameters fail at compose time, before anything runs."""
    names = list(cfg.attack_eval.defenses)
    from lightning_seg.defenses import defense_from_config

    choices = sorted(p.stem for p in (root / "defense").glob("*.yaml"))
    for name in names:
        if name not in choices:
            close = difflib.get_close_matches(name, choices, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"attack_eval.defenses: unknown defense {name!r}.{hint} Choices: {', '.join(choices)}.")
    try:
        defense_from_config(to_plain(cfg.defense))
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(_first_line(e)) from None


def defense_section(name: str) -> dict[str, Any]:
    """The plain ``defense`` section for ``conf/defense/<name>.yaml`` (schema defaults + that file)."""
    node = _merge(OmegaConf.structured(DefenseConfig), _defense_node(conf_dir(), name), f"conf/defense/{name}.yaml")
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _defense_node(root: Path, choice: str) -> DictConfig:
    """``conf/defense/<choice>.yaml`` over the defense's own defaults: the yaml holds only deviations."""
    node = _load_yaml(_group_file(root, "defense", choice))
    from lightning_seg.defenses import defense_defaults  # lazy: the defenses import torch

    return OmegaConf.merge(defense_defaults(str(node.get("name", choice))), node)  # type: ignore[return-value]


def _free_form_parent(cfg: DictConfig, key: str) -> bool:
    """True when ``key`` would be a new entry of a free-form mapping (``data.options.contrast``,
    ``attack_eval.target_params.delta``): those take any key and are validated by their consumer."""
    parent_key, _, _ = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else None
    return isinstance(parent, DictConfig) and parent._metadata.object_type in (None, dict)


def _callback_preset(cfg: DictConfig, root: Path, key: str) -> DictConfig:
    """``callbacks.early_stopping.patience=3`` without ``callbacks=[early_stopping]``: an override of an entry that is
    not there yet but has a preset (``conf/callbacks/<name>.yaml``) starts from that preset."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] != "callbacks" or parts[1] in cfg.callbacks:
        return cfg
    preset = root / "callbacks" / f"{parts[1]}.yaml"
    if not preset.is_file():
        return cfg
    return _merge(cfg, {"callbacks": {parts[1]: _load_yaml(preset)}}, f"conf/callbacks/{parts[1]}.yaml")


def trainer_parameters() -> dict[str, Any]:
    """Name -> ``inspect.Parameter`` of every argument of ``lightning.pytorch.Trainer``."""
    import inspect

    from lightning.pytorch import Trainer  # lazy: lightning imports torch

    return {n: p for n, p in inspect.signature(Trainer.__init__).parameters.items() if n != "self"}


def _trainer_argument(key: str) -> bool:
    """``trainer.<name>`` for a Trainer argument the schema does not type (``trainer.fast_dev_run``): accepted, and
    checked with the rest of the section by :func:`_check_trainer`."""
    parts = key.split(".")
    return len(parts) == 2 and parts[0] == "trainer" and parts[1] in trainer_parameters()


def _trainer_suggestion(name: str) -> str:
    candidates = [*(f.name for f in fields(TrainerConfig)), *trainer_parameters()]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" Did you mean 'trainer.{close[0]}'?" if close else ""


def _merge_groups(cfg: DictConfig, root: Path, selected: dict[str, Any]) -> DictConfig:
    for group, choice in selected.items():
        if group in MULTI_GROUPS:
            cfg[group] = {}  # a chosen list replaces the default list
            for c in choice:
                node = _load_yaml(_group_file(root, group, c))  # its `name` is the registered attack it configures
                if group == "attack":  # the yaml holds only deviations: the attack's own defaults fill the rest
                    from lightning_seg.attacks.config import attack_defaults  # lazy: the attacks import torch

                    node = OmegaConf.merge(attack_defaults(str(node.get("name", c))), node)
                cfg = _merge(cfg, {group: {c: node}}, f"conf/{group}/{c}.yaml")
            continue
        if group not in cfg:
            raise ConfigError(f"{group}={choice}: no '{group}' section in the config schema (lightning_seg/config.py)")
        if group == "defense":
            # a new defense replaces the previous one's parameters (e.g. the checkpoint's fr -> jpeg), keeping the
            # attacker's gradient / EOT choice
            cfg.defense = DefenseConfig(gradient=cfg.defense.gradient, eot_samples=cfg.defense.eot_samples)
        node = _defense_node(root, choice) if group == "defense" else _load_yaml(_group_file(root, group, choice))
        cfg = _merge(cfg, {group: node}, f"conf/{group}/{choice}.yaml")
    return cfg


def _group_file(root: Path, group: str, choice: str) -> Path:
    path = root / group / f"{choice}.yaml"
    if not path.is_file():
        raise ConfigError(f"No config file {path} for {group}={choice}")
    return path


def _fraction(item: str) -> str:
    """``attack.pgd.eps=8/255`` -> ``attack.pgd.eps=0.0313...`` (also inside a list ``[1/255,2/255]``): budgets are
    written on the 0-255 scale, which OmegaConf would keep as a string. Values that are not fractions (paths such as
    ``run.output_dir=/tmp/x``) stay as they are."""
    from lightning_seg.attacks._common import parse_fraction  # the one fraction parser; lazy: the attacks import torch

    def convert(v: str) -> str:
        if "/" not in v:
            return v
        try:
            return repr(parse_fraction(v))
        except (TypeError, ValueError):
            return v

    key, value = item.split("=", 1)
    if value.startswith("[") and value.endswith("]") and "/" in value:
        return f"{key}=[{','.join(convert(v.strip()) for v in value[1:-1].split(',') if v.strip())}]"
    return f"{key}={convert(value)}"


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain containers: checkpoints loaded with ``torch.load(weights_only=True)`` (the default since torch
    2.6) may hold only plain types, not OmegaConf objects."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# -- values checked when the config is composed: a bad value fails with one line that names the key, the value and
# what to write instead, before any run folder or W&B run exists. The schema types (OmegaConf) come first; then the
# rules below; then the checks of the consumers themselves (the datamodule, the attacks, the target generators, the
# adversarial-training hook, the defense), called on the composed values so that each check is written once.

Rule = tuple[Callable[[Any], bool], str]  # (test of the value, what the value must be)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _at_least(lo: int) -> Rule:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


def _number(test: Callable[[float], bool], what: str) -> Rule:
    return (lambda v: _is_number(v) and test(v)), what


def _numbers(test: Callable[[float], bool], what: str, n: int | None = None) -> Rule:
    return (lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(_is_number(x) and test(x) for x in v)), what


def _one_of(*choices: str) -> Rule:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


_FRACTION = _number(lambda v: 0 <= v < 1, "a number in [0, 1)")
_NON_NEGATIVE = _number(lambda v: v >= 0, "a number >= 0")
_BUDGETS = _numbers(lambda v: v >= 0, "a list of budgets >= 0, e.g. [1/255,4/255]")

VALUE_RULES: dict[str, Rule] = {
    "data.source": _one_of("synthetic", "folder"),
    "data.split": _one_of("random", "official"),
    "data.soft_threshold": _one_of("majority", "all", "any"),
    "data.resize": _one_of("stretch", "pad"),
    "data.cache": _one_of("none", "memory", "disk"),
    "data.image_size": _at_least(16),  # the synthetic generators' smallest size
    "data.num_train": _at_least(0), "data.num_val": _at_least(0), "data.num_test": _at_least(0),
    "data.data_seed": _at_least(0),
    "data.val_fraction": _FRACTION, "data.test_fraction": _FRACTION,
    "data.batch_size": _at_least(1), "data.eval_batch_size": _at_least(1), "data.num_workers": _at_least(0),
    "model.width": _at_least(1), "model.depth": _at_least(1),
    "model.padding": _one_of("same", "valid"), "model.norm": _one_of("batch", "group", "none"),
    "model.upsample": _one_of("transpose", "bilinear"),
    "model.mean": _numbers(lambda v: True, "3 numbers, one per RGB channel, e.g. [0.5,0.5,0.5]", n=3),
    "model.std": _numbers(lambda v: v > 0, "3 numbers > 0, one per RGB channel, e.g. [0.25,0.25,0.25]", n=3),
    "model.target": ((lambda v: v is None or (isinstance(v, str) and (":" in v or "." in v.strip(".")))),
                     "package.module:callable (an importable callable returning an nn.Module), or null"),
    "optim.lr": _number(lambda v: v > 0, "a number > 0"), "optim.weight_decay": _NON_NEGATIVE,
    "optim.warmup_fraction": _FRACTION,  # optim.name / scheduler and their params: _check_optim
    "optim.interval": ((lambda v: v in (None, "step", "epoch")), "step, epoch or null (the scheduler's own)"),
    "optim.monitor": ((lambda v: isinstance(v, str) and "/" in v), "a logged metric key such as val/dice or val/loss"),
    "trainer.max_epochs": _at_least(1), "trainer.num_nodes": _at_least(1),
    "trainer.check_val_every_n_epoch": _at_least(1), "trainer.log_every_n_steps": _at_least(1),
    "logger.name": _one_of("wandb", "csv", "none"), "logger.mode": _one_of("offline", "online", "disabled"),
    "attack_eval.split": _one_of("train", "val", "test"), "attack_eval.num_images": ((lambda v: v is None or _at_least(1)[0](v)),
                               "an integer >= 1, or null for the whole split"),
    "attack_eval.batch_size": _at_least(1), "attack_eval.target_base": _one_of("label", "prediction"),
    "attack_eval.panels": _at_least(0), "attack_eval.up_train_batches": _at_least(1),
    "attack_eval.eps_sweep": _BUDGETS, "attack_eval.sweep_steps": _at_least(1),
    "attack_eval.min_budget.level": _number(lambda v: 0 < v <= 1, "a Dice level in (0, 1]"),
    "attack_eval.min_budget.eps_max": _number(lambda v: v > 0, "a budget > 0, e.g. 16/255"),
    "attack_eval.min_budget.attack": _one_of("apgd", "pgd"), "attack_eval.min_budget.steps": _at_least(1),
    "attack_eval.min_budget.restarts": _at_least(1), "attack_eval.min_budget.bisection_steps": _at_least(1),
    "adv_val.every_n_epochs": _at_least(1), "adv_val.max_batches": _at_least(1), "adv_val.log_images": _at_least(0),
    "adv_val.eps_sweep": _BUDGETS, "adv_val.sweep_steps": _at_least(1),
    "adv_train.eps": _NON_NEGATIVE, "adv_train.steps": _at_least(1),
    "adv_train.ratio": _number(lambda v: 0 < v <= 1, "a number in (0, 1]"),
}


def check_values(cfg: DictConfig) -> None:
    """Every check of a composed config (``compose`` calls it): raises one :class:`ConfigError` for the first bad value."""
    for key, (ok, must) in VALUE_RULES.items():
        value = _plain(OmegaConf.select(cfg, key))
        if not ok(value):
            raise ConfigError(f"{key}={_show(value)} is not valid: use {must}")
    _check_relations(cfg)
    _check_trainer(cfg)
    _check_optim(cfg)
    _check_callbacks(cfg)
    _check_defenses(cfg, conf_dir())
    _check_datamodule(cfg)
    _check_model(cfg)
    _check_loss(cfg)
    _check_attacks(cfg)
    _check_targets(cfg)
    _check_adv_train(cfg)


def _check_relations(cfg: DictConfig) -> None:
    """Rules between values. Empty splits are not checked here: which splits must hold images depends on the command
    (``fit`` reads train and val, ``test`` only test, ``attack`` its ``attack_eval.split``), so the datamodule checks
    the ones a command reads when it is set up (``SegmentationDataModule.setup`` / ``require``), before any run
    folder of validate / test / attack."""
    d, run = cfg.data, cfg.run
    if run.weights and run.ckpt:
        raise ConfigError(f"run.weights={run.weights} and run.ckpt={run.ckpt} both choose the weights to evaluate: drop "
                          "one (run.ckpt: a lightning_seg checkpoint, with its own model and data; run.weights: weights "
                          "trained elsewhere, for the model section of the command line)")
    if run.weights and not Path(run.weights).expanduser().is_file():
        raise ConfigError(f"run.weights={run.weights} is not a file: give a state dict (.pt / .pth / .bin), a "
                          ".safetensors file or a TorchScript file")
    if d.source == "folder" and d.root and not Path(d.root).expanduser().is_dir():
        raise ConfigError(f"data.root={d.root!r} is not a folder: give the folder that holds the {d.name} data")
    if cfg.attack_eval.target == "other_image" and (cfg.attack_eval.num_images or 2) < 2:
        raise ConfigError(f"attack_eval.num_images={cfg.attack_eval.num_images} is not valid for attack_eval.target="
                          "other_image, which aims each image at another image's mask: use attack_eval.num_images >= 2")


def _check_trainer(cfg: DictConfig) -> None:
    """Every ``trainer`` key the schema does not type is an argument of ``lightning.pytorch.Trainer`` (closest match
    otherwise), of a type its annotation allows, and none that the project sets itself."""
    typed = {f.name for f in fields(TrainerConfig)}
    parameters = trainer_parameters()
    for key_name in cfg.trainer:
        name = str(key_name)
        if name in typed:
            continue
        key, value = f"trainer.{name}", _plain(cfg.trainer[name])
        if name in PROJECT_TRAINER_ARGS:
            raise ConfigError(f"{key} cannot be set: lightning_seg sets it; {PROJECT_TRAINER_ARGS[name]}")
        if name in FORCED_TRAINER_ARGS:
            forced, why = FORCED_TRAINER_ARGS[name]
            if value is not forced:
                raise ConfigError(f"{key}={_show(value)} is not allowed: every Trainer is built with "
                                  f"{name}={_show(forced)}: {why}")
            continue
        if name not in parameters:
            raise ConfigError(f"Unknown config key '{key}': neither a key of the trainer section nor an argument of "
                              f"lightning.pytorch.Trainer.{_trainer_suggestion(name)}")
        expected = argument_problem(value, parameters[name], _trainer_init())
        if expected:
            raise ConfigError(f"{key}={_show(value)} is not valid: use {expected}")


def _trainer_init() -> Callable[..., Any]:
    from lightning.pytorch import Trainer

    return Trainer.__init__


def _check_optim(cfg: DictConfig) -> None:
    """The optimiser and scheduler build (lightning_seg.training.optim.check_optim)."""
    from lightning_seg.training.optim import check_optim  # lazy: imports torch

    try:
        check_optim(OptimConfig(**to_plain(cfg.optim)))
    except (TypeError, ValueError) as e:
        raise ConfigError(_first_line(e)) from None


def _check_callbacks(cfg: DictConfig) -> None:
    """Every ``callbacks`` entry builds (lightning_seg.training.trainer.config_callbacks raises one ConfigError line)."""
    if not cfg.callbacks:
        return
    from lightning_seg.training.trainer import config_callbacks  # lazy: imports lightning

    config_callbacks(cfg)


def argument_problem(value: Any, parameter: Any, owner: Callable[..., Any]) -> str | None:
    """``None`` when a config value fits the annotation of ``parameter`` (an ``inspect.Parameter`` of ``owner``), else
    what to give instead. Annotations naming other classes than bool, int, float, str and None (tensors, timedelta,
    strategies) are not checked here: the owner checks such values itself."""
    from lightning_seg.attacks.config import resolve_annotation, value_problem  # lazy: the attacks import torch

    return value_problem(value, _config_type(resolve_annotation(parameter.annotation, owner)), fractions=False)


def _config_type(tp: Any) -> Any:
    import collections.abc
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (bool, int, float, str, type(None)) or origin is typing.Literal:
        return tp
    if origin in (typing.Union, types.UnionType):
        return Any if any(_config_type(a) is Any for a in args) else tp
    if origin in (list, tuple, collections.abc.Sequence) and args:
        return tp if all(a is Ellipsis or _config_type(a) is not Any for a in args) else Any
    return Any


def check_arguments(where: str, target: Callable[..., Any], given: dict[str, Any], *, skip: tuple[str, ...] = (),
                    taken: dict[str, str] | None = None, filled: Any = ()) -> list[str]:
    """Check the keyword arguments ``given`` (from the config key ``where``) of ``target`` (a class: its ``__init__``):
    each is a parameter (one ConfigError line with the closest match otherwise; ``taken``: parameters set by another
    key, named in the error) of a type its annotation allows. Returns the required parameters neither given nor
    ``filled`` by the caller."""
    import inspect

    init = target.__init__ if isinstance(target, type) else target
    signature = inspect.signature(init).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.values())
    parameters = {n: p for n, p in signature.items()
                  if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    name_of = getattr(target, "__name__", str(target))
    for name, value in given.items():
        if taken and name in taken:
            raise ConfigError(f"{where}.{name}: set {taken[name]} instead")
        if name not in parameters:
            if open_ended and name not in skip:
                continue
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}.{name}: {name_of} has no parameter {name!r}.{hint} "
                              f"Its parameters: {', '.join(parameters) or 'none'}.")
        expected = argument_problem(value, parameters[name], init)
        if expected:
            raise ConfigError(f"{where}.{name}={_show(value)} is not valid: use {expected}")
    return [n for n, p in parameters.items()
            if p.default is p.empty and n not in given and n not in filled and (not taken or n not in taken)]


def _check_model(cfg: DictConfig) -> None:
    """The model section builds: a registered name, or a monai./smp./model.target network (installed, its class,
    model.params against its signature, one forward pass of a blank data.image_size image on the CPU)."""
    from lightning_seg.models import check_model_config  # lazy: imports torch
    from lightning_seg.tasks import get_task

    try:
        check_model_config(to_plain(cfg.model), get_task(cfg.data.task).num_classes, cfg.data.image_size)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(_first_line(e)) from None


def _check_loss(cfg: DictConfig) -> None:
    """The loss's own check of its weights (>= 0, not both 0)."""
    from lightning_seg.tasks import get_task
    from lightning_seg.training.loss import DiceCELoss  # lazy: imports torch

    try:
        DiceCELoss(get_task(cfg.data.task), **to_plain(cfg.loss))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss: {_first_line(e)}; set loss.dice_weight / loss.ce_weight >= 0, not both 0") from None


def _check_datamodule(cfg: DictConfig) -> None:
    """The datamodule's own checks (data.task of this data set, data.root for folders, data.options, fractions): it
    is only constructed here, no data is read."""
    from lightning_seg.datamodules import build_datamodule  # lazy: the datamodules import lightning
    from lightning_seg.registry import UnknownNameError

    data = to_plain(cfg.data)
    try:
        build_datamodule(data.pop("name"), seed=cfg.seed, **data)
    except UnknownNameError as e:
        raise ConfigError(f"data.name={_show(cfg.data.name)}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(_first_line(e)) from None


def _check_attacks(cfg: DictConfig) -> None:
    """Every ``attack`` section builds (unknown parameters, values that do not fit the attack function's annotation:
    ``attack.asma.step=foo``), and so do the attacks named by ``adv_val.attack`` and ``attack_eval.sweep_attacks``."""
    from lightning_seg.attacks import build_attack, build_named_attack, default_alpha  # lazy: the attacks import torch

    sections = to_plain(cfg.attack)
    for key, section in sections.items():
        params = dict(section)
        name = params.pop("name", key)
        _build_or_fail(f"attack.{key}", lambda: build_attack(name, **params), per_param=True)
    _build_or_fail(f"adv_val.attack={_show(cfg.adv_val.attack)}", lambda: build_named_attack(cfg.adv_val.attack, sections))
    eps, steps = 4 / 255, cfg.attack_eval.sweep_steps  # any budget: the sweep builds its attacks as the robustness sweep does
    for name in cfg.attack_eval.sweep_attacks:
        _build_or_fail(f"attack_eval.sweep_attacks={_show(list(cfg.attack_eval.sweep_attacks))}", lambda: build_named_attack(
            name, sections, eps=eps, alpha=default_alpha(eps, steps), steps=steps, targeted=False))


def _build_or_fail(where: str, build: Callable[[], Any], per_param: bool = False) -> None:
    """``build()``, or one ConfigError naming ``where`` (and the parameter, for ``per_param``: ``attack.asma.step``)."""
    from lightning_seg.attacks.config import AttackParamError
    from lightning_seg.registry import UnknownNameError

    try:
        build()
    except AttackParamError as e:
        if per_param and e.expected is not None:
            raise ConfigError(f"{where}.{e.param}={_show(e.value)} is not valid: use {e.expected}") from None
        raise ConfigError(f"{where}.{e.param}: {e}" if per_param else f"{where}: {e}") from None
    except (TypeError, ValueError, UnknownNameError) as e:
        raise ConfigError(f"{where}: {_first_line(e)}") from None


def _check_targets(cfg: DictConfig) -> None:
    """Target generators are registered; ``attack_eval.target_params`` are parameters of the chosen one, of the types
    its signature gives, and values it accepts (it is run once on a small probe mask)."""
    import inspect

    import torch

    from lightning_seg.attacks.config import resolve_annotation, value_problem
    from lightning_seg.attacks.targets import TARGETS, make_target
    from lightning_seg.registry import UnknownNameError

    for key in ("attack_eval.target", "adv_val.target", "adv_train.target"):
        try:
            TARGETS.get(OmegaConf.select(cfg, key))
        except UnknownNameError as e:
            raise ConfigError(f"{key}={_show(OmegaConf.select(cfg, key))}: {e}") from None
    target, params = cfg.attack_eval.target, to_plain(cfg.attack_eval.target_params)
    if not params:
        return
    if target == "other_image":  # the attack command pairs images by a seeded derangement (attack_eval.seed)
        raise ConfigError(f"attack_eval.target_params={_show(params)} is not valid for attack_eval.target=other_image, "
                          "which takes no parameters (attack_eval.seed seeds the pairing): remove them")
    fn = TARGETS.get(target)
    signature = inspect.signature(fn).parameters
    valid = [p for p in signature if p not in ("masks", "generator")]
    for name, value in params.items():
        key = f"attack_eval.target_params.{name}"
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}: target {target!r} has no parameter {name!r}.{hint} "
                              f"Its parameters: {', '.join(valid) or 'none'}.")
        expected = value_problem(value, resolve_annotation(signature[name].annotation, fn), fractions=False)
        if expected:
            raise ConfigError(f"{key}={_show(value)} is not valid: use {expected}")
    probe = torch.zeros(2, 16, 16, dtype=torch.long)
    probe[:, 3:13, 3:13], probe[:, 6:10, 6:10] = 1, 2  # a disc with a cup; a lesion for the lesion edits
    try:
        make_target(target, probe, generator=torch.Generator().manual_seed(0), **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"attack_eval.target_params={_show(params)} for target {target!r}: {_first_line(e)}") from None


def _check_adv_train(cfg: DictConfig) -> None:
    """The adversarial-training hook's own checks (attack name, its params, random_bias), also when it is off: `fit`
    and `adv-train` share the config."""
    from lightning_seg.attacks.config import AttackParamError
    from lightning_seg.registry import UnknownNameError
    from lightning_seg.training.adversarial_hook import AdversarialTrainingHook  # lazy: imports torch

    section = to_plain(cfg.adv_train)
    try:
        AdversarialTrainingHook(**section)
    except AttackParamError as e:
        key = f"adv_train.params.{e.param}" if e.param in section["params"] else f"adv_train.{e.param}"
        if e.expected is not None:
            raise ConfigError(f"{key}={_show(e.value)} is not valid: use {e.expected}") from None
        raise ConfigError(f"{key}: {e}") from None
    except UnknownNameError as e:
        raise ConfigError(f"adv_train.attack={_show(section['attack'])}: {e}") from None
    except (TypeError, ValueError) as e:
        message = _first_line(e)
        raise ConfigError(message if message.startswith("adv_train.") else f"adv_train: {message}") from None


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _show(value: Any) -> str:
    """A value as it is written in a config: 'foo', 0.5, [0,0,0], null, true."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return f"[{','.join(_show(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without the quotes its str() adds)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__
