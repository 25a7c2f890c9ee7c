"""Train-loader throughput on full-size images with and without the decode cache (not a test; one run, side by side).

    PYTHONPATH=. python benchmarks/loader_throughput.py [--isic 24] [--refuge 18] [--image-size 96] [--workers 0 2]

Writes ISIC 2018-sized JPEGs (750 x 1000, official names) and REFUGE-sized fundus photographs (2056 x 2124 .jpg with
grey-coded .bmp masks) with ``tests/helpers/fake_trees.py`` into a temporary folder (or ``--root``), puts every pair in
the train split, and for each data set, ``data.cache`` and ``data.num_workers`` measures:

* ``setup s``: ``datamodule.setup()``: discovery, the check that decodes every pair (and fills the cache);
  ``disk (warm)`` is a second run over the same cache folder: valid entries skip the decode;
* ``epoch 1`` / ``epoch 2``: images/s of one epoch of the augmented train loader (``data.batch_size`` 16, the
  default; worker start-up included, as in training: ``persistent_workers=False``);
* ``x none``: epoch-2 images/s over those of ``cache=none`` with the same number of workers;
* ``MiB``: memory of the memory cache (``pad`` would store less: only the image region).

Every configuration runs in this one process, one after the other, so the ratios compare like with like on a shared
machine; absolute numbers move with the load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from lightning_seg.datamodules import build_datamodule

from tests.helpers.fake_trees import ISIC2018_SIZE, REFUGE_SIZE, make_isic_tree, make_refuge_tree

MODES = ("none", "memory", "disk", "disk (warm)")


def make_trees(root: Path, n_isic: int, n_refuge: int) -> dict[str, Path]:
    """ISIC 2018 (``n_isic`` pairs, rounded to a multiple of 3) and REFUGE (``n_refuge``, a multiple of 6)."""
    make_isic_tree(root / "isic", 2018, n_per_split=max(1, n_isic // 3), size=ISIC2018_SIZE)
    make_refuge_tree(root / "refuge", n_per_group=max(1, n_refuge // 6), size=REFUGE_SIZE)
    return {"isic": root / "isic", "glaucoma": root / "refuge"}


def measure(name: str, root: Path, mode: str, workers: int, image_size: int, cache_dir: Path) -> dict:
    dm = build_datamodule(name, source="folder", root=str(root), image_size=image_size, val_fraction=0.0,
                          test_fraction=0.0, cache=mode.split()[0], cache_dir=str(cache_dir), num_workers=workers)
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the data line; every pair is in train, none in val
        dm.setup()
    row = {"setup": time.perf_counter() - t, "n": len(dm.split_ids["train"])}
    loader = dm.train_dataloader()
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        t = time.perf_counter()
        count = sum(len(batch["key"]) for batch in loader)
        row[f"epoch {epoch}"] = count / (time.perf_counter() - t)
    cache = dm.source.load.cache
    row["MiB"] = cache.nbytes / 2**20 if mode == "memory" else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isic", type=int, default=24, help="ISIC 2018-sized pairs (multiple of 3)")
    ap.add_argument("--refuge", type=int, default=18, help="REFUGE-sized pairs (multiple of 6)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--root", type=Path, default=None, help="where to write the trees (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.root or Path(tmp)
        t = time.perf_counter()
        trees = make_trees(base, args.isic, args.refuge)
        print(f"wrote the trees in {time.perf_counter() - t:.1f} s; image_size {args.image_size}, data.resize=stretch, "
              "augment on, batch 16")
        header = (f"{'data':9s} {'pairs':>5s} {'workers':>7s} {'cache':12s} {'setup s':>8s} {'epoch 1':>8s} "
                  f"{'epoch 2':>8s} {'x none':>7s} {'MiB':>6s}")
        print(header)
        for name, root in trees.items():
            for workers in args.workers:
                cache_dir = Path(tmp) / f"cache-{name}-{workers}"  # cold for "disk", then warm for "disk (warm)"
                rows = {mode: measure(name, root, mode, workers, args.image_size, cache_dir) for mode in MODES}
                for mode, r in rows.items():
                    ratio = r["epoch 2"] / rows["none"]["epoch 2"]
                    mib = f"{r['MiB']:6.1f}" if r["MiB"] is not None else f"{'':6s}"
                    print(f"{name:9s} {r['n']:5d} {workers:7d} {mode:12s} {r['setup']:8.2f} {r['epoch 1']:8.1f} "
                          f"{r['epoch 2']:8.1f} {ratio:7.1f} {mib}")


if __name__ == "__main__":
    main()
