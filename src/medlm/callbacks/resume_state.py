"""What Lightning leaves out of a checkpoint for a resume to be exact: the random state and the
training loaders' place in the epoch.

- Random state (torch, CUDA, numpy, Python): Lightning does not checkpoint it, so after a resume
  dropout masks and sampling would differ from an uninterrupted run. It is stored as tensors and
  plain numbers, which checkpoints read with ``weights_only=True`` accept. Under DDP the checkpoint
  holds rank 0's state; medlm seeds every rank alike (``seed_everything``), so each rank resumes
  from it.
- Loader position: Lightning saves a stateful training loader's ``state_dict`` in the fit loop's
  state, but does not hand it back when ``configure_optimizers`` asked for
  ``trainer.estimated_stepping_batches`` (Lightning-AI/pytorch-lightning#20550), as
  :class:`~medlm.modules.causal_lm.CausalLM` does to lay out its schedule. This callback keeps its
  own copy and gives it to the loaders itself.

Both are put back in ``on_train_start``: after Lightning has built the loaders and before the first
resumed step, so that setup work in between cannot draw from the restored random state.
``medlm-train`` adds this callback to every run (it is not a config choice: without it a resumed
run silently replays its epoch from the start). Checkpoint key: ``callbacks["ResumeState"]`` with
``random`` (torch, cuda, numpy, python) and ``loaders`` (each training loader's ``state_dict``).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader


def collect_random_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": random.getstate(),
    }


def set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def train_loaders(trainer: L.Trainer) -> list[DataLoader]:
    """The training loaders in use (after Lightning's DDP re-wrapping), in a fixed order."""
    found: list[DataLoader] = []

    def walk(node: Any) -> None:
        if isinstance(node, DataLoader):
            found.append(node)
        elif isinstance(node, dict):
            for key in sorted(node):
                walk(node[key])
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(trainer.train_dataloader)
    return found


def _stateful(loader: DataLoader) -> bool:
    return callable(getattr(loader, "state_dict", None)) and callable(
        getattr(loader, "load_state_dict", None)
    )


class ResumeState(L.Callback):
    """Checkpoints the random state and the training loaders' state; restores both on resume."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._to_restore: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        loaders = train_loaders(self._trainer) if self._trainer is not None else []
        return {
            "random": collect_random_state(),
            "loaders": [dl.state_dict() if _stateful(dl) else None for dl in loaders],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        state, self._to_restore = self._to_restore, None
        for loader, loader_state in zip(train_loaders(trainer), state.get("loaders", [])):
            if loader_state is not None and _stateful(loader):
                loader.load_state_dict(loader_state)
        set_random_state(state["random"])
