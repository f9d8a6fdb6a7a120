"""Llama 3's tokenizer: tiktoken BPE over Meta's ``tokenizer.model`` plus its 256 special tokens.

``tokenizer.model`` is a tiktoken ranks file: one ``<base64 token> <rank>`` per line, ranks 0..n-1
(128000 in Meta's file). The special tokens take the ids after the last rank, in the order of
meta-llama/llama3's ``tokenizer.py``, so ``<|begin_of_text|>`` is 128000 there.

The file is parsed here rather than with ``tiktoken.load.load_tiktoken_bpe``, which copies every
file it reads into ``TIKTOKEN_CACHE_DIR`` under a key made from the path alone: a changed
``tokenizer.model`` at the same path would be served stale from the cache, and the shared cache
would fill with model files. Parsing here also names the bad line of a malformed file.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Literal

import tiktoken

from medlm.errors import MedlmError

# Meta's split pattern (cl100k's): contractions, words, 1-3 digits, punctuation runs, whitespace.
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
NUM_RESERVED_SPECIAL_TOKENS = 256
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",  # end of turn
    *(f"<|reserved_special_token_{i}|>" for i in range(5, NUM_RESERVED_SPECIAL_TOKENS - 5)),
)

# tiktoken's Rust core overflows its stack on very long pieces: encode at most this many characters
# at once, and cut runs of whitespace or of non-whitespace longer than the second limit (as Meta does).
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000


def read_bpe_ranks(path: str | Path) -> dict[bytes, int]:
    """The mergeable ranks of a tiktoken BPE file; a malformed file is named with its line."""
    path = Path(path)
    if not path.is_file():
        raise MedlmError(f"{path}: no such tokenizer file (Llama 3's tokenizer.model)")
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise MedlmError(f"{path}: line {lineno}: expected '<base64 token> <rank>' (a tiktoken BPE file "
                             f"such as Llama 3's tokenizer.model; Llama 2's sentencepiece model is not one), "
                             f"got {line[:60]!r}") from None
        if token in ranks or rank in seen_ranks:
            raise MedlmError(f"{path}: line {lineno}: duplicate {'token' if token in ranks else 'rank'} "
                             f"({parts[0].decode(errors='replace')} {rank})")
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise MedlmError(f"{path}: empty tokenizer file")
    if seen_ranks != set(range(len(ranks))):
        missing = min(set(range(len(ranks))) - seen_ranks)
        raise MedlmError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps; rank {missing} is missing")
    for b in range(256):
        if bytes([b]) not in ranks:
            raise MedlmError(f"{path}: byte 0x{b:02x} has no token; a byte-level BPE needs all 256 single bytes")
    return ranks


class Llama3Tokenizer:
    """Encode and decode text as Llama 3 does (meta-llama/llama3 ``tokenizer.py``)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        ranks = read_bpe_ranks(path)
        self.special_tokens: dict[str, int] = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(name=path.name, pat_str=PAT_STR, mergeable_ranks=ranks,
                                       special_tokens=self.special_tokens)
        self.bos_id: int = self.special_tokens["<|begin_of_text|>"]
        self.eos_id: int = self.special_tokens["<|end_of_text|>"]
        self.eot_id: int = self.special_tokens["<|eot_id|>"]
        self.stop_ids: frozenset[int] = frozenset({self.eos_id, self.eot_id})

    @property
    def vocab_size(self) -> int:
        return self.model.n_vocab

    def encode(self, text: str, bos: bool = False, eos: bool = False, *,
               allowed_special: AbstractSet[str] | Literal["all"] = frozenset()) -> list[int]:
        """Token ids of ``text``, with ``<|begin_of_text|>`` / ``<|end_of_text|>`` around it if asked.

        Special tokens written in ``text`` are encoded as plain text unless named in
        ``allowed_special`` (or "all"), so user text cannot inject control tokens.
        """
        ids: list[int] = [self.bos_id] if bos else []
        for piece in _pieces(text):
            ids.extend(self.model.encode(piece, allowed_special=allowed_special, disallowed_special=()))
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bytes that do not form UTF-8 (a cut-off character) become U+FFFD."""
        return self.model.decode(list(ids))


def _pieces(text: str) -> Iterator[str]:
    """``text`` in chunks tiktoken can encode, as Meta's tokenizer cuts it. Most texts have no over-long
    run, and then the per-character scan is skipped: one chunk per TIKTOKEN_MAX_ENCODE_CHARS."""
    limit = MAX_NO_WHITESPACES_CHARS
    # a run of limit + 1; the lookbehinds try each run from its start only, so the search stays linear
    long_run = re.compile(rf"(?<!\s)\s{{{limit + 1}}}|(?<!\S)\S{{{limit + 1}}}")
    for i in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
        chunk = text[i:i + TIKTOKEN_MAX_ENCODE_CHARS]
        if long_run.search(chunk) is None:
            yield chunk
        else:
            yield from _split_long_runs(chunk, limit)


def _split_long_runs(s: str, limit: int) -> Iterator[str]:
    """Cut ``s`` so that no piece holds more than ``limit`` consecutive whitespace or non-whitespace
    characters (Meta's ``_split_whitespaces_or_nonwhitespaces``)."""
    start = 0
    run = 0
    run_is_space = s[:1].isspace()
    for i, ch in enumerate(s):
        if ch.isspace() != run_is_space:
            run_is_space = not run_is_space
            run = 1
            continue
        run += 1
        if run > limit:
            yield s[start:i]
            start = i
            run = 1
    yield s[start:]
