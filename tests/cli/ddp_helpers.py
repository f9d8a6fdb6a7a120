"""Callbacks that a ``medlm-train`` subprocess loads
(``+callbacks.x._target_=tests.cli.ddp_helpers.X``)
to report, per rank, what it trained on and what it wrote."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning.pytorch as L


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


class RecordBatches(L.Callback):
    """Writes ``<path>/batches_rank<r>.json``: per step, the token rows this rank trained on."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self.rows.append(
            {
                "step": trainer.global_step,
                "rank": trainer.global_rank,
                "rows": batch["input_ids"].tolist(),
            }
        )

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"batches_rank{_rank()}.json").write_text(json.dumps(self.rows))


class AuditWrites(L.Callback):
    """Records every file this process opens for writing (or moves into place) under ``watch`` and
    every sqlite database it connects to (Python audit hooks), in ``<path>/writes_rank<r>.json``."""

    def __init__(self, path: str, watch: str) -> None:
        self.path = Path(path)
        self.watch = os.path.abspath(watch)
        self.writes: list[str] = []
        self.sqlite: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = (list(args) + [None, None])[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            full = os.path.abspath(os.fsdecode(path))
            if writing and full.startswith(self.watch):
                self.writes.append(full)
        elif event in ("os.rename", "os.replace") and len(args) > 1:  # a file moved into place
            full = os.path.abspath(os.fsdecode(args[1]))
            if full.startswith(self.watch):
                self.writes.append(full)
        elif event == "sqlite3.connect":
            self.sqlite.append(str(args[0]) if args else "")

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": _rank(),
            "writes": sorted(set(self.writes)),
            "sqlite": sorted(set(self.sqlite)),
        }
        (self.path / f"writes_rank{_rank()}.json").write_text(json.dumps(record))
