"""A token cache file changed after it was written is rebuilt with a warning naming it, never
trained on: half overwritten with zeros, overwritten with 0xFFFF (ids past the vocabulary),
truncated, or without its checksum file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medlm.data import cache as cache_mod
from medlm.data.cache import TokenCache
from medlm.data.pubmedqa import PubMedQADataModule
from tests.data.test_pubmedqa import small_ori

TOKENS = (np.arange(20_000) % 50_000).astype(np.uint16)


class Builder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return TOKENS


def overwrite(path: Path, start: int, data: bytes) -> None:
    """Change bytes in place, as a faulty disk, a stray dd or another tool would."""
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(data)


def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a new run sees: no file verified yet."""
    monkeypatch.setattr(cache_mod, "_verified", {})


def half_zeros(path: Path) -> None:
    size = path.stat().st_size
    overwrite(path, size // 2, bytes(size - size // 2))


def all_ffff(path: Path) -> None:
    size = path.stat().st_size
    overwrite(path, 128, b"\xff" * (size - 128))  # the data after numpy's 128-byte header


def truncated(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 2)


def no_checksum(path: Path) -> None:
    TokenCache.checksum_path(path).unlink()


def bad_checksum_file(path: Path) -> None:
    TokenCache.checksum_path(path).write_text("{")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (half_zeros, "does not match the checksum written with it"),
        (all_ffff, "does not match the checksum written with it"),
        (truncated, "is 40126 bytes, but 40128 were written"),
        (no_checksum, "has no checksum file ds-train-k.json"),
        (bad_checksum_file, "has an unreadable checksum file ds-train-k.json"),
    ],
)
def test_damaged_cache_file_is_rebuilt_with_a_warning_naming_it(
    damage, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    cache, build = TokenCache(tmp_path), Builder()
    cache.get_or_build("ds-train", "k", build)
    path = cache.path("ds-train", "k")
    damage(path)
    new_process(monkeypatch)
    out = cache.get_or_build("ds-train", "k", build)
    assert build.calls == 2 and np.array_equal(out, TOKENS)
    assert f"cache file {path} {reason}" in caplog.text and "rebuilding it" in caplog.text
    new_process(monkeypatch)
    caplog.clear()
    assert np.array_equal(cache.load("ds-train", "k"), TOKENS) and not caplog.text


def test_checksum_file_says_what_was_written(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    path = cache.save("ds-train", "k", TOKENS)
    written = json.loads(TokenCache.checksum_path(path).read_text())
    assert written["bytes"] == path.stat().st_size == 128 + TOKENS.nbytes
    assert written["sha256"] == cache_mod.file_sha256(path)
    assert (written["dtype"], written["shape"]) == ("uint16", [len(TOKENS)])


def test_a_file_is_hashed_once_per_process_and_read_memory_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    TokenCache(tmp_path).save("ds-train", "k", TOKENS)
    hashed: list[Path] = []
    sha = cache_mod.file_sha256
    monkeypatch.setattr(cache_mod, "file_sha256", lambda p: hashed.append(p) or sha(p))
    new_process(monkeypatch)
    for _ in range(3):
        out = TokenCache(tmp_path).load("ds-train", "k")
        assert isinstance(out, np.memmap) and np.array_equal(out, TOKENS)
    assert len(hashed) == 1
    # changed in place afterwards (a new mtime): hashed again, and refused
    half_zeros(TokenCache(tmp_path).path("ds-train", "k"))
    assert TokenCache(tmp_path).load("ds-train", "k") is None and len(hashed) == 2


@pytest.mark.parametrize("damage", [half_zeros, all_ffff])
def test_datamodule_trains_on_the_tokens_it_wrote(
    damage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """The issue's cases: zeros were trained on silently; 0xFFFF ended in an IndexError in the
    embedding."""
    ori = small_ori(tmp_path, n=30)
    first = PubMedQADataModule(path=str(ori), cache_dir=str(tmp_path / "cache"), block_size=8)
    first.setup("fit")
    original = np.array(first.train_dataset.tokens)
    [train_file] = (tmp_path / "cache").glob("pubmedqa-train-*.npy")
    damage(train_file)
    new_process(monkeypatch)
    again = PubMedQADataModule(path=str(ori), cache_dir=str(tmp_path / "cache"), block_size=8)
    again.setup("fit")
    assert np.array_equal(again.train_dataset.tokens, original)
    assert int(np.max(again.train_dataset.tokens)) < again.tokenizer.vocab_size
    assert f"cache file {train_file} does not match the checksum" in caplog.text
