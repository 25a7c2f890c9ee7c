"""Simulated Ctrl-C: a KeyboardInterrupt raised when a chosen attack starts."""

from __future__ import annotations

import pytest

from lightning_seg.attacks.config import Attack


def ctrl_c_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make attack ``name`` raise KeyboardInterrupt when called (the others run as usual)."""
    call = Attack.__call__

    def ctrl_c(self, *args, **kwargs):
        if self.name == name:
            raise KeyboardInterrupt
        return call(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "__call__", ctrl_c)
