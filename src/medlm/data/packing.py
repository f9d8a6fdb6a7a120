"""Packing text into fixed-length next-token blocks, shared by every causal-LM dataset.

Records are tokenised one after another into a single flat array with the end-of-text token after
each record (as GPT-2 was trained), then cut into non-overlapping windows of ``block_size`` tokens.
The labels of a window are the same tokens shifted by one, so ``labels[t]`` is the target of
``logits[t]`` (the batch contract in CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, DataError


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id: uint16 for GPT-2's 50,257 tokens."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def tokenize_texts(texts: Iterable[str], tokenizer: Tokenizer) -> np.ndarray:
    """Encode ``texts`` into one flat array, each record followed by the end-of-text token.

    Special tokens written inside a text are encoded as plain text, so a record can never end
    early or inject a control token. (One text at a time: tiktoken's threaded batch encoder is
    no faster on a few cores, and this holds one record's Python list at a time.)
    """
    dtype = token_dtype(tokenizer.vocab_size)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    parts: list[np.ndarray] = []
    for text in texts:
        parts.append(np.asarray(tokenizer.encode(text), dtype=dtype))
        parts.append(eot)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"data.block_size must be a positive integer, got {block_size!r}")


class PackedBlocks(Dataset):
    """Non-overlapping windows of a flat token array as next-token examples.

    Item ``i`` is ``{"input_ids": x[i*B:(i+1)*B], "labels": x[i*B+1:(i+1)*B+1]}`` (int64); the
    tail that does not fill a whole window is dropped. ``tokens`` may be a memory map.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, name: str = "dataset") -> None:
        _check_block_size(block_size)
        if tokens.ndim != 1:
            raise DataError(f"{name}: expected a flat token array, got shape {tuple(tokens.shape)}")
        if len(tokens) < block_size + 1:
            raise DataError(
                f"{name}: empty dataset: {len(tokens)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1} needed for one block; add records or lower data.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.name = name

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: block {i} out of range for {n} blocks")
        start = i * self.block_size
        # One extra token: the target of the window's last position.
        x = torch.from_numpy(
            np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64)
        )
        return {"input_ids": x[:-1], "labels": x[1:]}  # (T,), (T,)


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch (and forwards it through its distributed
    wrapper), so a run resumed at an epoch boundary sees the same order as an uninterrupted one.
    Without ``set_epoch`` (a plain loop) each new iteration moves on to the next epoch's order.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        self.epoch += 1
        return iter(order)
