"""Tokenizer files for offline nodes: tiktoken's cache (``tiktoken-cache/``), Llama 3's model file.

- A tiktoken encoding (``gpt2``): tiktoken's own constructor downloads its files, checks their
  sha256 and caches them under ``TIKTOKEN_CACHE_DIR``, named by the sha1 of their URL; staging
  points that variable at a scratch folder while it runs, and keeps what lands there as
  ``tiktoken-cache/<sha1>``. ``TIKTOKEN_CACHE_DIR=DIR/tiktoken-cache`` then serves them offline
  (GPT-2's ``vocab.bpe`` and ``encoder.json`` also make ``medlm-export``'s vocab.json/merges.txt).
- ``llama3:<path>``: the ``tokenizer.model`` file (checked by medlm's reader) is copied to
  ``tokenizers/llama3/tokenizer.model``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlm.data.shards import file_sha256
from medlm.errors import ConfigError, MedlmError
from medlm.staging.hub import first_line
from medlm.staging.manifest import ItemFiles
from medlm.utils.io import atomic_path

TIKTOKEN_DIR = "tiktoken-cache"
LLAMA3_REL = "tokenizers/llama3/tokenizer.model"


@dataclass(frozen=True)
class TokenizerSpec:
    """``--tokenizers`` entry: a tiktoken encoding name, or ``llama3:<path to tokenizer.model>``."""

    name: str  # the manifest key's name: the encoding, or "llama3"
    path: Path | None = None  # llama3's source file

    @property
    def key(self) -> str:
        return f"tokenizer:{self.name}"


def parse_tokenizer(spec: str) -> TokenizerSpec:
    from medlm.data.tokenizer import LLAMA3_PREFIX

    if spec.startswith(LLAMA3_PREFIX):
        path = Path(spec[len(LLAMA3_PREFIX) :]).expanduser()
        if not path.is_file():
            raise ConfigError(f"--tokenizers {spec}: no such file (Llama 3's tokenizer.model)")
        return TokenizerSpec("llama3", path.resolve())
    import tiktoken

    if spec not in tiktoken.list_encoding_names():
        raise ConfigError(
            f"--tokenizers {spec}: unknown tokenizer; a tiktoken encoding "
            f"({', '.join(tiktoken.list_encoding_names())}) or llama3:<path to tokenizer.model>"
        )
    return TokenizerSpec(spec)


@contextmanager
def _tiktoken_cache(directory: Path) -> Iterator[None]:
    """tiktoken caches into ``directory`` while this runs (its variable is read at each call)."""
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = before


def stage_tiktoken(spec: TokenizerSpec, files: ItemFiles) -> dict[str, Any]:
    """Download encoding ``spec.name``'s files through tiktoken into ``files``."""
    import tiktoken
    import tiktoken.registry

    cache = files.scratch / "tiktoken"
    cache.mkdir()
    tiktoken.list_encoding_names()  # fills the registry of constructors
    constructor = tiktoken.registry.ENCODING_CONSTRUCTORS[spec.name]
    try:
        with _tiktoken_cache(cache):
            constructor()  # downloads, checks each file's sha256, caches it
    except Exception as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise
        if isinstance(err, ValueError):  # tiktoken's hash mismatch
            raise MedlmError(
                f"tokenizer {spec.name}: tiktoken's files did not download intact "
                f"({first_line(err)})"
            ) from None
        raise MedlmError(  # requests' connection and HTTP errors
            f"cannot download tiktoken's {spec.name} files ({type(err).__name__}: "
            f"{first_line(err)}); run medlm-prepare stage on a machine with internet access"
        ) from None
    cached = sorted(p for p in cache.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    if not cached:
        raise MedlmError(f"tokenizer {spec.name}: tiktoken cached no files")
    for path in cached:
        files.adopt(f"{TIKTOKEN_DIR}/{path.name}", path)
    return {"tiktoken_version": tiktoken.__version__}


def stage_llama3(spec: TokenizerSpec, files: ItemFiles) -> dict[str, Any]:
    """Check ``spec.path`` with medlm's reader and copy it to ``tokenizers/llama3/``."""
    from medlm.data.tokenizer import read_bpe_ranks

    read_bpe_ranks(spec.path)  # a malformed file is named with its line, before anything is kept
    with atomic_path(files.path(LLAMA3_REL)) as tmp:
        shutil.copyfile(spec.path, tmp)
    return {}


def llama3_request(spec: TokenizerSpec) -> dict[str, Any]:
    """What identifies a Llama 3 tokenizer request: the file and its content."""
    if spec.path is None:
        raise MedlmError("llama3 tokenizer without a path")
    return {"source": str(spec.path), "sha256": file_sha256(spec.path)}
