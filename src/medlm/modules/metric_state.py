"""A sum-reduced torchmetrics metric's running state in a checkpoint, summed over DDP ranks.

Metric states are not in the module's state_dict, so a run resumed mid-epoch would otherwise compute
its epoch mean from the batches after the resume only. Saved: the states summed over all ranks (a
collective: Lightning dumps a checkpoint on every rank); restored: the sums on rank 0 and zeros on
the others, so the ranks' next sync adds up to the same totals as an uninterrupted run. Only for
metrics whose states all reduce by sum, as MeanMetric's (``mean_value``, ``weight``) do.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def metric_sums(metric: Metric, strategy) -> dict[str, torch.Tensor]:
    """``metric``'s tensor states summed over the ranks of ``strategy``."""
    return {
        name: strategy.reduce(value.detach().clone(), reduce_op="sum").cpu()
        for name, value in metric.metric_state.items()
    }


def restore_metric_sums(metric: Metric, sums: dict[str, torch.Tensor], rank: int) -> None:
    for name, value in sums.items():
        current = getattr(metric, name)
        value = value if rank == 0 else torch.zeros_like(value)
        setattr(metric, name, value.to(current.device, current.dtype))
