"""Tokenising records into one flat array and cutting it into next-token blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medlm.data.packing import EpochShuffleSampler, PackedBlocks, token_dtype, tokenize_texts
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError

GPT2 = load_tokenizer("gpt2")
GPT2_EOT, encode = GPT2.eot_id, GPT2.encode


def test_tokenize_texts_puts_end_of_text_after_every_record() -> None:
    texts = ["Question: is it?", "Context: yes.\nAnswer: maybe", "x"]
    tokens = tokenize_texts(texts, GPT2)
    expected = [t for text in texts for t in encode(text) + [GPT2_EOT]]
    assert tokens.tolist() == expected
    assert tokens.dtype == np.uint16
    assert (tokens == GPT2_EOT).sum() == len(texts)


def test_tokenize_texts_encodes_special_token_text_as_plain_text() -> None:
    tokens = tokenize_texts(["a <|endoftext|> b"], GPT2)
    assert tokens.tolist().count(GPT2_EOT) == 1  # only the separator after the record
    assert tokens[-1] == GPT2_EOT


def test_tokenize_texts_accepts_a_generator_and_nothing() -> None:
    assert tokenize_texts((t for t in ["a", "b"]), GPT2).tolist() == encode("a") + [
        GPT2_EOT
    ] + encode("b") + [GPT2_EOT]
    empty = tokenize_texts([], GPT2)
    assert empty.shape == (0,) and empty.dtype == np.uint16


def test_token_dtype_widens_for_large_vocabularies() -> None:
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(100277) == np.int32


def test_blocks_are_non_overlapping_windows_with_shifted_labels() -> None:
    tokens = np.arange(23, dtype=np.uint16)
    ds = PackedBlocks(tokens, block_size=5)
    assert len(ds) == 4  # (23 - 1) // 5: the tail of 2 tokens is dropped
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].dtype == torch.int64 and item["labels"].dtype == torch.int64
        assert item["input_ids"].tolist() == list(range(5 * i, 5 * i + 5))
        assert item["labels"].tolist() == list(range(5 * i + 1, 5 * i + 6))
    assert ds[-1]["input_ids"].tolist() == ds[3]["input_ids"].tolist()
    with pytest.raises(IndexError):
        ds[4]


def test_the_last_window_may_use_the_final_token_as_its_last_label() -> None:
    ds = PackedBlocks(np.arange(11, dtype=np.int32), block_size=5)
    assert len(ds) == 2
    assert ds[1]["labels"].tolist() == [6, 7, 8, 9, 10]


def test_exactly_one_block_needs_block_size_plus_one_tokens() -> None:
    assert len(PackedBlocks(np.arange(9), block_size=8)) == 1
    with pytest.raises(
        DataError, match=r"pubmedqa val split: empty dataset: 8 tokens.*block_size \+ 1 = 9"
    ):
        PackedBlocks(np.arange(8), block_size=8, name="pubmedqa val split")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_block_size_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(ConfigError, match="data.block_size"):
        PackedBlocks(np.arange(100), block_size=bad)


def test_tokens_must_be_flat() -> None:
    with pytest.raises(DataError, match="flat token array"):
        PackedBlocks(np.zeros((4, 10), dtype=np.uint16), block_size=2, name="x")


def test_loader_batches_follow_the_causal_lm_contract() -> None:
    ds = PackedBlocks(tokenize_texts(["one two three four five six"] * 20, GPT2), block_size=16)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 16)
    assert batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_epoch_shuffle_sampler_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert list(b) == first
    second = list(a)  # without set_epoch, the next iteration is the next epoch
    assert second != first
    b.set_epoch(1)
    assert list(b) == second  # what a resumed run at epoch 1 sees
    b.set_epoch(0)
    assert list(b) == first
    assert list(EpochShuffleSampler(50, seed=4)) != first
    assert len(a) == 50
