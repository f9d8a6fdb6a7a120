"""Token shards: the file format, the public reader ``load_tokens``, and the shard manifest.

A shard is one binary file: a 32-byte little-endian header, then the token ids.

    offset  size  field
    0       8     magic       b"MEDLMTOK"
    8       4     version     uint32, 1
    12      4     dtype code  uint32, the bytes per token: 2 (uint16) or 4 (uint32)
    16      8     count       uint64, the number of tokens that follow
    24      4     vocab_size  uint32, of the tokenizer that wrote it
    28      4     eot_id      uint32, its end-of-text id
    32      ...   tokens      count x dtype, little-endian

Tokens are uint16 when the vocabulary fits (GPT-2's 50,257), else uint32 (Llama 3's 128,256).
Every document is end-of-text followed by its tokens, so a shard begins with end-of-text and a
document may continue in the next shard. Reading one with numpy alone::

    header = np.fromfile(path, dtype=HEADER_DTYPE, count=1)[0]
    dtype = {2: np.uint16, 4: np.uint32}[int(header["dtype"])]
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=32, shape=(int(header["count"]),))

A directory of shards holds ``manifest.json`` (written by ``medlm-prepare shards``): the source,
the tokenizer (name, vocabulary size, end-of-text id and a fingerprint of its encoding), and per
shard its name, split (``train``/``val``), token count, sha256 and where in the document stream it
ends (so that an interrupted preparation resumes after its last finished shard).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, DataError
from medlm.utils.io import atomic_path, atomic_write

MAGIC = b"MEDLMTOK"
VERSION = 1
HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("dtype", "<u4"),
        ("count", "<u8"),
        ("vocab_size", "<u4"),
        ("eot_id", "<u4"),
    ]
)
HEADER_BYTES = HEADER_DTYPE.itemsize  # 32
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "medlm-token-shards"
SPLITS = ("train", "val")
# A tokenizer's fingerprint is a hash of its encoding of this text (and its vocabulary size and
# end-of-text id): two tokenizers that agree on it cut text the same way.
FINGERPRINT_TEXT = (
    "medlm tokenizer fingerprint: The patient's 3 biopsies (12.5 mm, 7 mm) showed "
    "adenocarcinoma.\n\tÄrzte, naïve café, 日本語, Ελληνικά, 🙂 <|endoftext|> end"
)


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return DTYPES[2] if vocab_size <= 2**16 else DTYPES[4]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    ids = tokenizer.encode(FINGERPRINT_TEXT)
    blob = json.dumps([tokenizer.vocab_size, tokenizer.eot_id, ids]).encode("ascii")
    return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_record(tokenizer: Tokenizer) -> dict[str, Any]:
    """What a manifest records of the tokenizer that wrote the shards."""
    return {
        "name": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


# ----------------------------------------------------------------------------------- one shard


def write_shard(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int, eot_id: int) -> str:
    """Write ``tokens`` as a shard (atomically); return the sha256 of the whole file."""
    dtype = shard_dtype(vocab_size)
    data = np.ascontiguousarray(tokens, dtype=dtype)
    header = np.array(
        [(MAGIC, VERSION, dtype.itemsize, len(data), vocab_size, eot_id)], dtype=HEADER_DTYPE
    )
    digest = hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in (header.tobytes(), memoryview(data).cast("B")):
            f.write(part)
            digest.update(part)
    return digest.hexdigest()


def read_header(path: str | os.PathLike) -> np.void:
    """The checked header of a shard: magic, version, dtype code, a file size matching the count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as err:
        raise DataError(f"{path}: cannot read token shard: {err.strerror or err}") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(
            f"{path}: truncated token shard: {size} bytes, "
            f"shorter than the {HEADER_BYTES}-byte header"
        )
    header = np.frombuffer(raw, dtype=HEADER_DTYPE, count=1)[0]
    if bytes(header["magic"]) != MAGIC:
        raise DataError(
            f"{path}: not a medlm token shard "
            f"(magic {bytes(header['magic'])!r}, expected {MAGIC!r})"
        )
    if int(header["version"]) != VERSION:
        raise DataError(
            f"{path}: token shard format version {int(header['version'])}; this medlm reads "
            f"version {VERSION}"
        )
    code = int(header["dtype"])
    if code not in DTYPES:
        raise DataError(
            f"{path}: unknown token dtype code {code} (expected 2 for uint16 or 4 for uint32)"
        )
    expected = HEADER_BYTES + int(header["count"]) * code
    if size < expected:
        raise DataError(
            f"{path}: truncated token shard: {size} bytes, the header announces "
            f"{int(header['count'])} tokens ({expected} bytes)"
        )
    if size > expected:
        raise DataError(
            f"{path}: token shard has {size - expected} bytes after its "
            f"{int(header['count'])} tokens; the file is damaged"
        )
    return header


def load_tokens(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard, memory-mapped read-only; a damaged shard is a DataError naming it."""
    header = read_header(path)
    count = int(header["count"])
    dtype = DTYPES[int(header["dtype"])]
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard directory, with its shape checked."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        hint = " (make one with: medlm-prepare shards SOURCE OUT_DIR)"
        raise DataError(
            f"{path}: no shard manifest; {Path(directory)} is not a token-shard directory{hint}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable shard manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f'{path}: not a medlm shard manifest (no "format": "{MANIFEST_FORMAT}")')
    if manifest.get("version") != VERSION:
        raise DataError(
            f"{path}: shard manifest version {manifest.get('version')!r}; "
            f"this medlm reads {VERSION}"
        )
    shards = manifest.get("shards")
    tok = manifest.get("tokenizer")
    if not isinstance(shards, list) or not isinstance(tok, dict):
        raise DataError(f'{path}: shard manifest without a "shards" list or a "tokenizer" record')
    for i, shard in enumerate(shards):
        if not (
            isinstance(shard, dict)
            and isinstance(shard.get("name"), str)
            and shard.get("split") in SPLITS
            and isinstance(shard.get("tokens"), int)
            and isinstance(shard.get("sha256"), str)
        ):
            raise DataError(
                f"{path}: shard entry {i} needs name, split (train/val), tokens and sha256: "
                f"{shard!r:.200}"
            )
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    with atomic_write(Path(directory) / MANIFEST) as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def check_tokenizer(
    manifest: dict[str, Any], tokenizer: Tokenizer, where: str, key: str = "data.tokenizer"
) -> None:
    """The shards were written by ``tokenizer``: same vocabulary, end-of-text and encoding."""
    wrote = manifest["tokenizer"]
    mine = tokenizer_record(tokenizer)
    for field in ("vocab_size", "eot_id", "fingerprint"):
        if wrote.get(field) != mine[field]:
            how = "cuts text differently" if field == "fingerprint" else "differs"
            raise ConfigError(
                f"{where}: the shards were written with tokenizer {wrote.get('name')!r} "
                f"(vocab_size {wrote.get('vocab_size')}, eot_id {wrote.get('eot_id')}), but "
                f"{key}={tokenizer.name!r} (vocab_size {mine['vocab_size']}, eot_id "
                f"{mine['eot_id']}) {how}; "
                f"set {key} to the shards' tokenizer or prepare the shards again"
            )


def check_shard_header(
    path: Path, header: np.void, tokenizer: Tokenizer, tokens: int | None = None
) -> None:
    """A shard's own header agrees with the tokenizer (and the manifest's count)."""
    if (
        int(header["vocab_size"]) != tokenizer.vocab_size
        or int(header["eot_id"]) != tokenizer.eot_id
    ):
        raise DataError(
            f"{path}: shard written with a vocabulary of {int(header['vocab_size'])} tokens "
            f"(end-of-text {int(header['eot_id'])}); the tokenizer {tokenizer.name!r} has "
            f"{tokenizer.vocab_size} (end-of-text {tokenizer.eot_id})"
        )
    if tokens is not None and int(header["count"]) != tokens:
        raise DataError(
            f"{path}: shard holds {int(header['count'])} tokens, the manifest says {tokens}"
        )
