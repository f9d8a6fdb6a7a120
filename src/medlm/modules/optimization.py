"""What every medlm LightningModule shares: the network it trains, its optimizer and schedule, and
the network's description in each checkpoint.

The network, a partial optimizer and a partial scheduler come from Hydra (``_partial_: true``, as
in lightning-hydra-template); they are rebuilt from the config, never pickled into checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.optim import Optimizer

from medlm.errors import ConfigError
from medlm.models.checkpoint import NETWORK_KEY, network_spec


class OptimizedModule(L.LightningModule):
    """AdamW decay groups over the parameters that train (adapters and head, or all), the fused
    kernel
    on CUDA, a schedule stepped per optimizer step, and clipping that works for fused AdamW too.
    Checkpoints carry ``NETWORK_KEY``, so that ``load_network`` rebuilds the network from the
    file."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise ConfigError("optim: no optimizer configured for training")
        params = [p for p in self.net.parameters() if p.requires_grad]
        # weight decay on matrices and embeddings only, never on biases and norm gains
        groups = [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        factory = self.optimizer_factory
        if (
            isinstance(factory, partial)
            and "fused" in factory.keywords
            and factory.keywords["fused"] is None
        ):
            factory = partial(factory, fused=self.device.type == "cuda")
        optimizer = factory(groups)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError(
                "trainer.max_epochs / trainer.max_steps: the run has no end, so the "
                "learning-rate schedule cannot be laid out; set one of them"
            )
        scheduler = self.scheduler_factory(optimizer, total_steps=int(total_steps))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip fused AdamW's gradients under bf16 too.

        Lightning refuses to clip for an optimizer that unscales gradients itself (fused AdamW),
        a guard for fp16 loss scaling; bf16 and fp32 have no scaler, so the gradients are already
        true gradients and clipping them directly is exact.
        """
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if gradient_clip_val and fused and not str(self.trainer.precision).startswith("16"):
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NETWORK_KEY] = network_spec(
            self.net
        )  # evaluation, generation, export rebuild it
