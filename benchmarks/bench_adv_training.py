"""Cost of adversarial training and of the adversarial validation callback, measured side by side.

For the same model, data and seed: one clean training epoch, then one epoch with the k-step PGD
training hook, for k in --steps. Prints seconds and the ratio to the clean epoch next to the target
(k + 1.3); then the time one validation epoch takes with and without the attack callback.
Not a test: the numbers depend on the machine. Run: ``python benchmarks/bench_adv_training.py``.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from lightning_seg.callbacks.adversarial_validation import AdversarialValidation

from lightning_seg.config import compose, to_plain
from lightning_seg.training.module import SegmentationModule
from lightning_seg.training.trainer import build_datamodule_from


def _trainer(callbacks=(), epochs: int = 1) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
                      use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))


def _epoch_seconds(cfg, adv_train: dict | None) -> float:
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(model=to_plain(cfg.model), task=cfg.data.task, optim=to_plain(cfg.optim), adv_train=adv_train)
    dm = build_datamodule_from(cfg)
    dm.setup()
    _trainer().fit(module, datamodule=dm)  # warm-up epoch (allocator, oneDNN kernels)
    start = time.perf_counter()
    _trainer().fit(module, datamodule=dm)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3])
    parser.add_argument("overrides", nargs="*", default=["data.num_train=64", "data.num_val=32"])
    args = parser.parse_args()
    cfg = compose(args.overrides)
    clean = _epoch_seconds(cfg, None)
    print(f"model {cfg.model.name} width {cfg.model.width} depth {cfg.model.depth}, {cfg.data.num_train} images of "
          f"{cfg.data.image_size} px, batch {cfg.data.batch_size}, threads {torch.get_num_threads()}")
    print(f"{'epoch':<22}{'seconds':>9}{'x clean':>9}{'target':>9}")
    print(f"{'clean':<22}{clean:>9.2f}{1.0:>9.2f}{'':>9}")
    for k in args.steps:
        adv = {"enabled": True, "attack": "pgd", "eps": 4 / 255, "steps": k}
        t = _epoch_seconds(cfg, adv)
        print(f"{f'PGD-{k} adversarial':<22}{t:>9.2f}{t / clean:>9.2f}{f'<= {k + 1.3:.1f}':>9}")
    # validation epoch with / without the attack callback, configured as adv_val (default: 2 batches per epoch)
    module = SegmentationModule(model=to_plain(cfg.model), task=cfg.data.task)
    dm = build_datamodule_from(cfg)
    times = {}
    for name, callbacks in (("validation", []), ("validation + ASMA callback", [AdversarialValidation(cfg.adv_val.attack, to_plain(cfg.attack), max_batches=cfg.adv_val.max_batches)])):
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=False,
                             use_distributed_sampler=False, enable_checkpointing=False, callbacks=callbacks)
        start = time.perf_counter()
        trainer.validate(module, datamodule=dm, verbose=False)
        times[name] = time.perf_counter() - start
    for name, t in times.items():
        print(f"{name:<28}{t:>9.2f} s per validation epoch ({cfg.data.num_val} images)")


if __name__ == "__main__":
    main()
