"""Atomic writes: all or nothing, and files with the mode the umask gives (readable by the group on
a shared filesystem), not mkstemp's owner-only 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from medlm.utils.io import atomic_path, atomic_write


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_mode_of_the_umask(tmp_path: Path, umask_002) -> None:
    with atomic_write(tmp_path / "a.txt") as f:
        f.write("x")
    with atomic_path(tmp_path / "b.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.arange(3))
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any other new file gets
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.npy") == mode(plain) == 0o664


def test_umask_022_gives_0644(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o644


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "a.txt") as f:
        f.write("new, half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
