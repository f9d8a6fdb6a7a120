"""The one tokenizer interface of medlm, its two implementations, and ``load_tokenizer``.

Every DataModule builds its :class:`Tokenizer` from the ``data.tokenizer`` setting and exposes it as
``datamodule.tokenizer``; callbacks, generation, evaluation and export use that object, so no token
id is written anywhere else.

- ``gpt2`` (or another tiktoken encoding name): tiktoken's BPE, offline through
``TIKTOKEN_CACHE_DIR``.
  A document ends with ``<|endoftext|>``, which also stands in for an empty prompt.
- ``llama3:<path to tokenizer.model>``, a ``tokenizer.model`` path, or a directory holding one:
  Llama 3's tokenizer (meta-llama/llama3 ``tokenizer.py``). ``tokenizer.model`` is a tiktoken ranks
  file, one ``<base64 token> <rank>`` per line; the 256 special tokens take the ids after the last
  rank, so ``<|begin_of_text|>`` is 128000 in Meta's file. It is parsed here rather than with
  ``tiktoken.load.load_tiktoken_bpe``, which copies every file it reads into ``TIKTOKEN_CACHE_DIR``
  under a key made from the path alone (a changed file at the same path would be served stale), and
  so that a malformed file is named with its line.

Special tokens written inside a text are always encoded as plain text: user text cannot end a
document early or inject a control token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import tiktoken

from medlm.errors import ConfigError, MedlmError

LLAMA3_PREFIX = "llama3:"


class Tokenizer:
    """Text <-> token ids, and the ids that have a meaning of their own.

    ``eot_id`` ends a document (and pads); ``bos_id`` starts every prompt when set (Llama 3);
    generation stops at any of ``stop_ids``. ``name`` is the spec it was loaded from, which rebuilds
    it (:func:`load_tokenizer`), so it pickles by name and keys token caches.
    """

    name: str
    vocab_size: int
    eot_id: int
    bos_id: int | None
    stop_ids: tuple[int, ...]

    def __init__(
        self,
        name: str,
        encoding: tiktoken.Encoding,
        eot_id: int,
        bos_id: int | None,
        stop_ids: Sequence[int],
    ) -> None:
        self.name = name
        self._enc = encoding
        self.vocab_size = encoding.n_vocab
        self.eot_id = eot_id
        self.bos_id = bos_id
        self.stop_ids = tuple(stop_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in it are text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bytes that do not form UTF-8 (a cut-off character) become U+FFFD."""
        return self._enc.decode(list(ids))

    def encode_prompt(self, text: str) -> list[int]:
        """What generation starts from: ``bos`` + ids when the tokenizer has one; an empty prompt
        without one starts from end-of-text, as a new document in GPT-2's training text."""
        ids = self.encode(text)
        if self.bos_id is not None:
            return [self.bos_id, *ids]
        return ids or [self.eot_id]

    def __reduce__(self):  # DataLoader workers and DDP ranks rebuild it from its spec
        return load_tokenizer, (self.name,)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding by name (``gpt2``); its end-of-text both ends and separates documents."""

    def __init__(self, name: str = "gpt2") -> None:
        try:
            enc = tiktoken.get_encoding(name)
        except ValueError as err:  # unknown encoding name
            raise ConfigError(
                f"data.tokenizer: unknown tokenizer {name!r} (gpt2, llama3:<path to "
                f"tokenizer.model>, or a directory holding one): {err}"
            ) from None
        except Exception as err:  # network or cache failure inside tiktoken
            cache = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
            raise MedlmError(
                f"cannot load the {name!r} tokenizer files: not in TIKTOKEN_CACHE_DIR={cache} and "
                f"not downloadable ({type(err).__name__}). Point TIKTOKEN_CACHE_DIR at a folder "
                "holding tiktoken's cached files (e.g. ../shared/tiktoken-cache; on a machine with "
                f"internet, medlm-prepare stage DIR --tokenizers {name} writes DIR/tiktoken-cache)."
            ) from None
        super().__init__(name, enc, eot_id=enc.eot_token, bos_id=None, stop_ids=(enc.eot_token,))


class Llama3Tokenizer(Tokenizer):
    """Llama 3's ``tokenizer.model``: prompts start with ``<|begin_of_text|>``; a document ends with
    ``<|end_of_text|>``; generation stops at it or ``<|eot_id|>``, as Meta's ``text_completion``."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        ranks = read_bpe_ranks(path)
        self.special_tokens: dict[str, int] = {
            tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)
        }
        enc = tiktoken.Encoding(
            name=path.name,
            pat_str=PAT_STR,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )
        eos = self.special_tokens["<|end_of_text|>"]
        super().__init__(
            f"{LLAMA3_PREFIX}{path}",
            enc,
            eot_id=eos,
            bos_id=self.special_tokens["<|begin_of_text|>"],
            stop_ids=(eos, self.special_tokens["<|eot_id|>"]),
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` in the chunks Meta's tokenizer cuts it into (tiktoken's core
        overflows its stack on very long pieces)."""
        ids: list[int] = []
        for piece in _pieces(text):
            ids.extend(self._enc.encode_ordinary(piece))
        return ids


@cache
def load_tokenizer(spec: str | os.PathLike = "gpt2") -> Tokenizer:
    """The tokenizer a config value names: a tiktoken encoding name (``gpt2``), ``llama3:<path>``,
    a ``tokenizer.model`` file, or a directory holding one (also under ``original/``, as Meta's
    Hugging Face repositories have it)."""
    text = str(spec)
    if text.startswith(LLAMA3_PREFIX):
        return Llama3Tokenizer(Path(text[len(LLAMA3_PREFIX) :]).expanduser())
    path = Path(text).expanduser()
    if path.is_dir():
        found = find_tokenizer_model(path)
        if found is None:
            raise MedlmError(f"{path}: no tokenizer.model in this directory")
        return Llama3Tokenizer(found)
    if path.is_file():
        return Llama3Tokenizer(path)
    if "/" in text or "\\" in text or path.suffix:
        raise MedlmError(f"{spec}: no such tokenizer file")
    return TiktokenTokenizer(text)


def find_tokenizer_model(directory: Path) -> Path | None:
    """Llama 3's ``tokenizer.model`` in a model directory, if it holds one."""
    for candidate in (directory / "tokenizer.model", directory / "original" / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def tokenizer_for_model_dir(directory: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer of a Hugging Face or Meta model directory: its ``tokenizer.model`` if it has
    one;
    GPT-2's when it holds GPT-2's BPE files (``merges.txt``) or the model's vocabulary is GPT-2's
    (padded to a multiple of 64 at most, as nanoGPT pads it)."""
    found = find_tokenizer_model(directory)
    if found is not None:
        return load_tokenizer(found)
    gpt2 = load_tokenizer("gpt2")
    if (directory / "merges.txt").is_file() or gpt2.vocab_size <= vocab_size < gpt2.vocab_size + 64:
        return gpt2
    raise MedlmError(
        f"{directory}: no tokenizer found (no tokenizer.model; a vocabulary of {vocab_size} "
        "is not GPT-2's); pass the tokenizer's path"
    )


# tiktoken's sources of the gpt2 encoding: OpenAI's encoder.json and vocab.bpe are, byte for byte,
# Hugging Face's vocab.json and merges.txt
_GPT2_HF_FILES = {
    "vocab.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "merges.txt": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}


def hf_tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, bytes]:
    """The files ``transformers.AutoTokenizer.from_pretrained`` reads for ``tokenizer``, by name:
    GPT-2's vocab.json, merges.txt and tokenizer_config.json (from tiktoken's cached files, offline
    through TIKTOKEN_CACHE_DIR); nothing for a tokenizer without a Hugging Face form here."""
    if tokenizer.name != "gpt2":
        return {}
    from tiktoken.load import read_file_cached

    files = {}
    for name, (url, sha256) in _GPT2_HF_FILES.items():
        try:
            files[name] = read_file_cached(url, sha256)
        except Exception as err:  # not cached and offline, or a corrupt cache entry
            raise MedlmError(
                f"cannot read GPT-2's {url.rsplit('/', 1)[1]} for {name} ({type(err).__name__}); "
                "point TIKTOKEN_CACHE_DIR at tiktoken's cached files (medlm-prepare stage DIR "
                "--tokenizers gpt2 writes them to DIR/tiktoken-cache)"
            ) from None
    token = tokenizer.decode([tokenizer.eot_id])  # <|endoftext|>
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "bos_token": token,
        "eos_token": token,
        "unk_token": token,
        "add_prefix_space": False,
        "add_bos_token": False,
    }
    files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
    return files


# ---------------------------------------------------------------------------------- Llama 3 files

# Meta's split pattern (cl100k's): contractions, words, 1-3 digits, punctuation runs, whitespace.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
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
# at once, and cut runs of whitespace or of non-whitespace longer than the second limit (as Meta
# does).
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
            raise MedlmError(
                f"{path}: line {lineno}: expected '<base64 token> <rank>' (a tiktoken BPE file "
                f"such as Llama 3's tokenizer.model; Llama 2's sentencepiece model is not one), "
                f"got {line[:60]!r}"
            ) from None
        if token in ranks or rank in seen_ranks:
            raise MedlmError(
                f"{path}: line {lineno}: duplicate {'token' if token in ranks else 'rank'} "
                f"({parts[0].decode(errors='replace')} {rank})"
            )
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise MedlmError(f"{path}: empty tokenizer file")
    if seen_ranks != set(range(len(ranks))):
        missing = min(set(range(len(ranks))) - seen_ranks)
        raise MedlmError(
            f"{path}: ranks must be 0..{len(ranks) - 1} without gaps; rank {missing} is missing"
        )
    for b in range(256):
        if bytes([b]) not in ranks:
            raise MedlmError(
                f"{path}: byte 0x{b:02x} has no token; a byte-level BPE needs all 256 single bytes"
            )
    return ranks


def _pieces(text: str) -> Iterator[str]:
    """``text`` in chunks tiktoken can encode, as Meta's tokenizer cuts it. Most texts have no
    over-long
    run, and then the per-character scan is skipped: one chunk per TIKTOKEN_MAX_ENCODE_CHARS."""
    limit = MAX_NO_WHITESPACES_CHARS
    # a run of limit + 1; the lookbehinds try each run from its start only, so the search stays
    # linear
    long_run = re.compile(rf"(?<!\s)\s{{{limit + 1}}}|(?<!\S)\S{{{limit + 1}}}")
    for i in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
        chunk = text[i : i + TIKTOKEN_MAX_ENCODE_CHARS]
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
