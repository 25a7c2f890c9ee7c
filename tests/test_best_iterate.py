"""Every gradient attack returns, per image, its best evaluated iterate, and restarts are never worse."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_seg.attacks import build_attack, cospgd, dag, fgsm, pgd, segpgd
from lightning_seg.attacks.apgd import quality
from lightning_seg.attacks.config import AttackParamError
from tests.helpers.toy_models import PixelLinear
from tests.test_attacks_contract import data, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


class Recorder(nn.Module):
    """Records every input the attack feeds the model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


def keys(net: nn.Module, xs: list[Tensor], y: Tensor, targeted: bool) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return quality(net(torch.stack([x for x in xs])), y, torch.ones_like(y, dtype=torch.bool), targeted)


RUNS = {
    "pgd": lambda m, x, y, t, g: pgd(m, x, y, eps=0.06, alpha=0.03, steps=6, targeted=t, generator=g),
    "segpgd": lambda m, x, y, t, g: segpgd(m, x, y, eps=0.06, alpha=0.03, steps=6, targeted=t, generator=g),
    "cospgd": lambda m, x, y, t, g: cospgd(m, x, y, eps=0.06, alpha=0.03, steps=6, targeted=t, generator=g),
    "pgd_restarts": lambda m, x, y, t, g: pgd(m, x, y, eps=0.06, alpha=0.03, steps=4, restarts=3, targeted=t,
                                              generator=g),
    "fgsm": lambda m, x, y, t, g: fgsm(m, x, y, eps=0.06, targeted=t),
    "dag": lambda m, x, y, t, g: dag(m, x, y, gamma=0.03, max_iter=6, targeted=t, generator=g, check_every=2),
    "dag_restarts": lambda m, x, y, t, g: dag(m, x, y, gamma=0.03, max_iter=4, restarts=2, targeted=t, generator=g),
}


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("name", list(RUNS))
def test_the_returned_iterate_is_the_best_evaluated_one(name, targeted):
    """Per image, the returned adversarial image has the best (Dice, accuracy) key over every input the attack
    evaluated (the last forward is the result's own)."""
    net = tiny(k=3).eval()
    x, y = data(b=3, k=3)
    rec = Recorder(net)
    res = RUNS[name](rec, x, y, targeted, torch.Generator().manual_seed(0))
    *evaluated, final = rec.inputs
    assert torch.equal(final, res.adv)
    # per image, the best key among all evaluated inputs (sub-batches of DAG: matched by row count)
    best = torch.full((3,), float("inf")), torch.full((3,), float("inf"))
    for inp in evaluated:
        if inp.shape[0] != 3:
            continue  # a DAG sub-batch: its images were also evaluated in full-batch forwards or skipped
        p, s = keys(net, list(inp), y, targeted)
        better = (p < best[0]) | ((p == best[0]) & (s < best[1]))
        best = torch.where(better, p, best[0]), torch.where(better, s, best[1])
    got_p, _ = keys(net, list(res.adv), y, targeted)
    assert (got_p <= best[0] + 1e-6).all(), (got_p, best[0])
    dice = -got_p if targeted else got_p
    torch.testing.assert_close(res.extras["dice"], dice, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fn", [pgd, segpgd, cospgd], ids=["pgd", "segpgd", "cospgd"])
def test_restarts_are_never_worse_and_counted(fn):
    net = tiny(k=3).eval()
    x, y = data(b=4, k=3)
    kw = {"eps": 0.03, "alpha": 0.01, "steps": 3}
    one = fn(net, x, y, restarts=1, generator=torch.Generator().manual_seed(5), **kw)
    three = fn(net, x, y, restarts=3, generator=torch.Generator().manual_seed(5), **kw)
    assert (three.extras["dice"] <= one.extras["dice"]).all()
    # per restart: steps forwards with gradient + 1 for the last iterate; + 1 for the result
    assert one.forwards == 4 * (3 + 1 + 1) and one.backwards == 4 * 3
    assert three.forwards == 4 * (3 * (3 + 1) + 1) and three.backwards == 4 * 3 * 3
    assert (three.iterations == 9).all()


def test_restart_errors():
    net = tiny().eval()
    x, y = data()
    with pytest.raises(ValueError, match="random_start"):
        pgd(net, x, y, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="restarts"):
        pgd(net, x, y, restarts=0)
    with pytest.raises(ValueError, match="restarts"):
        dag(net, x, y, restarts=0)
    with pytest.raises(AttackParamError, match="restarts"):  # the universal perturbation has no restarts
        build_attack("up", restarts=2)
    assert build_attack("pgd", restarts=2).config.restarts == 2


def test_dag_restarts_are_never_worse_and_add_up():
    net = tiny(k=3).eval()
    x, y = data(b=3, k=3)
    one = dag(net, x, y, gamma=0.02, max_iter=5, generator=torch.Generator().manual_seed(1))
    two = dag(net, x, y, gamma=0.02, max_iter=5, restarts=2, generator=torch.Generator().manual_seed(1))
    assert (two.extras["dice"] <= one.extras["dice"]).all()
    assert (two.iterations >= one.iterations).all() and two.backwards > one.backwards


def test_the_last_iterate_is_evaluated():
    """A single step that breaks the linear model is returned although no forward with gradient saw it."""
    model = PixelLinear(torch.tensor([1.0, -0.8, 0.6]), b=-0.4, symmetric=False)
    x = 0.3 + 0.4 * torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = fgsm(model, x, y, eps=0.25)
    assert res.success.all() and (res.linf > 0).all()


def test_per_image_budgets_equal_separate_calls():
    net = tiny().eval()
    x, y = data(b=2)
    eps = torch.tensor([0.01, 0.05])
    both = pgd(net, x, y, eps=eps, alpha=eps / 4, steps=4, random_start=False)
    for i in range(2):
        alone = pgd(net, x[i:i + 1], y[i:i + 1], eps=float(eps[i]), alpha=float(eps[i]) / 4, steps=4,
                    random_start=False)
        torch.testing.assert_close(both.adv[i], alone.adv[0], atol=1e-6, rtol=0)
        assert both.linf[i] <= eps[i] + 1e-6
    with pytest.raises(ValueError, match=r"tensor \[B\]"):
        pgd(net, x, y, eps=torch.tensor([0.01, 0.02, 0.03]))
