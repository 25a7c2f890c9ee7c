"""Progress of long work: a bar in a terminal, a log line at least every 30 s elsewhere, every phase counted."""

from __future__ import annotations

import io
import re

import pytest
import torch

from lightning_seg.evaluation.progress import Progress, advance, format_seconds, is_rank_zero


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _plain(total: int = 100, **kw):
    clock, out = FakeClock(), io.StringIO()
    return Progress("attack pgd", total, stream=out, clock=clock, tty=False, enabled=True, **kw), clock, out


LINE = re.compile(r"^attack pgd: (\d+)/(\d+) img \(\d+ %\), [\d.e+-]+ img/s, (ETA \S+, elapsed \S+|done in \S+)")


def test_off_a_terminal_a_line_at_most_every_30_s_with_done_total_rate_and_eta():
    p, clock, out = _plain(100)
    stamps = []
    for _ in range(100):  # one image every 2 s: 200 s in all
        clock.t += 2
        before = out.getvalue().count("\n")
        p.update(1, success="0/1")
        if out.getvalue().count("\n") > before:
            stamps.append(clock.t)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "attack pgd: started, 100 img"
    assert len(lines) == 2 + len(stamps) and 6 <= len(stamps) <= 7  # 200 s / 30 s
    assert all(b - a >= 30 for a, b in zip([1000.0, *stamps], stamps))
    for line in lines[1:]:
        m = LINE.match(line)
        assert m, line
        assert int(m.group(2)) == 100
    first = LINE.match(lines[1])
    assert int(first.group(1)) == 15 and "ETA 2m50s" in lines[1] and "success=0/1" in lines[1]  # 85 left at 0.5/s
    assert lines[-1].startswith("attack pgd: 100/100 img (100 %)") and "done in 3m20s" in lines[-1]


def test_the_heartbeat_writes_while_no_image_finishes():
    p, clock, out = _plain(4)
    p.tick()
    assert out.getvalue().count("\n") == 1  # the start line only
    clock.t += 31  # one long batch: nothing finished yet
    p.tick()
    assert out.getvalue().splitlines()[-1].startswith("attack pgd: 0/4 img (0 %), ? img/s, ETA ?")
    p.close()
    p.close()  # closing twice writes one final line
    assert out.getvalue().count("done in") == 1
    p, clock, out = _plain(4)
    with pytest.raises(KeyboardInterrupt), p:
        p.update(2)
        raise KeyboardInterrupt
    assert out.getvalue().splitlines()[-1].startswith("attack pgd: 2/4 img (50 %)") and "stopped after" in out.getvalue()


def test_a_terminal_gets_a_tqdm_bar_and_other_ranks_print_nothing(monkeypatch: pytest.MonkeyPatch):
    out = io.StringIO()
    with Progress("attack asma", 8, stream=out, tty=True, enabled=True) as p:
        advance(p, 4, success="1/4")
    text = out.getvalue()
    assert "attack asma" in text and "4/8" in text and "success=1/4" in text
    monkeypatch.setenv("RANK", "1")
    assert not is_rank_zero()
    out = io.StringIO()
    with Progress("attack asma", 8, stream=out, tty=False) as p:
        p.update(8)
    assert out.getvalue() == "" and p.done == 8
    monkeypatch.setenv("RANK", "0")
    assert is_rank_zero()


def test_a_plain_tqdm_bar_still_counts_batches():
    class Bar:
        n = 0

        def update(self, n: int = 1) -> None:
            self.n += n

    bar = Bar()
    advance(bar, 4)
    advance(None, 4)
    assert bar.n == 1
    assert format_seconds(75) == "1m15s" and format_seconds(3700) == "1h01m40s" and format_seconds(None) == "?"


def test_the_defense_report_counts_every_phase():
    from lightning_seg.attacks import build_attack
    from lightning_seg.config import defense_section
    from lightning_seg.evaluation.defense_report import defense_report
    from lightning_seg.tasks import get_task
    from tests.helpers.toy_models import SmallUNet

    torch.manual_seed(0)
    net = SmallUNet(c=4).eval()
    images = torch.rand(2, 3, 16, 16)
    labels = (images[:, 0] > 0.5).long()
    attacks = {"pgd": build_attack("pgd", steps=1), "fgsm": build_attack("fgsm")}
    defenses = {"jpeg": defense_section("jpeg"), "random_noise": defense_section("random_noise")}
    p, _, out = _plain(0)
    report = defense_report(net, defenses, attacks, images, labels, labels, get_task("lesion"), batch_size=2,
                            eps_sweep=[2 / 255], sweep_steps=1, progress=p)
    p.close()
    # one phase per attacked row (attack x (baseline + per defense: oblivious + every adaptive gradient mode)) and per
    # sanity check; the worst-case rows only pick among rows already attacked
    attacked = [r for r in report["rows"] if r["threat_model"] != "adaptive worst case"]
    assert p.total == len(attacked) + len(report["sanity"]) == p.done
    # jpeg: BPDA, SURROGATE, STE; random_noise (randomised, differentiable): BPDA, EXACT, each also with EOT
    assert len(attacked) == 2 * (1 + (1 + 3) + (1 + 4)) and len(report["rows"]) == len(attacked) + 2 * 2
    assert out.getvalue().splitlines()[-1].startswith(f"attack pgd: {p.total}/{p.total} img (100 %)")
