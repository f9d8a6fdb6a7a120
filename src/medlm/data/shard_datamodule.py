"""Pre-training on token shards: memory-mapped windows, a rank-aware seeded order, exact resume.

A training example is a window of ``block_size + 1`` consecutive tokens of one shard: ``input_ids``
its first ``block_size``, ``labels`` its last ``block_size`` (the batch contract in CONTRIBUTING).
A shard of ``n`` tokens holds ``(n - 1) // block_size`` windows on a grid; each epoch the grid of a
shard starts at a random offset within the tokens the grid leaves over, the shards come in a random
order and the windows of each shard in a random order, all drawn from (``seed``, epoch[, shard]),
so every rank computes the same order without talking to the others.

That order is cut into global batches of ``batch_size x world_size`` windows; rank ``r`` takes the
``r``-th ``batch_size`` of every one, so the ranks read disjoint parts of each global batch and one
process with ``batch_size x world_size`` trains on the same global batches. An epoch is the whole
global batches the training windows fill. The training loader is a
:class:`~medlm.data.resume.ResumableDataLoader`: its place in the epoch is part of the checkpoint.

Validation is the validation shards' windows on the plain grid (offset 0), in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medlm.data.resume import ResumableDataLoader
from medlm.data.shards import (
    check_shard_header,
    check_tokenizer,
    load_tokens,
    read_header,
    read_manifest,
)
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError
from medlm.utils.checks import check_number

log = logging.getLogger(__name__)


class ShardWindows(Dataset):
    """The windows of some shards. Item ``(shard, start)``: the window at token ``start`` of a
    shard; item ``i`` (an int): the ``i``-th window of the plain grid, shard after shard."""

    def __init__(self, paths: list[Path], sizes: list[int], block_size: int) -> None:
        self.paths = paths
        self.sizes = sizes
        self.block_size = block_size
        self.counts = [max(0, (n - 1) // block_size) for n in sizes]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:  # a worker process maps the files itself
        return {**self.__dict__, "_arrays": None}

    def tokens(self, shard: int) -> np.ndarray:
        if self._arrays is None:
            self._arrays = [load_tokens(p) for p in self.paths]
        return self._arrays[shard]

    def locate(self, item: int | tuple[int, int]) -> tuple[int, int]:
        """(shard, start) of an item."""
        if isinstance(item, tuple):
            return item
        if not 0 <= item < len(self):
            raise IndexError(f"window {item} out of range for {len(self)} windows")
        shard = int(np.searchsorted(self.starts, item, side="right")) - 1
        return shard, (item - int(self.starts[shard])) * self.block_size

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        shard, start = self.locate(item)
        x = torch.from_numpy(
            self.tokens(shard)[start : start + self.block_size + 1].astype(np.int64)
        )
        return {"input_ids": x[:-1], "labels": x[1:]}  # (T,), (T,)

    def __getitems__(self, items: list) -> dict[str, torch.Tensor]:
        """A whole batch at once (the DataLoader calls this instead of ``__getitem__`` per item):
        one copy out of the memory maps, no tensor per window; ``keep_batch`` is the collate."""
        span = self.block_size + 1
        out = np.empty((len(items), span), dtype=np.int64)
        for row, item in enumerate(items):
            shard, start = self.locate(item)
            out[row] = self.tokens(shard)[start : start + span]
        x = torch.from_numpy(out)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}  # (B, T), (B, T)


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collate function of the shard loaders: ``ShardWindows.__getitems__`` made the batch."""
    return batch


class EpochOrder:
    """Position ``p`` of an epoch's order -> (shard, start), computed shard by shard on demand."""

    def __init__(self, windows: ShardWindows, seed: int, epoch: int) -> None:
        self.windows, self.seed, self.epoch = windows, seed, epoch
        order = np.random.default_rng([seed, epoch]).permutation(len(windows.counts))
        self.shards = order[np.asarray(windows.counts)[order] > 0]
        self.ends = np.cumsum([windows.counts[s] for s in self.shards])
        self._cached: tuple[int, int, np.ndarray] | None = None  # shard, offset, window order

    def shard_plan(self, shard: int) -> tuple[int, np.ndarray]:
        if self._cached is None or self._cached[0] != shard:
            w = self.windows
            rng = np.random.default_rng([self.seed, self.epoch, shard])
            slack = (w.sizes[shard] - 1) - w.counts[shard] * w.block_size
            offset = int(rng.integers(0, slack + 1))
            self._cached = (shard, offset, rng.permutation(w.counts[shard]))
        return self._cached[1], self._cached[2]

    def __getitem__(self, p: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.ends, p, side="right"))
        shard = int(self.shards[k])
        offset, perm = self.shard_plan(shard)
        local = p - (int(self.ends[k - 1]) if k else 0)
        return shard, offset + int(perm[local]) * self.windows.block_size


class ShardSampler(DistributedSampler):
    """This rank's part of every global batch of the epoch's order (see the module docstring).

    A DistributedSampler, so that Lightning leaves it in place under DDP; ``skip_next`` starts the
    next pass that many samples in (a resumed epoch), ``set_epoch`` picks the order.
    """

    def __init__(
        self,
        windows: ShardWindows,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(
            windows, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed, drop_last=True
        )
        self.windows = windows
        self.batch_size = batch_size
        self.shuffle_windows = shuffle
        self.global_batch = batch_size * num_replicas
        self.steps = len(windows) // self.global_batch
        self.num_samples = self.steps * batch_size
        self.total_size = self.steps * self.global_batch
        self._skip = 0

    def __len__(self) -> int:
        return self.num_samples

    def skip_next(self, samples: int) -> None:
        self._skip = samples

    def __iter__(self) -> Iterator[tuple[int, int] | int]:
        skip, self._skip = self._skip, 0
        order = EpochOrder(self.windows, self.seed, self.epoch) if self.shuffle_windows else None
        for k in range(skip, self.num_samples):
            step, i = divmod(k, self.batch_size)
            p = step * self.global_batch + self.rank * self.batch_size + i
            yield order[p] if order is not None else p


def open_split(
    directory: Path, manifest: dict[str, Any], split: str, tokenizer
) -> tuple[list[Path], list[int]]:
    """The split's shard files, each header checked against the tokenizer and the manifest."""
    paths, sizes = [], []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        path = directory / shard["name"]
        if not path.is_file():
            raise DataError(f"{path}: listed in {directory / 'manifest.json'} but missing")
        header = read_header(path)
        check_shard_header(path, header, tokenizer, shard["tokens"])
        paths.append(path)
        sizes.append(int(header["count"]))
    return paths, sizes


class ShardDataModule(L.LightningDataModule):
    """Token shards made by ``medlm-prepare shards`` as (B, T) next-token windows (module doc)."""

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str = "gpt2",
        block_size: int = 1024,
        batch_size: int = 8,
        seed: int = 1337,
        shuffle: bool = True,
        num_workers: int = 0,
        num_sample_prompts: int = 3,
    ) -> None:
        super().__init__()
        if not path:
            raise ConfigError(
                "data.path: set it to a token-shard directory made by "
                "medlm-prepare shards SOURCE OUT_DIR"
            )
        check_number(block_size, "data.block_size", int, 1)
        check_number(batch_size, "data.batch_size", int, 1)
        check_number(seed, "data.seed", int, 0)
        check_number(num_workers, "data.num_workers", int, 0)
        check_number(num_sample_prompts, "data.num_sample_prompts", int, 0)
        self.save_hyperparameters(logger=False)
        self.path = Path(path).expanduser()
        self.tokenizer = load_tokenizer(tokenizer)
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.shuffle, self.num_workers, self.num_sample_prompts = (
            bool(shuffle),
            num_workers,
            num_sample_prompts,
        )
        self.train_dataset: ShardWindows | None = None
        self.val_dataset: ShardWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        manifest = read_manifest(self.path)
        where = str(self.path / "manifest.json")
        if not manifest.get("complete"):
            raise DataError(
                f"{where}: the preparation of these shards did not finish; run the same "
                "medlm-prepare shards command again to complete it"
            )
        check_tokenizer(manifest, self.tokenizer, where)
        splits = {}
        for split in ("train", "val"):
            paths, sizes = open_split(self.path, manifest, split, self.tokenizer)
            if not paths:
                raise DataError(f"{where}: no {split} shards")
            windows = ShardWindows(paths, sizes, self.block_size)
            if len(windows) == 0:
                raise ConfigError(
                    f"data.block_size={self.block_size} is larger than every {split} shard of "
                    f"{self.path} (the largest holds {max(sizes)} tokens; a window needs "
                    f"{self.block_size + 1})"
                )
            short = [p.name for p, c in zip(paths, windows.counts) if c == 0]
            if short:
                log.warning(
                    "%s: %d %s shard(s) shorter than a window of %d tokens are not used: %s",
                    self.path,
                    len(short),
                    split,
                    self.block_size + 1,
                    ", ".join(short[:5]),
                )
            splits[split] = windows
        self.train_dataset, self.val_dataset = splits["train"], splits["val"]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> ResumableDataLoader:
        self.setup("fit")
        world, rank = self._world()
        sampler = ShardSampler(
            self.train_dataset, self.batch_size, world, rank, self.seed, self.shuffle
        )
        if sampler.steps == 0:
            raise DataError(
                f"{self.path}: {len(self.train_dataset)} training windows of {self.block_size + 1} "
                f"tokens, fewer than one global batch of {sampler.global_batch} "
                f"(data.batch_size={self.batch_size} x {world} ranks)"
            )
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),
        )

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def sample_prompts(self, n: int | None = None) -> list[str]:
        """The openings (32 tokens) of the first ``n`` validation documents: fixed across runs."""
        self.setup()
        n = self.num_sample_prompts if n is None else n
        tokens = self.val_dataset.tokens(0)
        head = np.asarray(tokens[: 1 << 20])
        starts = np.flatnonzero(head == self.tokenizer.eot_id)[:n]
        prompts = []
        for s in starts:
            ids = head[s + 1 : s + 33]
            ids = (
                ids[: np.argmax(ids == self.tokenizer.eot_id)]
                if (ids == self.tokenizer.eot_id).any()
                else ids
            )
            if len(ids):
                prompts.append(self.tokenizer.decode(ids.tolist()))
        return prompts
