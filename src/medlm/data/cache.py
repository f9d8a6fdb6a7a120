"""On-disk cache of tokenised arrays, so that a second run skips formatting and tokenising.

An array is stored as ``<cache_dir>/<name>-<key>.npy``. The key is a hash of everything the
tokens depend on: the source's identity (a local file's path, size and mtime, or a hub id, config
and revision), the template, the tokenizer and the split's seed and fraction. Changing any of them
gives a new file; stale files are never read. Files are written through
:func:`medlm.utils.io.atomic_path`, so an interrupted run leaves no half-written array.

Beside each array, ``<name>-<key>.json`` records what was written: the file's size and SHA-256.
A file changed after it was written (half overwritten with zeros, token ids overwritten with
0xFFFF, truncated, its checksum file lost) is rebuilt with a warning naming it, never trained on.
The array is still memory-mapped; the checksum is verified once per process and file (a file
whose inode, size and mtime have not changed since is not hashed again): about 2 ms a MB on a
CPU without SHA instructions (benchmarks/bench_token_cache.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medlm.data.shards import file_sha256
from medlm.utils.io import atomic_path, atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# cache files this process has already reported reading or writing
_REPORTED: set[Path] = set()


def default_cache_dir() -> Path:
    """``$MEDLM_CACHE_DIR``, else ``<cwd>/.cache/medlm``."""
    env = os.environ.get("MEDLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.cwd() / ".cache" / "medlm"


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What changes when a local data file changes: its absolute path, size and mtime."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def hub_identity(
    hub_id: str, config: str | None, revision: str | None, split: str
) -> dict[str, Any]:
    """A hub dataset is identified by its id, config, revision (None: the main branch) and split."""
    return {"hub_id": hub_id, "config": config, "revision": revision or "main", "split": split}


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts; the order of keyword arguments does not matter."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


CHECKSUM_FORMAT = 1
# files verified in this process: path -> (inode, size, mtime_ns) when their checksum matched
_verified: dict[Path, tuple[int, int, int]] = {}


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class TokenCache:
    """Token arrays on disk, built once by a caller-supplied function, each checked against the
    checksum written with it."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def path(self, name: str, key: str) -> Path:
        if not _NAME.match(name) or not _NAME.match(key):
            raise ValueError(
                f"cache name and key must be plain file-name parts, got {name!r}, {key!r}"
            )
        return self.dir / f"{name}-{key}.npy"

    @staticmethod
    def checksum_path(path: Path) -> Path:
        """The small JSON file beside ``<name>-<key>.npy`` that says what was written."""
        return path.with_suffix(".json")

    def load(self, name: str, key: str) -> np.ndarray | None:
        """The cached array (memory-mapped, read-only), or None when absent, unreadable or not
        what was written (then with a warning naming the file)."""
        path = self.path(name, key)
        if not path.is_file():
            return None
        problem = self.problem(path)
        if problem is None:
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                problem = f"is unreadable ({err})"
        log.warning("cache file %s %s; rebuilding it", path, problem)
        return None

    def problem(self, path: Path) -> str | None:
        """What is wrong with the cache file ``path``, or None when it is what was written."""
        try:
            written = json.loads(self.checksum_path(path).read_text())
            size, digest = int(written["bytes"]), str(written["sha256"])
        except FileNotFoundError:
            return f"has no checksum file {self.checksum_path(path).name}"
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"has an unreadable checksum file {self.checksum_path(path).name} ({err})"
        stamp = _stamp(path)
        if stamp[1] != size:
            return f"is {stamp[1]} bytes, but {size} were written"
        if _verified.get(path) == stamp:
            return None
        if file_sha256(path) != digest:
            return "does not match the checksum written with it (changed or damaged since)"
        _verified[path] = stamp
        return None

    def save(self, name: str, key: str, tokens: np.ndarray) -> Path:
        path = self.path(name, key)
        with atomic_path(path) as tmp:
            # A file object, not a name: np.save would append ".npy" to the temporary name.
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(tokens), allow_pickle=False)
            written = {
                "format": CHECKSUM_FORMAT,
                "bytes": tmp.stat().st_size,
                "sha256": file_sha256(tmp),
                "dtype": str(tokens.dtype),
                "shape": list(tokens.shape),
            }
        with atomic_write(self.checksum_path(path)) as f:
            json.dump(written, f)
        _verified[path] = _stamp(path)
        return path

    def get_or_build(self, name: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the cached array for (name, key); on a miss call ``build`` and store its
        result."""
        cached = self.load(name, key)
        if cached is not None:
            path = self.path(name, key)
            if path not in _REPORTED:  # prepare_data and each setup read it: said once
                log.info("%s: %d tokens from cache %s", name, len(cached), path)
            _REPORTED.add(path)
            return cached
        tokens = build()
        path = self.save(name, key, tokens)
        _REPORTED.add(path)
        log.info("%s: tokenised %d tokens into %s", name, len(tokens), path)
        return tokens
