"""The loss a training step returned, as the module computed it."""

from __future__ import annotations

import lightning.pytorch as L
from torch import Tensor


def step_loss(loss: Tensor, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
    """``loss`` as the module returned it: with automatic optimization Lightning divides it by the
    gradient-accumulation count before callbacks see it."""
    if pl_module.automatic_optimization:
        return loss * trainer.accumulate_grad_batches
    return loss
