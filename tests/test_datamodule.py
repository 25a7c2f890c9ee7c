from __future__ import annotations

import inspect

import pytest
import torch
from lightning_seg.datamodules import build_datamodule
from lightning_seg.datamodules.sampling import EpochSampler
from torch.utils.data import DataLoader


def test_eval_sampler_splits_ranks_without_padding_and_train_pads():
    ranks = [list(EpochSampler(10, shuffle=False, seed=0, rank=r, world_size=3)) for r in range(3)]
    seen = sorted(i for r in ranks for i, _ in r)
    assert seen == list(range(10))  # every sample exactly once
    padded = [list(EpochSampler(10, shuffle=True, seed=0, rank=r, world_size=3, pad=True)) for r in range(3)]
    assert {len(p) for p in padded} == {4}


def test_shuffle_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(20, shuffle=True, seed=1), EpochSampler(20, shuffle=True, seed=1)
    b.set_epoch(3)
    a.set_epoch(3)
    assert list(a) == list(b)
    a.set_epoch(4)
    assert [i for i, _ in a] != [i for i, _ in b]


def _dm(**kw):
    return build_datamodule("isic", image_size=32, num_train=8, num_val=4, num_test=4, batch_size=4, **kw)


def test_augmentation_is_per_sample_and_independent_of_worker_count():
    batches = {}
    for workers in (0, 2):
        dm = _dm(num_workers=workers)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        batches[workers] = torch.cat([b["image"] for b in loader])
    torch.testing.assert_close(batches[0], batches[2])


def test_two_workers_do_not_augment_identically():
    """The classic trap: a forked Compose RNG makes workers 0 and 1 augment identically."""
    from lightning_seg.datamodules.base import PairDataset, Source
    from lightning_seg.datamodules.synthetic import synth_isic

    pair = synth_isic(0, size=32)
    source = Source([f"same_{i}" for i in range(8)], lambda i: pair)  # eight copies of one image
    ds = PairDataset(source, range(8), 32, train=True, augment=True, seed=0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, sampler=EpochSampler(8, shuffle=False, seed=0))
    imgs = [b["image"] for b in loader]  # worker 0 loads positions 0,2,4,6; worker 1 loads 1,3,5,7
    worker0, worker1 = torch.cat(imgs[0::2]), torch.cat(imgs[1::2])
    assert not torch.equal(worker0, worker1)
    # and the parameters are those of the sample, not of the worker: same as loading in the main process
    torch.testing.assert_close(torch.cat(imgs), torch.stack([ds[(i, 0)]["image"] for i in range(8)]))


def test_splits_are_disjoint_and_eval_is_not_augmented():
    dm = _dm()
    dm.setup()
    ids = dm.split_ids
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["val"]) & set(ids["test"])
    ds = dm.dataset("val")
    a, b = ds[(0, 0)], ds[(0, 5)]
    assert torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.float32
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0
    assert a["mask"].dtype == torch.long and set(a["mask"].unique().tolist()) <= {0, 1}


def test_glaucoma_tasks():
    for task, values in (("disc_cup", {0, 1, 2}), ("disc", {0, 1})):
        dm = build_datamodule("glaucoma", task=task, image_size=64, num_train=4, num_val=2, num_test=2)
        dm.setup()
        mask = dm.dataset("train")[(0, 0)]["mask"]
        assert set(mask.unique().tolist()) <= values and mask.max() == max(values)


@pytest.mark.parametrize("name", ["isic", "glaucoma"])
def test_datamodule_defaults_are_the_cli_defaults(name):
    """The data defaults live in one place (DataConfig): a datamodule built in Python without arguments is the one
    ``python -m lightning_seg fit data=<name>`` builds, and every data.* key is an argument of the datamodule."""
    from lightning_seg.datamodules import DATAMODULES

    from lightning_seg.config import compose
    from lightning_seg.training.trainer import build_datamodule_from

    cfg = compose([f"data={name}", "logger=none"])
    params = set(inspect.signature(DATAMODULES.get(name)).parameters)
    assert params == set(cfg.data) | {"seed"}
    assert cfg.data.task == DATAMODULES.get(name).tasks[0]  # the yaml's task is the datamodule's default task
    cli, python = build_datamodule_from(cfg), build_datamodule(name)
    assert vars(python) == vars(cli)
    assert python.image_size == cfg.data.image_size
    assert python.counts == (cfg.data.num_train, cfg.data.num_val, cfg.data.num_test)
