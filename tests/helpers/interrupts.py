"""Simulated Ctrl-C (a KeyboardInterrupt raised when a chosen attack starts) and SIGTERM (sent to this process when a
chosen attack starts)."""

from __future__ import annotations

import os
import signal

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


def sigterm_at(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Send SIGTERM to this process when attack ``name`` is first called (as SLURM does on preemption); the call itself
    runs to its end. Returns the list that counts the calls of ``name``."""
    call = Attack.__call__
    calls: list[int] = []

    def term(self, *args, **kwargs):
        if self.name == name:
            if not calls:
                os.kill(os.getpid(), signal.SIGTERM)
            calls.append(1)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "__call__", term)
    return calls
