"""Checks that run before a run exists: every config value, the folders a run writes to, and the
data, so that a mistake is one ``error:`` line that leaves no run folder and no MLflow run behind.

Hydra makes the run folder (with ``.hydra/`` and the job's ``.log``) before it calls the task, so
:func:`discard_unused_run_folder` removes it again when a user error ends the task before the run
recorded anything there; :class:`CheckRunDir` (a Hydra callback) refuses a run folder that cannot
be made at all (a file in its path) before Hydra tries.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from medlm.errors import ConfigError
from medlm.utils.checks import is_int, is_number
from medlm.utils.cli import is_user_error, user_errors
from medlm.utils.mlflow_logger import check_tracking_server, sqlite_path

log = logging.getLogger("medlm.preflight")

_ABSENT = object()

# ---------------------------------------------------------------------------------------------
# Config values


def _fail(key: str, value: Any, what: str) -> None:
    raise ConfigError(f"{key}: {value!r} is not {what}")


def positive_number(key: str, value: Any) -> None:
    if not (is_number(value) and math.isfinite(value) and value > 0):
        _fail(key, value, "a positive number")


def non_negative_number(key: str, value: Any) -> None:
    if not (is_number(value) and math.isfinite(value) and value >= 0):
        _fail(key, value, "a number >= 0")


def whole(low: int, none_ok: bool = False, no_limit: int | None = None) -> Callable:
    """An int >= ``low`` (``no_limit``, e.g. -1, also allowed; None where ``none_ok``)."""

    def check(key: str, value: Any) -> None:
        if (value is None and none_ok) or (is_int(value) and value == no_limit):
            return
        if not (is_int(value) and value >= low):
            extra = f" (or {no_limit}: no limit)" if no_limit is not None else ""
            _fail(key, value, f"a whole number >= {low}{extra}")

    return check


def ratio(key: str, value: Any) -> None:
    if not (is_number(value) and 0 <= value <= 1):
        _fail(key, value, "a number in [0, 1]")


def fraction(key: str, value: Any) -> None:
    if not (is_number(value) and 0 < value < 1):
        _fail(key, value, "a fraction in (0, 1)")


def batch_limit(key: str, value: Any) -> None:
    """Lightning's limit_*_batches: a count (int >= 0) or a share of the epoch (float in [0, 1])."""
    if value is None or is_int(value) and value >= 0:
        return
    if not (isinstance(value, float) and 0 <= value <= 1):
        _fail(key, value, "a number of batches (>= 0) or a share of them in [0.0, 1.0]")


def val_interval(key: str, value: Any) -> None:
    if value is None or is_int(value) and value >= 1:
        return
    if not (isinstance(value, float) and 0 < value <= 1):
        _fail(key, value, "a number of batches (>= 1) or a share of the epoch in (0.0, 1.0]")


def betas(key: str, value: Any) -> None:
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else None
    if items is None or len(items) != 2 or not all(is_number(b) and 0 <= b < 1 for b in items):
        _fail(key, value, "two numbers in [0, 1), e.g. [0.9, 0.95]")


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, value, "true or false")


def optional(check: Callable) -> Callable:
    return lambda key, value: None if value is None else check(key, value)


def text(key: str, value: Any) -> None:
    if not (isinstance(value, str) and value.strip()):
        _fail(key, value, "a non-empty text")


# key -> check, for the values nothing else checks before data is read: the trainer's (Lightning
# would take "two" for max_epochs and fail after the data is read), the optimizer's and the
# schedule's (used only when fit lays out the schedule). Model, data and callback values are
# checked by their own constructors, which run before any data is read.
TRAIN_RULES: dict[str, Callable[[str, Any], None]] = {
    "task_name": text,
    "seed": optional(whole(-(2**63))),
    "train": boolean,
    "test": boolean,
    "ckpt_path": optional(text),
    "optimized_metric": optional(text),
    "optim.lr": positive_number,
    "optim.eps": positive_number,
    "optim.weight_decay": non_negative_number,
    "optim.betas": betas,
    "scheduler.warmup_steps": whole(0),
    "scheduler.min_lr_ratio": ratio,
    "trainer.max_epochs": whole(1, none_ok=True, no_limit=-1),
    "trainer.min_epochs": whole(0, none_ok=True),
    "trainer.max_steps": whole(1, no_limit=-1),
    "trainer.min_steps": whole(0, none_ok=True),
    "trainer.accumulate_grad_batches": whole(1),
    "trainer.gradient_clip_val": optional(non_negative_number),
    "trainer.log_every_n_steps": whole(1),
    "trainer.check_val_every_n_epoch": whole(1, none_ok=True),
    "trainer.num_sanity_val_steps": whole(0, none_ok=True, no_limit=-1),
    "trainer.limit_train_batches": batch_limit,
    "trainer.limit_val_batches": batch_limit,
    "trainer.limit_test_batches": batch_limit,
    "trainer.val_check_interval": val_interval,
    "trainer.enable_progress_bar": boolean,
    "trainer.enable_checkpointing": boolean,
    "trainer.enable_model_summary": boolean,
}


def check_values(cfg: DictConfig, rules: dict[str, Callable[[str, Any], None]]) -> None:
    """Each rule's key that the config has, and every ``data.*_fraction``."""
    for key, check in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            check(key, value)
    data = cfg.get("data")
    if isinstance(data, DictConfig):
        for name, value in data.items():
            if str(name).endswith("_fraction"):
                fraction(f"data.{name}", value)


def check_writable_dir(path: str | os.PathLike, key: str) -> None:
    """``path`` is a folder medlm can write in, or one it can make: no file in the way, and the
    nearest existing folder above it writable. Nothing is created."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"cannot be made: {existing} is"
        raise ConfigError(f"{key}: {path} {where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path} cannot be written: {existing} is not writable")


def check_store(cfg: DictConfig) -> None:
    """The MLflow store: a tracking server answers; the sqlite database's and the artifacts'
    folders are writable."""
    mlflow = (cfg.get("logger") or {}).get("mlflow")
    if not mlflow:
        return
    # every rank stops here, together, when a tracking server does not answer
    check_tracking_server(mlflow.get("tracking_uri"))
    db = sqlite_path(os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get("tracking_uri"))
    if db is not None:
        check_writable_dir(db.parent, "logger.mlflow.tracking_uri")
    if mlflow.get("artifact_location"):
        check_writable_dir(mlflow.artifact_location, "logger.mlflow.artifact_location")


def check_train_config(cfg: DictConfig) -> None:
    """Every value medlm-train reads that no constructor checks, and the folders it writes to."""
    check_values(cfg, TRAIN_RULES)
    check_writable_dir(cfg.paths.cache_dir, "paths.cache_dir")
    check_store(cfg)


def check_optimization(optimizer: Callable | None, scheduler: Callable | None) -> None:
    """Build the configured optimizer and schedule on a probe parameter, so that an unknown key
    (``+optim.lrr=1e-3``) or a value torch refuses fails now, not after the data is read. The fused
    kernel is left out of the probe: it depends on the device, chosen later."""
    if optimizer is None:
        return
    if isinstance(optimizer, partial):
        kwargs = {k: v for k, v in optimizer.keywords.items() if k != "fused"}
        optimizer = partial(optimizer.func, *optimizer.args, **kwargs)
    try:
        probe = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optim: {err}") from None
    if scheduler is None:
        return
    try:
        scheduler(probe, total_steps=100)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"scheduler: {err}") from None


def instantiate_trainer(trainer_cfg: DictConfig, callbacks: list) -> Any:
    """The Lightning Trainer without loggers (the MLflow run comes after the data checks); a value
    Lightning refuses (an accelerator this machine lacks, an unknown key) is a ConfigError."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(trainer_cfg, callbacks=callbacks, logger=False)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (MisconfigurationException, TypeError, ValueError)) and not (
            is_user_error(cause)
        ):
            raise ConfigError(f"trainer: {cause}") from None
        raise


# ---------------------------------------------------------------------------------------------
# Data


def prepare_data(datamodule: Any, fit: bool, test: bool, rank: int) -> None:
    """Open, validate and tokenise the data now (rank 0), so that a bad file is an error before the
    MLflow run exists. Lightning calls the same hooks again in fit: they read what is ready. Other
    ranks only read it, in fit, after rank 0 is done."""
    if rank != 0:
        return
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        for stage, wanted in (("fit", fit), ("test", test)):
            if wanted:
                datamodule.setup(stage)


# ---------------------------------------------------------------------------------------------
# The run folder


def hydra_files(output_dir: Path) -> set[str]:
    """What Hydra itself puts in a run folder before the task runs: ``.hydra/`` and the job's
    log."""
    names = {".hydra"}
    if HydraConfig.initialized():
        names.add(f"{HydraConfig.get().job.name}.log")
    return names


def holds_only_hydra_files(output_dir: Path) -> bool:
    """True for a folder Hydra has just made (or none at all): nothing of a run is in it."""
    if not output_dir.is_dir():
        return True
    own = hydra_files(output_dir)
    return all(entry.name in own for entry in output_dir.iterdir())


def remove_unused_run_folder(output_dir: Path) -> bool:
    """Remove the run folder if it holds only Hydra's files; the job log's handler is closed first.
    True when it was removed."""
    if not output_dir.is_dir() or not holds_only_hydra_files(output_dir):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name and Path(name).resolve().is_relative_to(output_dir.resolve()):
            handler.close()
            root.removeHandler(handler)
    shutil.rmtree(output_dir, ignore_errors=True)
    return True


@contextmanager
def discard_unused_run_folder(output_dir: str | os.PathLike) -> Iterator[None]:
    """On a user error inside, remove the run folder Hydra made if nothing of a run is in it: a
    config or data mistake leaves no folder behind. A crash (a bug) keeps it, with Hydra's
    record of the config."""
    try:
        yield
    except Exception as exc:
        if is_user_error(exc):
            remove_unused_run_folder(Path(output_dir))
        raise


class CheckRunDir(Callback):
    """Hydra callback: the run folder (a sweep's folder) can be made, before Hydra makes it; else
    one ``error:`` line and exit 2, instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors():
            check_writable_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors():
            check_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
