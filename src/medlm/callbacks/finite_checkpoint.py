"""Lightning's ModelCheckpoint, except that a non-finite monitored value is never a "best" one.

Lightning keeps the first checkpoints unconditionally until it has ``save_top_k`` of them, and
records a NaN score as +inf (-inf in max mode): a run whose first validation loss is NaN keeps
its NaN weights as the best checkpoint, ``best_model_score`` is inf, and a later ``test`` or
``medlm-eval`` uses it. Here a NaN or infinite value is not a candidate at all: the top-k, the
best path and the best score only ever hold finite values (``last.ckpt`` follows Lightning's
own rules: it is the resume point, not a choice).
"""

from __future__ import annotations

import logging

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

log = logging.getLogger("medlm.checkpoint")


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-k never takes a non-finite monitored value."""

    @property
    def state_key(self) -> str:
        # saved under ModelCheckpoint's own key: checkpoints written before this subclass existed
        # resume with their best and last records (and later ones load into a plain ModelCheckpoint)
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def check_monitor_top_k(self, trainer: L.Trainer, current: Tensor | None = None) -> bool:
        if current is None:
            return False
        # every process takes this decision together (the base class reduces its own too)
        finite = trainer.strategy.reduce_boolean_decision(
            bool(torch.isfinite(torch.as_tensor(current)).all()), all=True
        )
        if not finite:
            if trainer.is_global_zero:
                log.warning(
                    "%s is %s at step %d: this checkpoint is not kept as a best one",
                    self.monitor,
                    float(current),
                    trainer.global_step,
                )
            return False
        return super().check_monitor_top_k(trainer, current)
