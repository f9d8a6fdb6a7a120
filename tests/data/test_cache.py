"""The on-disk token cache: keys, hits without rebuilding, and no half-written files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medlm.data import cache as cache_mod
from medlm.data.cache import TokenCache, cache_key, default_cache_dir, file_identity, hub_identity


class CountingBuilder:
    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.tokens


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_default_dir_is_env_var_else_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDLM_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert TokenCache().dir == tmp_path / "env-cache"
    monkeypatch.delenv("MEDLM_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / ".cache" / "medlm"
    assert TokenCache(tmp_path / "explicit").dir == tmp_path / "explicit"


def test_key_is_stable_and_changes_with_every_part() -> None:
    base = dict(
        source={"hub_id": "a", "config": "b"},
        template="{question}",
        tokenizer="gpt2",
        seed=1,
        fraction=0.02,
    )
    key = cache_key(**base)
    assert key == cache_key(**dict(reversed(list(base.items()))))
    for name, other in [
        ("source", {"hub_id": "a", "config": "c"}),
        ("template", "{context}"),
        ("tokenizer", "cl100k_base"),
        ("seed", 2),
        ("fraction", 0.05),
    ]:
        assert cache_key(**{**base, name: other}) != key, name


def test_file_identity_follows_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "data.json"
    f.write_text("{}")
    first = file_identity(f)
    assert first["path"] == str(f.resolve())
    os.utime(f, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    touched = file_identity(f)
    assert touched != first and touched["size"] == first["size"]
    f.write_text('{"a": 1}')
    assert file_identity(f)["size"] != first["size"]


def test_hub_identity_names_the_main_branch_when_unpinned() -> None:
    assert hub_identity("qiaojin/PubMedQA", "pqa_labeled", None, "train")["revision"] == "main"
    assert cache_key(s=hub_identity("x", "c", None, "train")) != cache_key(
        s=hub_identity("x", "c", "abc123", "train")
    )


def test_second_use_reads_the_file_without_building(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    build = CountingBuilder(tokens)
    out = TokenCache(tmp_path).get_or_build("ds-train", "k1", build)
    assert build.calls == 1 and np.array_equal(out, tokens)
    assert _files(tmp_path) == ["ds-train-k1.json", "ds-train-k1.npy"]  # the array, its checksum

    again = TokenCache(tmp_path).get_or_build("ds-train", "k1", build)  # a new run
    assert build.calls == 1
    assert again.dtype == np.uint16 and np.array_equal(again, tokens)
    TokenCache(tmp_path).get_or_build("ds-train", "k2", build)  # another key is another file
    assert build.calls == 2


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def boom() -> np.ndarray:
        raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError):
        TokenCache(tmp_path).get_or_build("ds-train", "k", boom)
    assert _files(tmp_path) == []


def test_interrupted_write_leaves_no_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_save(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY half")  # some bytes reach the disk, then the run is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        TokenCache(tmp_path).get_or_build("ds-train", "k", lambda: np.arange(10, dtype=np.uint16))
    assert _files(tmp_path) == []
    monkeypatch.undo()
    build = CountingBuilder(np.arange(10, dtype=np.uint16))
    assert np.array_equal(TokenCache(tmp_path).get_or_build("ds-train", "k", build), np.arange(10))
    assert build.calls == 1


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    cache.path("ds-train", "k").write_bytes(b"not a numpy file")
    build = CountingBuilder(np.arange(7, dtype=np.uint16))
    assert np.array_equal(cache.get_or_build("ds-train", "k", build), np.arange(7))
    assert build.calls == 1
    assert np.array_equal(np.load(cache.path("ds-train", "k")), np.arange(7))


def test_names_cannot_escape_the_cache_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TokenCache(tmp_path).path("../evil", "k")
