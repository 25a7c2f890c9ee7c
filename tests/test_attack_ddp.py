"""The `attack` command at scale: the whole split by default, 2 DDP processes (ddp_spawn on CPU) writing the same
merged results as one, resuming an interrupted run, and the uint8 round-trip of the adversarial images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lightning_seg.attacks import build_attack
from lightning_seg.attacks.config import Attack
from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.evaluation.inference import quantize_result, run_attack

# deterministic attacks (no random start): results depend on the image only, not on which images share a batch
FAST = ["attack=[asma,pgd]", "attack.asma.max_iter=6", "attack.pgd.steps=3", "attack.pgd.random_start=false",
        "attack_eval.batch_size=4", "attack_eval.panels=1", "logger=none"]
EXACT = ("method", "image", "reference", "targeted", "success", "iterations")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import tiny_overrides

    return Path(fit(compose(tiny_overrides(tmp_path_factory.mktemp("ddp_attack") / "runs")))["last_checkpoint"])


def _attack(ckpt: Path, out: Path, *extra: str) -> Path:
    cfg = compose_for("attack", [f"run.ckpt={ckpt}", f"run.output_dir={out}", *FAST, *extra])
    return Path(attack(cfg)["run_dir"])


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "per_image.csv").open()))


def _same_rows(a: list[dict[str, str]], b: list[dict[str, str]], tol: float = 1e-5) -> None:
    assert len(a) == len(b) and list(a[0]) == list(b[0])
    for x, y in zip(a, b):
        for key in x:
            if key in EXACT:
                assert x[key] == y[key], (key, x, y)
            elif key not in ("forwards_per_image", "backwards_per_image"):  # per-batch counts: batches differ
                assert float(x[key]) == pytest.approx(float(y[key]), abs=tol), (key, x[key], y[key])


def test_two_processes_write_what_one_writes_for_the_whole_split(ckpt: Path, tmp_path: Path):
    one = _attack(ckpt, tmp_path / "one")
    two = _attack(ckpt, tmp_path / "two", "trainer=ddp_cpu")
    rows = _rows(one)
    assert len(rows) == 2 * 12  # attack_eval.num_images unset: the whole val split (12 images), both attacks
    assert [r["image"] for r in rows[:12]] == sorted(r["image"] for r in rows[:12])  # merged in image order
    _same_rows(rows, _rows(two))
    # each rank wrote its own batches: the 12 images were split 6 / 6, none twice (no padding)
    sidecars = [json.loads(p.read_text()) for p in (two / "shards").glob("asma-*/*.json")]
    indices = sorted(i for s in sidecars for i in s["indices"])
    assert indices == list(range(12)) and {s["world_size"] for s in sidecars} == {2} and len(sidecars) == 4
    for name in ("summary.md", "summary.csv"):
        assert (two / name).is_file()
    summary_one = {s["method"]: s for s in json.loads((one / "results.json").read_text())["summary"]}
    summary_two = {s["method"]: s for s in json.loads((two / "results.json").read_text())["summary"]}
    for method, s in summary_one.items():
        assert s["n"] == summary_two[method]["n"] == 12
        assert s["success_pct"] == summary_two[method]["success_pct"]
        assert s["iou_mean"] == pytest.approx(summary_two[method]["iou_mean"], abs=1e-5)
    assert (two / "panels" / "asma_000.png").is_file()


def test_a_rerun_on_the_folder_attacks_only_the_missing_images(ckpt: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    reference = _rows(_attack(ckpt, tmp_path / "full"))
    calls: list[tuple[str, int]] = []
    call = Attack.__call__

    def counted(self, net, images, *args, **kwargs):
        calls.append((self.name, len(images)))
        if self.name == "pgd" and stop_after_pgd_batches[0] == sum(n == "pgd" for n, _ in calls) - 1:
            raise KeyboardInterrupt  # Ctrl-C in the second pgd batch: asma and one pgd batch are written
        return call(self, net, images, *args, **kwargs)

    stop_after_pgd_batches = [1]
    monkeypatch.setattr(Attack, "__call__", counted)
    with pytest.raises(KeyboardInterrupt):
        _attack(ckpt, tmp_path / "cut")
    run = next((tmp_path / "cut" / "attack").iterdir())
    assert json.loads((run / "results.json").read_text())["not_run"] == ["pgd"]
    assert {r["method"] for r in _rows(run)} == {"asma"}
    assert calls == [("asma", 4)] * 3 + [("pgd", 4)] * 2

    calls.clear()
    stop_after_pgd_batches[0] = -1  # no more Ctrl-C
    resumed = _attack(ckpt, tmp_path / "elsewhere", f"attack_eval.resume={run}")
    assert resumed == run
    assert calls == [("pgd", 4), ("pgd", 4)]  # asma: all written; pgd: the 8 images the first run did not reach
    _same_rows(_rows(run), reference, tol=0)

    calls.clear()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    from lightning_seg.config import ConfigError

    with pytest.raises(ConfigError, match=r"attack\.pgd\.steps: 3 in the run, 4 now"):  # another run's settings
        _attack(ckpt, tmp_path / "again", f"attack_eval.resume={run}", "attack.pgd.steps=4")
    assert calls == [] and {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_needs_an_attack_run_folder(ckpt: Path, tmp_path: Path):
    from lightning_seg.config import ConfigError

    with pytest.raises(ConfigError, match="not an attack run folder"):
        _attack(ckpt, tmp_path, f"attack_eval.resume={tmp_path / 'nowhere'}")


def test_uint8_round_trip_changes_the_scores_only_by_the_rounding(ckpt: Path, tmp_path: Path):
    plain = _rows(_attack(ckpt, tmp_path / "plain", "attack_eval.num_images=4"))
    rounded = _rows(_attack(ckpt, tmp_path / "q", "attack_eval.num_images=4", "attack_eval.quantize=true"))
    numel = 3 * 32 * 32
    for p, q in zip(plain, rounded):
        assert (p["method"], p["image"], p["iterations"]) == (q["method"], q["image"], q["iterations"])
        assert abs(float(q["linf_x255"]) - float(p["linf_x255"])) <= 0.5 + 1e-4  # half a level at most
        assert abs(float(q["l2"]) - float(p["l2"])) <= 0.5 / 255 * numel ** 0.5 + 1e-6
        if p["method"] == "pgd":
            assert float(q["linf_x255"]) <= 4 + 0.5 + 1e-4  # the budget 4/255, up to half a level off the grid
    assert any(p["l2"] != q["l2"] for p, q in zip(plain, rounded))


def test_quantized_images_are_8_bit_within_the_budget_and_rescored():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    images = torch.randint(0, 256, (2, 3, 16, 16)).float() / 255  # clean images on the 8-bit grid
    labels = torch.randint(0, 2, (2, 16, 16))
    atk = build_attack("pgd", eps=4 / 255, alpha=1.3 / 255, steps=3, random_start=False)
    result = run_attack(atk, net, images, labels)
    assert not torch.equal(result.adv * 255, (result.adv * 255).round())  # the attack itself is off the grid
    q = quantize_result(atk, net, images, labels, result)
    assert torch.equal(q.adv * 255, (q.adv * 255).round())
    assert (q.adv - result.adv).abs().max() <= 0.5 / 255 + 1e-7
    assert float(q.linf.max()) <= 4 / 255 + 1e-6  # within the budget
    pred = net(q.adv).argmax(1)
    assert torch.equal(q.pred, pred)  # scores are those of the quantized images
    assert torch.equal(q.success, q.extras["apsr"] >= 0.99)
    assert torch.allclose(q.l2, (q.adv - images).flatten(1).norm(dim=1))
