"""A sum-reduced torchmetrics metric's running state in a checkpoint, summed over DDP ranks.

Metric states are not in the module's state_dict, so a run resumed mid-epoch would otherwise compute
its epoch mean from the batches after the resume only. Saved: the states summed over all ranks (a
collective: Lightning dumps a checkpoint on every rank); restored: the sums on rank 0 and zeros on
the others, so the ranks' next sync adds up to the same totals as an uninterrupted run.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def metric_sums(metric: Metric, strategy) -> dict[str, torch.Tensor]:
    """``metric``'s states summed over ranks (each of them must be sum-reduced)."""
    sums = {}
    for name, value in metric.metric_state.items():
        if not isinstance(value, torch.Tensor) or metric._reductions.get(name) is not _sum:
            raise TypeError(
                f"{type(metric).__name__}.{name}: only sum-reduced tensor states can be summed"
            )
        sums[name] = strategy.reduce(value.detach().clone(), reduce_op="sum").cpu()
    return sums


def restore_metric_sums(metric: Metric, sums: dict[str, torch.Tensor], rank: int) -> None:
    for name, value in sums.items():
        current = getattr(metric, name)
        setattr(
            metric,
            name,
            (value if rank == 0 else torch.zeros_like(value)).to(current.device, current.dtype),
        )


def _sum_reduction():
    from torchmetrics.utilities.data import dim_zero_sum

    return dim_zero_sum


_sum = _sum_reduction()
