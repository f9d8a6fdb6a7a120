"""The Tokenizer: GPT-2's through tiktoken, and Llama 3's over a small synthetic ranks file (all 256
bytes plus a few merges); load_tokenizer's specs."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import pytest

from medlm.data import tokenizer as llama3_tokenizer
from medlm.data.tokenizer import (
    SPECIAL_TOKENS,
    Llama3Tokenizer,
    load_tokenizer,
    tokenizer_for_model_dir,
)
from medlm.errors import ConfigError, MedlmError

# Merges in rank order; each is the concatenation of two earlier tokens, as a BPE needs.
MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld", b" world", b"aa"]
RANK = {m: 256 + i for i, m in enumerate(MERGES)}
N_RANKS = 256 + len(MERGES)


def _write_ranks(path: Path, tokens: list[bytes], ranks: list[int] | None = None) -> Path:
    ranks = list(range(len(tokens))) if ranks is None else ranks
    path.write_bytes(
        b"".join(
            base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in zip(tokens, ranks)
        )
    )
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
    assert tok.eot_id == N_RANKS + 1  # <|end_of_text|> ends a document
    assert tok.special_tokens["<|start_header_id|>"] == N_RANKS + 6
    assert tok.special_tokens["<|end_header_id|>"] == N_RANKS + 7
    assert tok.special_tokens["<|eot_id|>"] == N_RANKS + 9
    assert tok.special_tokens["<|reserved_special_token_250|>"] == N_RANKS + 255
    assert tok.stop_ids == (N_RANKS + 1, N_RANKS + 9)  # <|end_of_text|>, <|eot_id|>


def test_prompts_start_with_bos_and_special_text_stays_text(tok: Llama3Tokenizer) -> None:
    ids = tok.encode_prompt("hello")
    assert ids == [tok.bos_id, RANK[b"hello"]]
    assert tok.decode(ids + [tok.eot_id]) == "<|begin_of_text|>hello<|end_of_text|>"
    plain = tok.encode("<|eot_id|>")  # special tokens written in user text stay text
    assert not set(plain) & set(tok.stop_ids) and tok.decode(plain) == "<|eot_id|>"


def test_decode_round_trips_unicode(tok: Llama3Tokenizer) -> None:
    text = "Patient: 37.5°C, naïve — ✓ 痛み\n\n  hello world"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("°")[:1]) == "\ufffd"  # half a character


def test_long_runs_are_cut_as_meta_does(
    tok: Llama3Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    aa, a = RANK[b"aa"], ord("a")
    assert tok.encode("a" * 9) == [aa, aa, aa, aa, a]
    monkeypatch.setattr(llama3_tokenizer, "MAX_NO_WHITESPACES_CHARS", 5)
    assert tok.encode("a" * 9) == [aa, aa, a, aa, aa]  # pieces "aaaaa" + "aaaa"
    assert tok.decode(tok.encode("a" * 12 + " " * 13 + "hello")) == "a" * 12 + " " * 13 + "hello"
    assert list(llama3_tokenizer._split_long_runs("aaaaaaa  bb", 3)) == ["aaa", "aaa", "a  bb"]
    monkeypatch.setattr(llama3_tokenizer, "MAX_NO_WHITESPACES_CHARS", 25_000)
    monkeypatch.setattr(llama3_tokenizer, "TIKTOKEN_MAX_ENCODE_CHARS", 4)
    # chunks "hell" "ohel" "lo" instead of one word
    assert tok.encode("hellohello") == [
        RANK[b"hell"],
        ord("o"),
        RANK[b"he"],
        ord("l"),
        ord("l"),
        ord("o"),
    ]


def test_loading_does_not_touch_the_tiktoken_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed file at the same path is read afresh (tiktoken's loader would serve a cached
    copy)."""
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


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty tokenizer file"),
        (b"aGk= 0\nnot-base64! 1\n", "line 2: expected '<base64 token> <rank>'"),
        (b"aGk= zero\n", "line 1: expected"),
        (b"aGk= 0 extra\n", "line 1: expected"),
        (
            b"\x08\x01\x12\x05hello\x1a\x00",
            "line 1: expected",
        ),  # a sentencepiece protobuf (Llama 2)
        (b"aGk= 0\naGk= 1\n", "line 2: duplicate token"),
        (b"aGk= 0\naA== 0\n", "line 2: duplicate rank"),
    ],
)
def test_malformed_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(MedlmError, match=message) as err:
        Llama3Tokenizer(path)
    assert str(path) in str(err.value)


def test_rank_gap_and_missing_byte(tmp_path: Path) -> None:
    tokens = _tokens()
    path = _write_ranks(
        tmp_path / "gap.model", tokens, [*range(256), *range(257, 257 + len(MERGES))]
    )
    with pytest.raises(MedlmError, match="rank 256 is missing"):
        Llama3Tokenizer(path)
    path = _write_ranks(tmp_path / "nobyte.model", [t for t in tokens if t != b"\xff"])
    with pytest.raises(MedlmError, match="byte 0xff has no token"):
        Llama3Tokenizer(path)


@pytest.mark.parametrize(
    "text", ["aaa bbb", "aaaa", "a    b", "    ", "ab\n\n\n\ncd", "x aaaab", ""]
)
def test_fast_path_agrees_with_the_scan(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The regex that skips the per-character scan finds a run exactly when the scan would cut."""
    monkeypatch.setattr(llama3_tokenizer, "MAX_NO_WHITESPACES_CHARS", 3)
    scanned = list(llama3_tokenizer._split_long_runs(text, 3))
    assert list(llama3_tokenizer._pieces(text)) == (
        scanned if len(scanned) > 1 else [text] if text else []
    )


def test_gpt2_tokenizer() -> None:
    tok = load_tokenizer("gpt2")
    assert (tok.name, tok.vocab_size, tok.bos_id, tok.stop_ids) == (
        "gpt2",
        50257,
        None,
        (tok.eot_id,),
    )
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")  # special text stays text
    assert tok.encode_batch(["hello", "world"]) == [tok.encode("hello"), tok.encode("world")]
    assert tok.encode_prompt("") == [tok.eot_id]  # an empty prompt starts a new document
    assert pickle.loads(pickle.dumps(tok)) is tok  # rebuilt by name in workers and ranks


def test_load_tokenizer_specs(tok_path: Path, tmp_path: Path) -> None:
    by_prefix = load_tokenizer(f"llama3:{tok_path}")
    assert load_tokenizer(tok_path).encode("hello") == by_prefix.encode("hello") == [RANK[b"hello"]]
    assert (
        load_tokenizer(tok_path.parent).vocab_size == by_prefix.vocab_size
    )  # a directory holding one
    assert by_prefix.name == f"llama3:{tok_path}"
    with pytest.raises(ConfigError, match="unknown tokenizer 'gpt5'"):
        load_tokenizer("gpt5")
    with pytest.raises(MedlmError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedlmError, match="no tokenizer.model in this directory"):
        load_tokenizer(tmp_path / "empty")


def test_tokenizer_of_a_model_directory(tok_path: Path, tmp_path: Path) -> None:
    assert tokenizer_for_model_dir(tok_path.parent, 10).vocab_size == N_RANKS + 256
    bare = tmp_path / "bare"
    bare.mkdir()
    assert tokenizer_for_model_dir(bare, 50304).name == "gpt2"  # GPT-2's vocabulary, padded
    with pytest.raises(MedlmError, match="a vocabulary of 32000 is not GPT-2's"):
        tokenizer_for_model_dir(bare, 32000)
