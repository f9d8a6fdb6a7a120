"""Opening the MLflow logger when several jobs start at once (a sweep on SLURM or submitit).

MLflow creates a new sqlite store's tables, and the logger the run's experiment, when they are first
used; jobs that start together raced on both and failed ("table ... already exists", "Online
migration expected to match one row"). Here one process at a time opens a local store: it holds an
exclusive lock beside the database while the store and the experiment are created.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient
from omegaconf import DictConfig

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///<path>`` tracking URI; None for any other store."""
    if not tracking_uri or not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri[len(SQLITE_PREFIX) :])


@contextmanager
def store_lock(tracking_uri: str | None) -> Iterator[None]:
    """An exclusive lock on ``<database>.lock`` while held; nothing for a tracking server."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_mlflow_logger(lcfg: DictConfig, run_id: str | None) -> MLFlowLogger:
    """The configured MLflow logger (continuing run ``run_id`` when given), with its store's tables
    and its experiment created one process at a time. The run itself is created when the logger is
    first used, so that a run failing before then leaves none."""
    extra = {"run_id": run_id} if run_id else {}
    with store_lock(lcfg.get("tracking_uri")):
        logger = instantiate(lcfg, **extra)  # opens the store: creates a new one's tables
        name = lcfg.get("experiment_name")
        if not run_id and name:
            client = MlflowClient(lcfg.get("tracking_uri"))
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name, artifact_location=lcfg.get("artifact_location"))
    return logger
