"""Llama 3's tokenizer over a small synthetic ranks file: all 256 bytes plus a few merges."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from medlm.data import llama3_tokenizer
from medlm.data.llama3_tokenizer import SPECIAL_TOKENS, Llama3Tokenizer
from medlm.errors import MedlmError

# Merges in rank order; each is the concatenation of two earlier tokens, as a BPE needs.
MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld", b" world", b"aa"]
RANK = {m: 256 + i for i, m in enumerate(MERGES)}
N_RANKS = 256 + len(MERGES)


def _write_ranks(path: Path, tokens: list[bytes], ranks: list[int] | None = None) -> Path:
    ranks = list(range(len(tokens))) if ranks is None else ranks
    path.write_bytes(b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in zip(tokens, ranks)))
    return path


def _tokens() -> list[bytes]:
    return [bytes([b]) for b in range(256)] + MERGES


@pytest.fixture
def tok_path(tmp_path: Path) -> Path:
    return _write_ranks(tmp_path / "tokenizer.model", _tokens())


@pytest.fixture
def tok(tok_path: Path) -> Llama3Tokenizer:
    return Llama3Tokenizer(tok_path)


def test_encode_uses_the_ranks_and_meta_split_pattern(tok: Llama3Tokenizer) -> None:
    assert tok.encode("hello world") == [RANK[b"hello"], RANK[b" world"]]
    # the pattern splits "hello" from "," and keeps the leading space on " world"
    assert tok.encode("hello, world") == [RANK[b"hello"], ord(","), RANK[b" world"]]
    assert tok.encode("") == []


def test_special_tokens_follow_meta_order(tok: Llama3Tokenizer) -> None:
    assert len(SPECIAL_TOKENS) == 256 and len(set(SPECIAL_TOKENS)) == 256
    assert tok.vocab_size == N_RANKS + 256
    assert tok.bos_id == N_RANKS  # 128000 with Meta's 128000 ranks
    assert tok.eos_id == N_RANKS + 1
    assert tok.special_tokens["<|start_header_id|>"] == N_RANKS + 6
    assert tok.special_tokens["<|end_header_id|>"] == N_RANKS + 7
    assert tok.eot_id == tok.special_tokens["<|eot_id|>"] == N_RANKS + 9
    assert tok.special_tokens["<|reserved_special_token_250|>"] == N_RANKS + 255
    assert tok.stop_ids == {tok.eos_id, tok.eot_id}


def test_bos_eos_and_special_text(tok: Llama3Tokenizer) -> None:
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids == [tok.bos_id, RANK[b"hello"], tok.eos_id]
    assert tok.decode(ids) == "<|begin_of_text|>hello<|end_of_text|>"
    # special tokens written in user text stay text unless allowed
    plain = tok.encode("<|eot_id|>")
    assert tok.eot_id not in plain and tok.decode(plain) == "<|eot_id|>"
    assert tok.encode("<|eot_id|>", allowed_special="all") == [tok.eot_id]
    assert tok.encode("hi<|eot_id|>", allowed_special={"<|eot_id|>"})[-1] == tok.eot_id


def test_decode_round_trips_unicode(tok: Llama3Tokenizer) -> None:
    text = "Patient: 37.5°C, naïve — ✓ 痛み\n\n  hello world"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("°")[:1]) == "\ufffd"  # half a character


def test_long_runs_are_cut_as_meta_does(tok: Llama3Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    aa, a = RANK[b"aa"], ord("a")
    assert tok.encode("a" * 9) == [aa, aa, aa, aa, a]
    monkeypatch.setattr(llama3_tokenizer, "MAX_NO_WHITESPACES_CHARS", 5)
    assert tok.encode("a" * 9) == [aa, aa, a, aa, aa]  # pieces "aaaaa" + "aaaa"
    assert tok.decode(tok.encode("a" * 12 + " " * 13 + "hello")) == "a" * 12 + " " * 13 + "hello"
    assert list(llama3_tokenizer._split_long_runs("aaaaaaa  bb", 3)) == ["aaa", "aaa", "a  bb"]
    monkeypatch.setattr(llama3_tokenizer, "MAX_NO_WHITESPACES_CHARS", 25_000)
    monkeypatch.setattr(llama3_tokenizer, "TIKTOKEN_MAX_ENCODE_CHARS", 4)
    # chunks "hell" "ohel" "lo" instead of one word
    assert tok.encode("hellohello") == [RANK[b"hell"], ord("o"), RANK[b"he"], ord("l"), ord("l"), ord("o")]


def test_loading_does_not_touch_the_tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed file at the same path is read afresh (tiktoken's loader would serve a cached copy)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    path = _write_ranks(tmp_path / "tokenizer.model", _tokens())
    assert Llama3Tokenizer(path).encode("hello") == [RANK[b"hello"]]
    _write_ranks(path, [bytes([b]) for b in range(256)])  # no merges any more
    assert Llama3Tokenizer(path).encode("hello") == list(b"hello")
    assert list(cache.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MedlmError, match="no such tokenizer file") as err:
        Llama3Tokenizer(tmp_path / "tokenizer.model")
    assert str(tmp_path / "tokenizer.model") in str(err.value)


@pytest.mark.parametrize("content, message", [
    (b"", "empty tokenizer file"),
    (b"aGk= 0\nnot-base64! 1\n", "line 2: expected '<base64 token> <rank>'"),
    (b"aGk= zero\n", "line 1: expected"),
    (b"aGk= 0 extra\n", "line 1: expected"),
    (b"\x08\x01\x12\x05hello\x1a\x00", "line 1: expected"),  # a sentencepiece protobuf (Llama 2)
    (b"aGk= 0\naGk= 1\n", "line 2: duplicate token"),
    (b"aGk= 0\naA== 0\n", "line 2: duplicate rank"),
])
def test_malformed_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(MedlmError, match=message) as err:
        Llama3Tokenizer(path)
    assert str(path) in str(err.value)


def test_rank_gap_and_missing_byte(tmp_path: Path) -> None:
    tokens = _tokens()
    path = _write_ranks(tmp_path / "gap.model", tokens, [*range(256), *range(257, 257 + len(MERGES))])
    with pytest.raises(MedlmError, match="rank 256 is missing"):
        Llama3Tokenizer(path)
    path = _write_ranks(tmp_path / "nobyte.model", [t for t in tokens if t != b"\xff"])
    with pytest.raises(MedlmError, match="byte 0xff has no token"):
        Llama3Tokenizer(path)


@pytest.mark.parametrize("text", ["aaa bbb", "aaaa", "a    b", "    ", "ab\n\n\n\ncd", "x aaaab", ""])
def test_fast_path_agrees_with_the_scan(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The regex that skips the per-character scan finds a run exactly when the scan would cut."""
    monkeypatch.setattr(llama3_tokenizer, "MAX_NO_WHITESPACES_CHARS", 3)
    scanned = list(llama3_tokenizer._split_long_runs(text, 3))
    assert list(llama3_tokenizer._pieces(text)) == (scanned if len(scanned) > 1 else [text] if text else [])
