"""Real-size images: ISIC 2018-sized JPEGs (about 1000 x 750, the official file names) and REFUGE-sized fundus
photographs (2124 x 2056, non-square) through the loaders and the commands; the decode cache (``data.cache``): one
decode per pair at setup, bit-identical samples with and without it, DataLoader workers and DDP spawn, invalidation
when a file changes, one entry per decode setting."""

from __future__ import annotations

import csv
import math
import os
import pickle
import shutil
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing  # registers the shared-memory reductions of tensors in ForkingPickler
from lightning.pytorch.callbacks import Callback
from lightning_seg.datamodules import build_datamodule, layouts
from lightning_seg.datamodules.layouts import checks
from lightning_seg.datamodules.transforms import padded_size
from PIL import Image

from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.evaluate import evaluate
from lightning_seg.commands.fit import fit
from lightning_seg.config import ConfigError, compose
from tests.helpers.fake_trees import (
    ISIC2018_SIZE,
    REFUGE_SIZE,
    FakeTree,
    fake_disc_cup,
    fake_lesion,
    fake_photo,
    make_isic_tree,
    make_refuge_tree,
    save,
)

SIZE = 64  # data.image_size of these tests


@pytest.fixture(scope="module")
def isic(tmp_path_factory: pytest.TempPathFactory) -> FakeTree:
    """ISIC 2018 Task 1: 2 train, 2 validation, 2 test pairs of 750 x 1000 (H x W)."""
    return make_isic_tree(tmp_path_factory.mktemp("isic2018"), 2018, n_per_split=2, size=ISIC2018_SIZE)


@pytest.fixture(scope="module")
def refuge(tmp_path_factory: pytest.TempPathFactory) -> FakeTree:
    """REFUGE: 2 train (g/n), 2 validation, 2 test pairs of 2056 x 2124 (H x W), .jpg + grey-coded .bmp."""
    return make_refuge_tree(tmp_path_factory.mktemp("refuge"), n_per_group=1, size=REFUGE_SIZE)


def _dm(name: str, root: Path, **kw: object):
    args: dict = {"source": "folder", "root": str(root), "image_size": SIZE, "split": "official", "batch_size": 2,
                  "eval_batch_size": 2}
    return build_datamodule(name, **{**args, **kw})


def _batches(dm, epochs: int = 2) -> list[dict]:
    """Two epochs of the (augmented) train loader, then the validation loader."""
    out = []
    loader = dm.train_dataloader()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += list(loader)
    return out + list(dm.val_dataloader())


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        for k in ("image", "mask", "valid", "orig_size"):
            assert torch.equal(x[k], y[k]), k


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Record the keys decoded by the setup check and by the loaders (the two places that call load_pair)."""
    seen: dict[str, list[str]] = {"setup": [], "load": []}
    for where, module in (("setup", checks), ("load", layouts)):
        original = module.load_pair

        def counted(record, task, *, soft_threshold="majority", _where=where, _original=original):
            seen[_where].append(record.key)
            return _original(record, task, soft_threshold=soft_threshold)

        monkeypatch.setattr(module, "load_pair", counted)
    return seen


def _no_file_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(record, *args, **kwargs):
        raise AssertionError(f"{record.key} decoded from its file after setup")

    monkeypatch.setattr(layouts, "load_pair", fail)  # forked DataLoader workers inherit the patch


# ----------------------------------------------------------------------------- the trees


def test_trees_have_the_official_names_and_the_real_sizes(isic: FakeTree, refuge: FakeTree):
    image = isic.root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg"
    mask = isic.root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png"
    assert isic.images["ISIC_0000000"] == image and isic.masks["ISIC_0000000"]["mask"] == mask
    assert (isic.root / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0000002.jpg").is_file()
    assert (isic.root / "ISIC2018_Task1_Test_GroundTruth" / "ISIC_0000005_segmentation.png").is_file()
    with Image.open(image) as im, Image.open(mask) as m:
        assert (im.format, im.size, m.format, m.size) == ("JPEG", (1000, 750), "PNG", (1000, 750))
    fundus = refuge.root / "Training400" / "Glaucoma" / "g0001.jpg"
    disc_cup = refuge.root / "Annotation-Training400" / "Disc_Cup_Masks" / "Glaucoma" / "g0001.bmp"
    with Image.open(fundus) as im, Image.open(disc_cup) as m:
        assert (im.format, im.size, m.format, m.size) == ("JPEG", (2124, 2056), "BMP", (2124, 2056))
        assert set(np.unique(np.asarray(m)).tolist()) == {0, 128, 255}
    for name, tree, layout in (("isic", isic, "isic2018"), ("glaucoma", refuge, "refuge")):
        d = _dm(name, tree.root).describe()
        assert (d["layout"], d["counts"], d["cache"]) == (layout, {"train": 2, "val": 2, "test": 2}, "memory")


# ----------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("name, resize", [("isic", "stretch"), ("glaucoma", "pad")])
def test_cache_modes_and_workers_give_bit_identical_batches(name: str, resize: str, isic: FakeTree, refuge: FakeTree,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    tree = isic if name == "isic" else refuge
    reference = _dm(name, tree.root, resize=resize, cache="none")
    expected = _batches(reference)
    h, w = ISIC2018_SIZE if name == "isic" else REFUGE_SIZE
    for batch in expected:  # orig_size is the size of the file, not of the cached arrays
        assert batch["orig_size"].tolist() == [[h, w]] * len(batch["key"])
        valid = SIZE * SIZE if resize == "stretch" else math.prod(padded_size(h, w, SIZE))
        assert batch["valid"].flatten(1).sum(1).tolist() == [valid] * len(batch["key"])
    # the batches hold the ground truth (no misalignment): a nearest-resized analytic mask, exactly on eval
    truth = (fake_lesion if name == "isic" else fake_disc_cup)(h, w)
    val = expected[-1]["mask"][0]
    if resize == "stretch":
        resized = np.asarray(Image.fromarray(truth).resize((SIZE, SIZE), Image.NEAREST))
        assert (val.numpy() != resized).mean() < 0.02
    assert set(val.unique().tolist()) == ({0, 1} if name == "isic" else {0, 1, 2})
    dms = [_dm(name, tree.root, resize=resize, cache=c, cache_dir=str(tmp_path / "cache")) for c in ("memory", "disk")]
    for dm in dms:
        dm.setup("fit")
    _no_file_reads(monkeypatch)  # from here on every sample comes from the cache, in this process and in the workers
    for dm in dms:
        for workers in (0, 2):  # forked DataLoader workers read the cache set up in this process
            dm.num_workers = workers
            _assert_same(_batches(dm), expected)


def test_setup_decodes_each_pair_once_and_spawned_processes_share_the_cache(isic: FakeTree, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    seen = _count_decodes(monkeypatch)
    dm = _dm("isic", isic.root)  # data.cache=memory, the default
    dm.setup("fit")
    assert sorted(seen["setup"]) == isic.keys and seen["load"] == []  # the check's decode fills the cache
    cache = dm.source.load.cache
    assert cache.nbytes == cache.block.numel() == 6 * SIZE * SIZE * 4  # 3 bytes of image + 1 of mask per input pixel
    batches = _batches(dm)
    assert seen["load"] == [] and sorted(seen["setup"]) == isic.keys
    # DDP spawn and spawn/forkserver DataLoader workers pickle the datamodule with multiprocessing's pickler: the cache
    # travels as a shared-memory handle (not its bytes) and the receiving process decodes nothing
    blob = bytes(ForkingPickler.dumps(dm))
    assert len(blob) < cache.nbytes / 4
    spawned = ForkingPickler.loads(blob)
    assert spawned.source.load.cache.block.is_shared() and cache.block.is_shared()
    _assert_same(_batches(dm), batches)  # the sender's cache moved into shared memory: still read correctly
    spawned.setup("fit")
    _assert_same(_batches(spawned), batches)
    assert seen["load"] == [] and sorted(seen["setup"]) == isic.keys
    copied = pickle.loads(pickle.dumps(dm))  # a plain pickle copies the arrays
    _assert_same(_batches(copied), batches)
    disk = _dm("isic", isic.root, cache="disk", cache_dir=str(tmp_path / "cache"))
    disk.setup("fit")
    _assert_same(_batches(ForkingPickler.loads(bytes(ForkingPickler.dumps(disk)))), batches)  # entries by file name
    assert seen["load"] == []
    # without a cache every access decodes the full file again
    seen["setup"].clear()
    plain = _dm("isic", isic.root, cache="none")
    plain.setup("fit")
    assert sorted(seen["setup"]) == isic.keys
    _assert_same(_batches(plain), batches)
    assert len(seen["load"]) == sum(len(b["key"]) for b in batches)


def test_disk_cache_is_reused_invalidated_by_a_changed_file_and_keyed_by_settings(isic: FakeTree, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "isic"
    shutil.copytree(isic.root, root)
    cache_dir = tmp_path / "cache"
    seen = _count_decodes(monkeypatch)

    def setup(**kw: object):
        seen["setup"].clear()
        dm = _dm("isic", root, cache="disk", cache_dir=str(cache_dir), **kw)
        dm.setup("fit")
        return dm

    def entries() -> dict[str, set[str]]:
        return {d.name: {p.name for p in d.glob("*.pair")} for d in cache_dir.iterdir()}

    first = setup()
    assert sorted(seen["setup"]) == isic.keys
    (folder, names), = entries().items()
    assert folder.startswith(f"lesion-stretch{SIZE}-majority-") and len(names) == 6
    before = first.dataset("val")[(0, 0)]
    # a second run decodes nothing: every entry was checked when it was written and its files are unchanged
    assert setup().dataset("val")[(0, 0)]["image"].equal(before["image"]) and seen["setup"] == []
    # a changed file (new content, new mtime) misses: decoded and checked again, its stale entry replaced
    key = before["key"]
    path = root / "ISIC2018_Task1-2_Validation_Input" / f"{key}.jpg"
    stat = path.stat()
    save(path, fake_photo(*ISIC2018_SIZE, seed=99))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    changed = setup()
    assert seen["setup"] == [key]
    assert len(entries()[folder]) == 6 and entries()[folder] != names
    after = changed.dataset("val")[(0, 0)]
    assert not after["image"].equal(before["image"])
    assert after["image"].equal(_dm("isic", root, cache="none").dataset("val")[(0, 0)]["image"])
    # so does a changed mask
    mask = root / "ISIC2018_Task1_Validation_GroundTruth" / f"{key}_segmentation.png"
    mask.write_bytes(mask.read_bytes())
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 4_000_000_000))
    setup()
    assert seen["setup"] == [key]
    # the settings are part of the key: another image size or resize mode makes new entries next to the old ones
    other = setup(image_size=48)
    assert sorted(seen["setup"]) == isic.keys and other.dataset("val")[(0, 0)]["image"].shape == (3, 48, 48)
    setup(resize="pad")
    assert sorted(seen["setup"]) == isic.keys
    assert sorted(entries()) == sorted([folder, folder.replace(f"stretch{SIZE}", "stretch48"),
                                        folder.replace(f"stretch{SIZE}", f"pad{SIZE}")])
    assert all(len(v) == 6 for v in entries().values())
    # a damaged entry is decoded again instead of failing
    damaged = next(iter((cache_dir / folder).glob("*.pair")))
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    dm = setup()
    assert seen["setup"] == [] and all(dm.dataset(s)[(i, 0)]["image"].shape == (3, SIZE, SIZE)
                                       for s in ("train", "val", "test") for i in range(2))


def test_a_memory_cache_too_large_for_the_machine_is_not_built(isic: FakeTree, monkeypatch: pytest.MonkeyPatch):
    from lightning_seg.datamodules import cache

    monkeypatch.setattr(cache, "physical_memory", lambda: 6 * SIZE * SIZE * 4)  # the cache would fill all of it
    dm = _dm("isic", isic.root)
    with pytest.warns(UserWarning, match=r"data.cache=memory would hold up to 0.1 MiB \(6 pairs at 64 px\), more "
                                         r"than 25% of this machine's 0 MiB.*use data.cache=disk"):
        dm.setup("fit")
    assert dm.describe()["cache"] == "none" and dm.dataset("val")[(0, 0)]["image"].shape == (3, SIZE, SIZE)


def test_an_unwritable_disk_cache_warns_and_decodes(isic: FakeTree, tmp_path: Path):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    dm = _dm("isic", isic.root, cache="disk", cache_dir=str(blocked))
    with pytest.warns(UserWarning, match=r"data.cache=disk: cannot write to .*\(set data.cache_dir to a writable "):
        dm.setup("fit")
    _assert_same(_batches(dm), _batches(_dm("isic", isic.root, cache="none")))


def test_cache_option_is_checked():
    with pytest.raises(ConfigError, match=r"data.cache='ram' is not valid: use one of none, memory, disk"):
        compose(["data.cache=ram", "logger=none"])
    with pytest.raises(ValueError, match="data.cache"):
        build_datamodule("isic", cache="ram")
    assert compose(["logger=none"]).data.cache == "memory"


# ----------------------------------------------------------------------------- through the commands


@pytest.mark.slow
@pytest.mark.parametrize("name, resize, trainer", [
    # the ISIC fit runs on 2 CPU processes: ddp_spawn pickles the set-up datamodule, whose memory cache travels
    # through shared memory (each rank decodes nothing: NoDecodeInRanks)
    pytest.param("isic", "stretch", "ddp_cpu", marks=pytest.mark.ddp),
    ("glaucoma", "pad", "cpu"),
])
def test_fit_validate_and_attack_on_real_size_images(name: str, resize: str, trainer: str, isic: FakeTree,
                                                     refuge: FakeTree, tiny, tmp_path: Path):
    tree = isic if name == "isic" else refuge
    overrides = tiny(**{"data": name, "trainer": trainer, "data.source": "folder", "data.root": tree.root,
                        "data.split": "official", "data.image_size": SIZE, "data.resize": resize,
                        "data.batch_size": 2, "data.eval_batch_size": 2})
    cfg = compose(overrides)
    assert cfg.data.cache == "memory"  # the default
    fitted = fit(cfg, extra_callbacks=[NoDecodeInRanks()] if trainer == "ddp_cpu" else None)
    assert math.isfinite(fitted["metrics"]["val/dice"])
    runs = tmp_path / "runs"  # tiny's run.output_dir
    validated = evaluate(compose_for("validate", [f"run.output_dir={runs}", "logger=none", "trainer=cpu"]))
    assert math.isfinite(validated["metrics"]["val/dice"]) and validated["data"]["cache"] == "memory"
    result = attack(compose_for("attack", [f"run.output_dir={runs}", "logger=none", "trainer=cpu", "attack=[pgd,asma]",
                                           "attack.pgd.steps=2", "attack.asma.max_iter=3", "attack_eval.num_images=2",
                                           "attack_eval.batch_size=2", "attack_eval.panels=0"]))
    rows = list(csv.DictReader((Path(result["run_dir"]) / "per_image.csv").open()))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"pgd", "asma"}
    # the clinical read-outs of the ground truth are measured in the original aspect ratio, from orig_size (the file's
    # size, carried by the cache): the lesion ellipse (radii 0.32 H, 0.3 W) on the 48 x 64 grid of a 750 x 1000 image
    # (64 x 64, the cached arrays' size, would give 1235 px); the vertical cup-to-disc ratio of the fundus is 0.5
    for r in rows:
        if name == "isic":
            assert float(r["clin_area_gt"]) == pytest.approx(math.pi * 0.32 * 0.3 * 48 * 64, rel=0.03)
        else:
            assert float(r["clin_vcdr_gt"]) == pytest.approx(0.5, abs=0.03)


class NoDecodeInRanks(Callback):
    """In each DDP rank: the memory cache arrived as a shared-memory block, and no pair is decoded from its file."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        cache = trainer.datamodule.source.load.cache
        assert cache.block is not None and cache.block.is_shared() and cache.entries == {}
        self.original = layouts.load_pair

        def fail(record, *args, **kwargs):
            raise AssertionError(f"{record.key} decoded from its file in rank {trainer.global_rank}")

        layouts.load_pair = fail

    def teardown(self, trainer, pl_module, stage: str) -> None:
        layouts.load_pair = self.original
