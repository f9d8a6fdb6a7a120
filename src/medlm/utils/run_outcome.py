"""How a run ends, where a person looks: a failed run's reason in MLflow, and a closing summary.

- :func:`failed_with_reason`: an error after the MLflow run exists (bad data found late, a
  diverging loss, a bug) leaves the run FAILED with the reason in it: the tag ``error`` (the one
  line the command prints) and the artifact ``error.txt`` (for a bug, its traceback), also in the
  run folder. The error itself still ends the command as before.
- :func:`summary`: the block printed at the end of every run: status, best metric, MLflow run id,
  run folder, and the command that shows the run in the MLflow UI.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from medlm.utils.cli import CONFIG_DIR, find_user_error
from medlm.utils.io import atomic_write
from medlm.utils.mlflow_logger import sqlite_path
from medlm.utils.project import checkout_of, project_root
from medlm.utils.tracking import log_artifact, mlflow_loggers

ERROR_TAG = "error"
ERROR_FILE = "error.txt"
MAX_TAG_LENGTH = 5000  # MLflow keeps tag values up to 8000 characters


def reason(exc: BaseException) -> str:
    """The one line a user sees for ``exc``: a MedlmError's message, else the exception's type and
    text."""
    err = find_user_error(exc)
    if err is not None:
        return str(err)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_failure(loggers: Iterable[Logger], output_dir: Path, exc: BaseException) -> None:
    """The reason in every MLflow run of ``loggers`` (tag and artifact) and in the run folder; the
    run is FAILED."""
    loggers = list(loggers)
    why = reason(exc)
    details = why
    if find_user_error(exc) is None:  # a bug: the traceback is what a maintainer needs
        details += "\n\n" + "".join(traceback.format_exception(exc))
    path = output_dir / ERROR_FILE
    with atomic_write(path) as f:
        f.write(details + "\n")
    for lg in mlflow_loggers(loggers):
        client = lg.experiment
        client.set_tag(lg.run_id, ERROR_TAG, why[:MAX_TAG_LENGTH])
        client.set_terminated(lg.run_id, "FAILED")
    log_artifact(loggers, path)


@contextmanager
def failed_with_reason(loggers: Iterable[Logger], output_dir: Path) -> Iterator[None]:
    """Record an error raised inside (not a requeue's or an interrupt's exit) as the run's failure
    reason, then let it go on."""
    try:
        yield
    except Exception as exc:
        record_failure(loggers, output_dir, exc)
        raise


def run_status(tracking_uri: str | None, run_id: str) -> str:
    """The MLflow run's status (FINISHED, FAILED, RUNNING, ...), read without changing it."""
    try:
        from mlflow import MlflowClient  # ~1 s to import: only when there is a run to ask about

        return MlflowClient(tracking_uri).get_run(run_id).info.status
    except Exception:  # a store that went away: the summary still says where the run is
        return "UNKNOWN"


def checkout_store(checkout: Path) -> Path:
    """The database ``make ui`` serves: the checkout's own store (``$MEDLM_HOME``'s when set)."""
    return project_root(checkout / "conf") / "mlruns" / "mlflow.db"


def ui_command(tracking_uri: str | None, experiment_id: str | None, run_id: str | None) -> str:
    """How to see the run: ``make ui`` where the Makefile serves this store, else ``mlflow ui``
    for it, or the run's page on a tracking server."""
    db = sqlite_path(tracking_uri)
    if db is None:
        if tracking_uri and tracking_uri.startswith(("http://", "https://")) and run_id:
            return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    command = f"mlflow ui --backend-store-uri {tracking_uri}"
    checkout = checkout_of(CONFIG_DIR)
    served = checkout is not None and (checkout / "Makefile").is_file()
    if served and db == checkout_store(checkout):
        where = "" if Path.cwd().resolve() == checkout else f"cd {checkout} && "
        return f"{where}make ui   (or: {command})"
    return command


def summary(
    status: str,
    output_dir: Path,
    run_id: str | None = None,
    experiment: str | None = None,
    best: tuple[str, float] | None = None,
    ui: str | None = None,
) -> str:
    """The closing block of a run."""
    head = f"run {status}"
    if best is not None:
        head += f"   best {best[0]} = {best[1]:.4f}"
    lines = [head]
    if run_id:
        lines.append(
            f"  MLflow run  {run_id}" + (f"  (experiment {experiment})" if experiment else "")
        )
    lines.append(f"  run folder  {output_dir}")
    if ui:
        lines.append(f"  MLflow UI   {ui}")
    return "\n".join(lines)


def print_summary(text: str) -> None:
    """Printed, not logged: it is the last thing on the screen whatever the log level."""
    print(f"\n{text}", flush=True)


def closing_summary(
    cfg: DictConfig,
    output_dir: Path,
    loggers: Iterable[Logger],
    best: tuple[str, float] | None,
    run_id: str | None = None,
) -> None:
    """Print the summary of the run that logged to ``loggers`` (or, with none, of MLflow run
    ``run_id``), its status as MLflow holds it. Rank 0 only."""
    if rank_zero_only.rank != 0:
        return
    mlflow = (cfg.get("logger") or {}).get("mlflow") or {}
    uri = mlflow.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    runs = mlflow_loggers(loggers)
    experiment_id = None
    if runs:
        run_id, experiment_id = runs[0].run_id, runs[0].experiment_id
    if run_id is None:  # no MLflow logger
        print_summary(summary("ended", output_dir, best=best))
        return
    print_summary(
        summary(
            run_status(uri, run_id),
            output_dir,
            run_id,
            mlflow.get("experiment_name"),
            best,
            ui_command(uri, experiment_id, run_id),
        )
    )
