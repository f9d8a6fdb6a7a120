"""Prompt-masked examples for supervised fine-tuning: tokenise, mask, truncate, then pack or pad.

An example is a prompt and an answer: ``x = prompt + answer + <|endoftext|>`` (n tokens). It gives
n - 1 training positions, ``input_ids = x[:-1]`` and ``labels = x[1:]`` (the batch contract in
CONTRIBUTING.md: ``labels[t]`` is the target of ``logits[t]``), with ``-100`` wherever the target is
still a prompt token. So the loss covers the answer tokens and the end-of-text after them, and the
prompt's last token is the position that predicts the answer's first.

Two ways to batch them, never letting one example see another:
- :class:`PackedExamples`: whole examples fill blocks of ``block_size`` positions (best-fit
  decreasing, an example is never split across blocks); ``doc_ids`` tell the model which positions
  belong together (``CausalLM`` turns them into a block-diagonal causal mask and positions that
  restart at each example). The unused tail of a block is padding with a document id of its own.
- :class:`PaddedExamples` + :class:`PadCollate`: one example per row, right-padded to the longest
  row of the batch; plain causal attention never reaches the padding on the right.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from medlm.data.packing import token_dtype
from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, DataError

IGNORE_INDEX = -100
OVERLONG = ("truncate", "drop")


def tokenize_examples(
    pairs: Iterable[tuple[str, str]], tokenizer: Tokenizer
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, answer) texts -> a flat array of every ``prompt + answer + eot`` and an index
    (n, 2) int64 of each example's (prompt length, total length), in order.

    Prompt and answer are encoded separately, so that the prompt tokens are exactly those that a
    prompt encoded alone gives at generation time. Special tokens written in a text stay text.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    parts: list[np.ndarray] = []
    index: list[tuple[int, int]] = []
    for prompt, answer in pairs:
        p = tokenizer.encode(prompt)
        a = tokenizer.encode(answer)
        parts.append(np.asarray(p + a + [tokenizer.eot_id], dtype=dtype))
        index.append((len(p), len(p) + len(a) + 1))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return tokens, np.asarray(index, dtype=np.int64).reshape(-1, 2)


def check_block_size(block_size: object) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ConfigError(f"data.block_size must be an integer >= 2, got {block_size!r}")


def fit_examples(
    index: np.ndarray, block_size: int, overlong: str = "truncate"
) -> tuple[np.ndarray, dict[str, int]]:
    """Which examples to train on and how much of each: (m, 3) int64 rows of (start in the flat
    array, prompt length, tokens kept), and counts of what was truncated or dropped.

    An example of n tokens takes n - 1 positions, so at most ``block_size + 1`` tokens fit.
    ``truncate`` cuts a longer answer at the end (its end-of-text is lost); ``drop`` leaves the
    example out (a length filter). A prompt that leaves no room for one answer token is dropped.
    """
    check_block_size(block_size)
    if overlong not in OVERLONG:
        raise ConfigError(f"data.overlong must be one of {', '.join(OVERLONG)}, got {overlong!r}")
    n_prompt, n_total = index[:, 0], index[:, 1]
    starts = np.cumsum(n_total) - n_total  # where each example begins in the flat array
    fits = n_total <= block_size + 1
    prompt_fits = n_prompt <= block_size  # the position predicting the first answer token exists
    keep = (
        fits if overlong == "drop" else prompt_fits
    )  # a whole example always has a prompt that fits
    counts = {
        "examples": int(len(index)),
        "kept": int(keep.sum()),
        "truncated": int((keep & ~fits).sum()),
        "dropped_long": int((~keep & prompt_fits).sum()),
        "dropped_long_prompt": int((~prompt_fits).sum()),
    }
    kept = np.minimum(n_total, block_size + 1)
    rows = np.stack([starts, n_prompt, kept], axis=1)[keep]
    return rows.astype(np.int64).reshape(-1, 3), counts


def example_arrays(tokens: np.ndarray, row: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One example's ``input_ids`` and ``labels`` (n - 1,) int64, labels -100 on prompt targets."""
    start, n_prompt, n = (int(v) for v in row)
    x = np.asarray(tokens[start : start + n], dtype=np.int64)
    labels = x[1:].copy()
    labels[: n_prompt - 1] = IGNORE_INDEX  # targets 1 .. n_prompt-1 are prompt tokens
    return x[:-1], labels


def pack_best_fit(lengths: Sequence[int], block_size: int) -> list[list[int]]:
    """Group example indices into blocks of at most ``block_size`` positions: best-fit decreasing
    (each example, longest first, goes to the fullest block it fits in). Deterministic; within a
    block the examples keep their original order."""
    check_block_size(block_size)
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    blocks: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, block number), sorted
    for i in order:
        n = int(lengths[i])
        if n > block_size:
            raise ValueError(f"example {i} has {n} positions, more than block_size {block_size}")
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, b = free.pop(j)
        else:
            room, b = block_size, len(blocks)
            blocks.append([])
        blocks[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return [sorted(b) for b in blocks]


class PackedExamples(Dataset):
    """Blocks of whole examples: ``input_ids``, ``labels``, ``doc_ids``, each (block_size,)
    int64."""

    def __init__(
        self,
        tokens: np.ndarray,
        rows: np.ndarray,
        block_size: int,
        pad_id: int,
        name: str = "dataset",
    ) -> None:
        check_block_size(block_size)
        if len(rows) == 0:
            raise DataError(f"{name}: no examples fit data.block_size={block_size}")
        self.tokens, self.rows, self.block_size, self.pad_id, self.name = (
            tokens,
            rows,
            block_size,
            pad_id,
            name,
        )
        self.blocks = pack_best_fit(rows[:, 2] - 1, block_size)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        T = self.block_size
        ids = np.full(T, self.pad_id, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        docs = np.full(
            T, len(self.blocks[i]), dtype=np.int64
        )  # the padding tail: a document of its own
        t = 0
        for d, j in enumerate(self.blocks[i]):
            x, y = example_arrays(self.tokens, self.rows[j])
            ids[t : t + len(x)], labels[t : t + len(x)], docs[t : t + len(x)] = x, y, d
            t += len(x)
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "doc_ids": torch.from_numpy(docs),
        }

    def fill(self) -> float:
        """The fraction of positions that hold example tokens rather than padding."""
        return float((self.rows[:, 2] - 1).sum()) / (len(self.blocks) * self.block_size)


class PaddedExamples(Dataset):
    """One example per item, ``input_ids`` and ``labels`` (n - 1,) int64; batch with
    :class:`PadCollate`."""

    def __init__(self, tokens: np.ndarray, rows: np.ndarray, name: str = "dataset") -> None:
        if len(rows) == 0:
            raise DataError(f"{name}: no examples fit data.block_size")
        self.tokens, self.rows, self.name = tokens, rows, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = example_arrays(self.tokens, self.rows[i])
        return {"input_ids": torch.from_numpy(x), "labels": torch.from_numpy(y)}


@dataclass(frozen=True)
class PadCollate:
    """Right-pad a list of examples to the longest: pad token in ``input_ids``, -100 in
    ``labels``."""

    pad_id: int

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        T = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n], labels[r, :n] = b["input_ids"], b["labels"]
        return {"input_ids": ids, "labels": labels}  # (B, T), (B, T)
