"""SEA's early stopping: images already broken (worst-case Dice <= ``early_stop``) by an earlier member are dropped
from the later members' batches; the per-image worst case, the winners and the model-call counts stay right."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_seg.attacks import sea
from tests.helpers.toy_models import PixelLinear

pytestmark = pytest.mark.usefixtures("single_thread")

W = torch.tensor([1.0, -0.8, 0.6])


def mixed_batch(size: int = 6):
    """Per-pixel linear model (a pixel flips at Linf |d| / ||w||_1) and 4 images: images 0 and 2 have all foreground
    pixels close to the boundary (broken by any member at eps), images 1 and 3 far from it (never broken)."""
    model = PixelLinear(W, b=-0.5 * float(W.sum()))  # d = 0 at the grey image
    g = torch.Generator().manual_seed(0)
    x = torch.empty(4, 3, size, size)
    labels = torch.zeros(4, size, size, dtype=torch.long)
    for i in range(4):
        near = i % 2 == 0
        base = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
        # margin d = w . x; near: d in (0, 0.02], far: d ~ 0.6 (needs Linf 0.25 >> eps)
        shift = (0.005 + 0.003 * torch.rand(1, size, size, generator=g)) if near else torch.full((1, size, size), 0.25)
        x[i] = (base + shift * torch.sign(W).view(3, 1, 1)).clamp(0, 1)
        labels[i] = 1
    with torch.no_grad():
        assert (model(x).argmax(1) == 1).all()  # clean: everything foreground, Dice 1
    return model, x, labels


def test_broken_images_skip_the_later_members_and_the_counts_show_it():
    model, x, y = mixed_batch()
    kw = {"eps": 0.02, "steps": 6, "random_start": False}
    full = sea(model, x, y, early_stop=None, **kw)
    early = sea(model, x, y, **kw)  # default: early_stop = 0.0
    assert early.extras["early_stop"] == 0.0
    broken = full.extras["member_dice"][:, 0] <= 0.0
    assert broken.tolist() == [True, False, True, False]
    # same per-image worst case and the same winners (a Dice-0 image is won by the first member either way)
    assert torch.equal(early.extras["dice"], full.extras["dice"])
    assert torch.equal(early.extras["winner"], full.extras["winner"])
    assert early.extras["winner_counts"] == full.extras["winner_counts"]
    # later members ran only on the open images: NaN where skipped, and the real work counted
    ran = early.extras["member_images"]
    assert ran[:, 0].all() and torch.equal(ran[:, 1], ~broken) and torch.equal(ran[:, 2], ~broken)
    assert torch.isnan(early.extras["member_dice"][broken, 1:]).all()
    assert torch.equal(early.extras["member_dice"][~broken], full.extras["member_dice"][~broken])
    per_member = 6  # steps: one backward per step and image
    assert full.backwards == 4 * 3 * per_member
    assert early.backwards == (4 + 2 + 2) * per_member
    assert early.forwards < full.forwards
    assert early.iterations.tolist() == [6, 18, 6, 18]
    assert (full.iterations == 18).all()


def test_threshold_and_all_broken():
    model, x, y = mixed_batch()
    kw = {"eps": 0.02, "steps": 4, "random_start": False}
    res = sea(model, x[::2], y[::2], **kw)  # both images broken by the first member: the others never run
    assert res.backwards == 2 * 4 and not res.extras["member_images"][:, 1:].any()
    assert res.extras["winner_counts"] == {"balanced_ce": 2, "masked_ce": 0, "js": 0}
    # a threshold above every image's Dice drops them all after the first member
    everyone = sea(model, x, y, early_stop=1.0, **kw)
    assert everyone.backwards == 4 * 4 and (everyone.iterations == 4).all()
    assert not math.isnan(float(everyone.extras["dice"].max()))


def test_random_start_does_not_depend_on_the_dropped_images():
    """The random start is drawn for the whole batch, so an open image gets the same draw with or without early
    stopping: its member results are identical."""
    model, x, y = mixed_batch()
    kw = {"eps": 0.02, "steps": 4}
    a = sea(model, x, y, early_stop=None, generator=torch.Generator().manual_seed(1), **kw)
    b = sea(model, x, y, generator=torch.Generator().manual_seed(1), **kw)
    open_ = b.extras["member_images"][:, 1]
    assert open_.any() and not open_.all()
    assert torch.equal(a.extras["member_dice"][open_], b.extras["member_dice"][open_])
    assert torch.equal(a.adv[open_], b.adv[open_])


def test_targeted_runs_every_member():
    model, x, y = mixed_batch()
    res = sea(model, x, torch.zeros_like(y), eps=0.02, steps=3, targeted=True, random_start=False)
    assert res.extras["member_images"].all() and res.backwards == 4 * 3 * 3


def test_batches_merge_into_one_sea_result_with_summed_winner_counts_and_a_worst_case_check():
    """The attack command merges SEA's batch results: per-image extras are concatenated, the winner counts summed, and
    the summary's ensemble check reads every image's members."""
    from lightning_seg.attacks.result import AttackResult
    from lightning_seg.evaluation.inference import concat_results
    from lightning_seg.evaluation.table1 import ensemble_check

    def batch(dice, member_dice, counts):
        n = len(dice)
        return AttackResult(adv=torch.zeros(n, 3, 2, 2), pred=torch.zeros(n, 2, 2, dtype=torch.long),
                            success=torch.zeros(n, dtype=torch.bool), iou=torch.zeros(n), pixel_acc=torch.zeros(n),
                            l2=torch.zeros(n), linf=torch.zeros(n), iterations=torch.zeros(n, dtype=torch.long),
                            forwards=3, backwards=2, targeted=False,
                            extras={"members": ("a", "b"), "dice": torch.tensor(dice),
                                    "member_dice": torch.tensor(member_dice), "winner_counts": counts})

    one = batch([0.1, 0.2], [[0.1, 0.3], [0.4, 0.2]], {"a": 1, "b": 1})
    two = batch([0.0], [[0.0, float("nan")]], {"a": 1, "b": 0})
    merged = concat_results([one, two])
    assert merged.extras["winner_counts"] == {"a": 2, "b": 1} and merged.forwards == 6
    assert ensemble_check([merged]) == "ok"
    bad = batch([0.5], [[0.1, 0.6]], {"a": 0, "b": 1})  # worst case above member a: the selection is broken
    assert ensemble_check([merged, bad]).startswith("WARN: worst case above member 0:a on 1 image")
