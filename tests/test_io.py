from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lightning_seg.io import atomic_write, write_json


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path: Path):
    path = write_json(tmp_path / "results.json", {"a": 1})

    def broken(handle):
        handle.write('{"a": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"a": 1}  # never half-written
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_atomic_write_respects_the_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        mode = stat.S_IMODE(write_json(tmp_path / "r.json", {}).stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644
