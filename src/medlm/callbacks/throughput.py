"""Training throughput (tokens/s) and, on GPUs with a known peak, model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as L
import torch

# dense bf16 peak FLOP/s per device, from the vendors' datasheets
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def flops_per_token(net: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: the model's own count (6N + attention, PaLM appendix B, as
    nanoGPT),
    else 6N for a network that has none (a LoRA classifier, say)."""
    config = getattr(net, "config", None)
    if hasattr(config, "flops_per_token"):
        return float(config.flops_per_token(seq_len))
    return 6.0 * sum(p.numel() for p in net.parameters())


class Throughput(L.Callback):
    """Logs ``train/tokens_per_sec`` (wall clock between steps, data loading included) and
    ``train/mfu``."""

    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.log_every_n_steps = log_every_n_steps
        self._start: float | None = None
        self._tokens = 0
        self._steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._tokens, self._steps = None, 0, 0  # validation time is not training time

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if self._start is None:  # the first batch of an epoch only starts the clock
            self._start = now
            return
        ids = batch["input_ids"]
        self._tokens += ids.numel() * trainer.world_size
        self._steps += 1
        if self._steps % self.log_every_n_steps:
            return
        tokens_per_sec = self._tokens / (now - self._start)
        metrics = {"train/tokens_per_sec": tokens_per_sec}
        peak = peak_flops(pl_module.device)
        if peak:
            achieved = (
                tokens_per_sec * flops_per_token(pl_module.net, ids.size(1)) / trainer.world_size
            )
            metrics["train/mfu"] = achieved / peak
        # straight to the loggers: through self.log the value would repeat at every step until the
        # next one
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._start, self._tokens = now, 0
