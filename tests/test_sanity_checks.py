"""The sanity checks of robust evaluations (Carlini et al. 2019) as pure functions: each must pass on consistent
numbers and FAIL on violating ones; plus the properties they guard, measured on real attacks."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.attacks import apgd, pgd, sea, square
from lightning_seg.evaluation.defense_report import OBLIVIOUS, WORST, check_transfer, worst_row
from lightning_seg.evaluation.robustness import (
    check_black_box,
    check_effort,
    check_monotone,
    check_transfer_dice,
    check_unbounded,
    check_worst_case,
)
from tests.helpers.toy_models import SmallUNet, synthetic_disks, train_quick

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- pure functions, violating numbers
def test_effort_check():
    assert check_effort([(10, 0.40), (20, 0.35), (40, 0.36)]) == []  # within the noise tolerance
    problems = check_effort([(40, 0.50), (10, 0.30)], "restarts")  # any order: sorted by effort
    assert len(problems) == 1 and "rises from 0.300 with 10 restarts to 0.500 with 40" in problems[0]


def test_worst_case_check():
    assert check_worst_case(0.2, {"a": 0.2, "b": 0.5}) == []
    assert "above member b" in check_worst_case(0.3, {"a": 0.4, "b": 0.25})[0]
    per_image = torch.tensor([0.1, 0.0, 0.4])
    members = {"a": torch.tensor([0.1, 0.2, 0.5]), "b": torch.tensor([0.3, float("nan"), 0.4])}  # NaN: skipped
    assert check_worst_case(per_image, members) == []
    bad = check_worst_case(per_image, {"a": torch.tensor([0.1, 0.2, 0.3])})
    assert bad == ["worst case above member a on 1 image(s) (max excess 0.100)"]


def test_transfer_black_box_and_unbounded_checks():
    assert check_transfer_dice(white_box=0.30, transfer=0.31) == []
    assert "transfer stronger" in check_transfer_dice(white_box=0.30, transfer=0.10)[0]
    assert check_black_box(white_box=0.20, black_box=0.19) == []  # noise
    assert "black-box (Square) stronger" in check_black_box(white_box=0.20, black_box=0.05)[0]
    assert check_unbounded(0.02) == [] and check_unbounded(0.4) != []
    assert check_monotone([(0.0, 0.9), (4 / 255, 0.5)]) == [] and check_monotone([(0.0, 0.5), (4 / 255, 0.9)]) != []


def _row(threat: str, dice: float) -> dict:
    return {"defense": "fr", "attack": "pgd", "threat_model": threat, "targeted": False, "target_iou": None,
            "dice_gt": dice, "check": "", "worst_of": None}


def test_report_worst_case_row_and_transfer_against_it():
    modes = [_row("adaptive BPDA", 0.30), _row("adaptive SURROGATE", 0.10), _row("adaptive STE", 0.20)]
    worst = worst_row(modes)
    assert worst["threat_model"] == WORST and worst["worst_of"] == "adaptive SURROGATE" and worst["dice_gt"] == 0.10
    assert worst["check"] == ""
    # transfer is checked against the worst case only: a single weak mode is no violation, a weak worst case is
    rows = [_row(OBLIVIOUS, 0.25), *modes, worst]
    check_transfer(rows)
    assert all(r["check"] == "" for r in rows)
    weak = [_row("adaptive BPDA", 0.5), _row("adaptive STE", 0.6)]
    rows = [_row(OBLIVIOUS, 0.25), *weak, worst_row(weak)]
    assert check_transfer(rows)[-1]["check"].startswith("WARN: transfer stronger")


# ----------------------------------------------------------------------------- the properties, on a trained net
@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    net = train_quick(SmallUNet(c=8), 32, steps=80)
    x, y = synthetic_disks(6, 32, torch.Generator().manual_seed(5))
    return net, x, y


def test_apgd_more_iterations_and_restarts_do_not_raise_dice(segmenter):
    net, x, y = segmenter
    g = lambda: torch.Generator().manual_seed(0)
    by_steps = [(n, float(apgd(net, x, y, eps=2 / 255, steps=n, generator=g()).extras["dice"].mean())) for n in (5, 20)]
    by_restarts = [(r, float(apgd(net, x, y, eps=2 / 255, steps=5, restarts=r, generator=g()).extras["dice"].mean()))
                   for r in (1, 3)]
    assert check_effort(by_steps) == [] and check_effort(by_restarts, "restarts") == []
    assert by_restarts[1][1] <= by_restarts[0][1]  # restarts keep the better output per image: never worse


def test_sea_worst_case_is_at_most_every_member(segmenter):
    net, x, y = segmenter
    res = sea(net, x, y, eps=2 / 255, steps=6, generator=torch.Generator().manual_seed(0))
    members = {m: res.extras["member_dice"][:, j] for j, m in enumerate(res.extras["members"])}
    assert check_worst_case(res.extras["dice"], members) == []


def test_square_is_not_stronger_than_white_box(segmenter):
    net, x, y = segmenter
    eps = 4 / 255
    white = pgd(net, x, y, eps=eps, alpha=1 / 255, steps=20, generator=torch.Generator().manual_seed(0))
    black = square(net, x, y, eps=eps, steps=100, generator=torch.Generator().manual_seed(0))

    def dice(res) -> float:
        inter = ((res.pred == 1) & (y == 1)).flatten(1).sum(1).float()
        return float((2 * inter / ((res.pred == 1).flatten(1).sum(1) + (y == 1).flatten(1).sum(1)).clamp_min(1)).mean())

    assert black.backwards == 0 and dice(black) < 1.0  # the black-box attack does something
    assert check_black_box(dice(white), dice(black)) == []
