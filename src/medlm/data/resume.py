"""Training loaders whose place in the epoch is part of the checkpoint.

Lightning saves the ``state_dict()`` of every training DataLoader that has one in the checkpoint
(``loops.fit_loop.state_dict.combined_loader``) and, on a restart mid-epoch, hands it back through
``load_state_dict`` before the epoch's iterator is made. :class:`ResumableDataLoader` records the
epoch and how many batches of it it has handed out; on resume it starts that epoch this many
batches in, by skipping indices (no data is read for them), so the resumed run gets exactly the
batch the interrupted one would have trained on next.

The skip goes to whatever draws the indices: a :class:`ResumableBatchSampler` (any sampler, also
after Lightning wrapped it for DDP, as rank-local batches) or a sampler with ``skip_next(samples)``
(the shard sampler). The loader's iterator is made lazily, at the first batch, so that it sees the
epoch Lightning sets on the sampler; and it draws its workers' base seed from its own generator,
not the global one, so that where an epoch starts does not shift the random state of training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler whose next pass can start ``n`` batches in."""

    _skip = 0

    def skip_next(self, batches: int) -> None:
        self._skip = batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        batches = super().__iter__()
        for _ in range(skip):  # indices only
            if next(batches, None) is None:
                return
        yield from batches


def sampler_epoch(loader: DataLoader) -> int | None:
    """The epoch Lightning last set on the loader's sampler (``set_epoch``), if it tracks one."""
    inner = getattr(loader.batch_sampler, "sampler", None)
    for sampler in (inner, loader.sampler):
        epoch = getattr(sampler, "epoch", None)
        if isinstance(epoch, int):
            return epoch
    return None


class ResumableDataLoader(DataLoader):
    """A DataLoader whose ``state_dict`` is (epoch, batches handed out); see the module doc."""

    _pending: tuple[int | None, int] | None = None
    _epoch: int | None = None
    _yielded = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = (state.get("epoch"), int(state.get("batches", 0)))

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        epoch = sampler_epoch(self)
        skip = 0
        if self._pending is not None:
            if self._pending[0] == epoch:  # a checkpoint of a finished epoch resumes at the next
                skip = self._pending[1]
            self._pending = None
        if skip:
            self._skip(skip)
        self._epoch, self._yielded = epoch, skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def _skip(self, batches: int) -> None:
        if hasattr(self.batch_sampler, "skip_next"):
            self.batch_sampler.skip_next(batches)
        elif hasattr(self.sampler, "skip_next"):
            self.sampler.skip_next(batches * self.batch_size)
        else:
            raise TypeError(
                f"{type(self.batch_sampler).__name__}/{type(self.sampler).__name__} cannot "
                "start an epoch part-way: use ResumableBatchSampler"
            )


def resumable_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, drop_last: bool = False, **kwargs: Any
) -> ResumableDataLoader:
    """The training loader of ``dataset`` in the order of ``sampler``, resumable mid-epoch."""
    return ResumableDataLoader(
        dataset,
        batch_sampler=ResumableBatchSampler(sampler, batch_size, drop_last),
        generator=torch.Generator(),
        **kwargs,
    )
