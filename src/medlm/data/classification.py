"""The sequence-classification batch, defined once for every classification DataModule.

An example is ``(token ids, label)``; a batch is ``input_ids`` and ``attention_mask`` (B, T),
right-padded with the tokenizer's end-of-text, and ``labels`` (B,), all long: the shape
``SequenceClassification`` trains on and medlm-eval scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

Example = tuple[list[int], int]  # token ids, label index


def collate_pairs(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask (B, T) long; labels (B,) long."""
    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def classification_loader(
    examples: Dataset | Sequence[Example],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    pad_id: int,
) -> DataLoader:
    """Batches of ``examples``; a shuffled loader is seeded, so its order is the same every run."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=partial(collate_pairs, pad_id=pad_id),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
