"""Command line: ``python -m lightning_seg <command> [group=choice ...] [key=value ...]``.

A thin layer over plain functions (:mod:`lightning_seg.commands`); argparse takes the command and
``--config`` files, OmegaConf takes the ``key=value`` overrides (typed, so a bad key fails with one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from lightning_seg.config import AdvTrainConfig, ConfigError, RootConfig, config_groups

ROOT_SECTIONS = set(RootConfig.__dataclass_fields__)
_AT = AdvTrainConfig()  # the help states the adversarial-training defaults from their one place

COMMANDS: dict[str, str] = {
    "demo": "the main job on the embedded synthetic data: fit ISIC and glaucoma segmenters, write a summary",
    "fit": "train a segmenter (resume with run.resume=last)",
    "validate": "evaluate a checkpoint on the validation split (run.ckpt=..., default: latest fit run)",
    "test": "evaluate a checkpoint on the test split",
    "adv-train": f"fit with the adversarial-training hook ({_AT.attack.upper()} eps {_AT.eps * 255:g}/255, {_AT.steps} steps; "
                 "adv_train.*); run.init_from=latest fine-tunes",
    "attack": "attack a checkpoint (default: latest fit run) with attack=[ssm,asm,asma,dag]; Table-1 report + panels",
}


def _parser() -> argparse.ArgumentParser:
    groups = {g: c for g, c in config_groups().items() if g in ROOT_SECTIONS}
    epilog = ["config groups (choose with group=choice; attack takes a list: attack=[asma,dag]):"]
    epilog += [f"  {g:<10} {', '.join(c)}" for g, c in groups.items()]
    epilog += [
        "",
        "overrides: dotted keys, e.g. trainer.max_epochs=5 data.batch_size=8 logger=csv",
        "examples:",
        "  python -m lightning_seg fit data=glaucoma trainer.max_epochs=5",
        "  python -m lightning_seg fit trainer=ddp_cpu            # DDP simulated on CPU, 2 processes",
        "  python -m lightning_seg fit run.resume=last            # continue the latest interrupted run",
        "  python -m lightning_seg test run.ckpt=runs/fit/isic-20260101-120000",
        "schemas with every key and its default: lightning_seg/config.py",
    ]
    parser = argparse.ArgumentParser(
        prog="python -m lightning_seg",
        description="Attack, defend and robustly train biomedical segmentation models.",
        epilog="\n".join(epilog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog="\n".join(epilog), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", action="append", default=[], metavar="FILE", help="extra YAML merged before the overrides")
        p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown option(s) {' '.join(unknown)}; config values are given as key=value")
    from lightning_seg.runs import NoRunError

    try:
        from lightning_seg.commands.compose import compose_for  # lazy: --help needs no torch / lightning

        cfg = compose_for(args.command, overrides, args.config)
        if args.print_config:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        from lightning_seg.commands.attack import attack
        from lightning_seg.commands.demo import demo
        from lightning_seg.commands.evaluate import evaluate
        from lightning_seg.commands.fit import adv_train, fit

        runners: dict[str, Callable[[Any], dict[str, Any]]] = {
            "demo": lambda c: demo(overrides),
            "fit": fit,
            "validate": lambda c: evaluate(c, "validate"),
            "test": lambda c: evaluate(c, "test"),
            "attack": attack,
            "adv-train": adv_train,
        }
        result = runners[args.command](cfg)
    except KeyboardInterrupt as e:  # Ctrl-C: commands keep what finished; no traceback
        print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    except (ConfigError, NoRunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # data errors etc.: one clear message, no traceback wall
        from lightning_seg.datamodules.layouts import DataError

        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    print(_summary(result))
    return 0


def _summary(result: dict[str, Any]) -> str:
    if result["command"] == "attack":
        return f"{result['table']}\n\nattack: run folder {result['run_dir']}"
    if result["command"] == "demo":
        return f"{result['table']}\n\nsummary: {result['run_dir']}/summary.md  ({result['total_seconds']:.0f} s in total)"
    lines = [f"{result['command']}: run folder {result['run_dir']}"]
    for key, value in result.get("metrics", {}).items():
        if key.split("/")[0] in ("val", "test") and not key.endswith("_step"):
            lines.append(f"  {key:<22} {value:.4f}")
    return "\n".join(lines)
