"""The model summary at the start of fit, without Lightning's FLOPs column.

Lightning 2.6 counts FLOPs by running ``example_input_array`` through the model; medlm's modules
have none, so every run printed a FLOPs column of zeros and ``Total FLOPs: 0``. This summary is
Lightning's table (layers, types, parameter counts, train/eval mode) with that column left out when
nothing was counted, as plain log lines (no rich table) in the run's log file too. Throughput and
MFU are measured by ``medlm.callbacks.throughput``.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary as _LightningModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

log = logging.getLogger("medlm.model")


def format_summary(
    columns: list[tuple[str, list[str]]],
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
) -> str:
    """The layer table and the parameter totals, as text."""
    widths = [max([len(name), *(len(str(v)) for v in values)]) for name, values in columns]
    rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths))]
    rows.append("-" * len(rows[0]))
    for i in range(len(columns[0][1]) if columns else 0):
        rows.append(" | ".join(str(values[i]).ljust(w) for (_, values), w in zip(columns, widths)))
    frozen = total_parameters - trainable_parameters
    rows += [
        "-" * len(rows[0]),
        f"{get_human_readable_count(trainable_parameters):<10}Trainable params",
        f"{get_human_readable_count(frozen):<10}Non-trainable params",
        f"{get_human_readable_count(total_parameters):<10}Total params",
        f"{model_size:<10,.3f}Total estimated model params size (MB)",
        f"{total_training_modes['train']:<10}Modules in train mode",
        f"{total_training_modes['eval']:<10}Modules in eval mode",
    ]
    return "\n".join(rows)


class ModelSummary(_LightningModelSummary):
    """Lightning's ModelSummary callback (it replaces the default one), FLOPs shown only when
    counted."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [c for c in summary_data if c[0] != "FLOPs" or total_flops]
        table = format_summary(
            columns, total_parameters, trainable_parameters, model_size, total_training_modes
        )
        if total_flops:
            table += f"\n{get_human_readable_count(total_flops):<10}Total FLOPs"
        log.info("model summary:\n%s", table)
