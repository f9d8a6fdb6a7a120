"""The GPT-2 BPE tokenizer through tiktoken, usable offline through ``TIKTOKEN_CACHE_DIR``."""

from __future__ import annotations

import os
from functools import lru_cache

import tiktoken

from medlm.errors import MedlmError

GPT2_EOT = 50256  # <|endoftext|>


@lru_cache(maxsize=None)
def get_tokenizer(name: str = "gpt2") -> tiktoken.Encoding:
    """Return tiktoken's encoding ``name``; fail with a clear line when its files are unreachable."""
    try:
        return tiktoken.get_encoding(name)
    except ValueError as err:  # unknown encoding name
        raise MedlmError(f"unknown tokenizer {name!r}: {err}") from None
    except Exception as err:  # network or cache failure inside tiktoken
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
        raise MedlmError(
            f"cannot load the {name!r} tokenizer files: not in TIKTOKEN_CACHE_DIR={cache} and not "
            f"downloadable ({type(err).__name__}). Point TIKTOKEN_CACHE_DIR at a folder holding "
            "tiktoken's cached files (e.g. ../shared/tiktoken-cache, or one made by medlm-prepare)."
        ) from None


def encode(text: str, name: str = "gpt2") -> list[int]:
    """Encode plain text; special tokens written in the text are treated as text."""
    return get_tokenizer(name).encode_ordinary(text)


def decode(ids: list[int], name: str = "gpt2") -> str:
    return get_tokenizer(name).decode(ids)
