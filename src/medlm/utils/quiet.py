"""Lines that libraries print on every run and that a medlm user can do nothing about, left out.

- Lightning's "💡 Tip" lines advertising litlogger and litmodels (logged at INFO on every fit);
- Lightning's note that the trainer already has a model summary callback: medlm's own
  (medlm.callbacks.model_summary, without the FLOPs column of zeros) replaces the default on
  purpose;
- Lightning's SLURM hint to prepend ``srun`` on a machine where SLURM is installed but the command
  was started without it: medlm submits to SLURM through Hydra's submitit launcher, and a plain
  run on a login node or a workstation with SLURM is not a mistake;
- Lightning's second copy of each of its lines: the ``lightning`` logger has a console handler of
  its own, so under Hydra (whose handlers sit on the root logger) every line printed twice;
- Lightning's own deprecation warning about torch's pytree ``LeafSpec`` (lightning 2.6 with torch
  >= 2.10), raised inside Lightning at every fit.

Warnings raised from medlm's own code are not filtered here: those are fixed where they come from.
"""

from __future__ import annotations

import logging
import warnings

# the loggers Lightning's rank_zero_info writes to (fabric's, and pytorch's, which replaces it)
_RANK_ZERO_LOGGERS = (
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)
_IGNORED_WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


_IGNORED_LINES = ("💡 Tip", "Trainer already configured with model summary callbacks")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_IGNORED_LINES)


_TIPS = _DropLines()


def quiet_libraries() -> None:
    """Install the filters (idempotent): called by every entry point before Hydra runs the task."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)
    for message in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def lightning_logs_once() -> None:
    """Leave Lightning's lines to the root logger's handlers (Hydra's console and ``train.log``)
    where there are some: called once Lightning is imported, which adds its own console handler."""
    if not logging.getLogger().hasHandlers():
        return
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)
