"""What the jobs of a sweep and the sweep itself share through the sweep folder, and what a job
returns to the sweeper.

A sweep's jobs may run in this process (Hydra's basic launcher), in other processes (submitit's
local executor) or on other nodes (SLURM): the sweep folder, on a filesystem they all see, is the
one channel that reaches every one of them. In it:

- ``mlflow_parent_run``: the id of the sweep's MLflow parent run (written when the sweep starts);
  each job's run carries it as ``mlflow.parentRunId`` and so hangs under it in the MLflow UI.
- ``trials/<job number>.json``: how each job ended (its overrides, the value it returned or its
  error, its MLflow run), written by the job when it ends, read when the sweep ends to record the
  best trial.

A job of a sweep must not exit the process on a user error (Hydra's basic launcher runs every job
in the sweeping process) nor return a value the sweeper cannot rank: :func:`trial_errors` and
:func:`trial_value` turn both into an exception that Hydra records as the job's failure, so a
sweeper (Optuna's with ``max_failure_rate``) records the trial as failed and goes on.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from medlm.errors import MedlmError
from medlm.utils.cli import find_user_error
from medlm.utils.io import atomic_write

# MLflow nests a run under the run this tag names (mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID)
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
# the tag that marks a sweep's parent run (its value: sweep or search)
SWEEP_TAG = "medlm.sweep"
PARENT_RUN_FILE = "mlflow_parent_run"
# the keys a sweep varies, one per line: its jobs' run names show only these
SWEPT_KEYS_FILE = "swept_keys"
TRIALS_DIR = "trials"

COMPLETED, FAILED = "COMPLETED", "FAILED"


class TrialFailed(MedlmError):
    """A job of a sweep that ended without a value the sweeper can rank (NaN, never logged)."""


def in_sweep() -> bool:
    """True in a job of a sweep (``medlm-train -m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The sweep's MLflow parent run, or None where the sweep has none (no MLflow logger)."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def swept_keys(sweep_dir: str | Path) -> frozenset[str] | None:
    """The keys the sweep in ``sweep_dir`` varies, or None where it did not say."""
    path = Path(sweep_dir) / SWEPT_KEYS_FILE
    return frozenset(path.read_text().split()) if path.is_file() else None


def write_swept_keys(sweep_dir: str | Path, keys: Sequence[str]) -> None:
    with atomic_write(Path(sweep_dir) / SWEPT_KEYS_FILE) as f:
        f.write("".join(f"{key}\n" for key in keys))


def write_parent_run_id(sweep_dir: str | Path, run_id: str) -> None:
    with atomic_write(Path(sweep_dir) / PARENT_RUN_FILE) as f:
        f.write(run_id)


@dataclass
class Trial:
    """How one job of a sweep ended."""

    job_num: int
    overrides: list[str]
    status: str  # COMPLETED or FAILED
    value: float | None = None  # what the job returned: the best optimized_metric
    error: str | None = None
    run_id: str | None = None  # its MLflow run; None where it failed before the run existed
    run_name: str | None = None


def write_trial(sweep_dir: str | Path, trial: Trial) -> None:
    with atomic_write(Path(sweep_dir) / TRIALS_DIR / f"{trial.job_num}.json") as f:
        json.dump(asdict(trial), f, indent=1)


def read_trials(sweep_dir: str | Path) -> list[Trial]:
    """Every job of the sweep that has ended, in job order."""
    folder = Path(sweep_dir) / TRIALS_DIR
    trials = [Trial(**json.loads(p.read_text())) for p in folder.glob("*.json")]
    return sorted(trials, key=lambda t: t.job_num)


def is_better(value: float, than: float, direction: str) -> bool:
    return value > than if direction == "maximize" else value < than


def best_trial(trials: Sequence[Trial], direction: str) -> Trial | None:
    """The completed trial with the best value (the first of equals), or None if none has one."""
    best = None
    for trial in trials:
        if trial.status != COMPLETED or trial.value is None:
            continue
        if best is None or is_better(trial.value, best.value, direction):
            best = trial
    return best


def trial_value(cfg: DictConfig, value: float | None) -> float | None:
    """What a job returns to the sweeper: in a sweep, a missing or non-finite ``optimized_metric``
    is the trial's failure (Optuna's sweeper cannot tell a NaN and stops the whole search on it);
    outside a sweep the value as it is."""
    metric = cfg.get("optimized_metric")
    if not metric or not in_sweep():
        return value
    if value is None:
        raise TrialFailed(
            f"optimized_metric: {metric} was never logged in this trial, so the sweeper cannot "
            "rank it (no validation ran, or the metric is misspelt)"
        )
    if not math.isfinite(value):
        raise TrialFailed(f"optimized_metric: {metric} is {value} in this trial (it diverged)")
    return value


@contextmanager
def trial_errors() -> Iterator[None]:
    """In a sweep's job: a user error is printed as its one ``error:`` line and raised on to Hydra,
    which records the job as failed (``sys.exit`` would end the whole sweep)."""
    try:
        yield
    except Exception as exc:
        err = find_user_error(exc)
        if err is not None:
            job = HydraConfig.get().job.get("num")
            print(f"error: job #{job}: {err}", file=sys.stderr, flush=True)
        raise


# the sweep parent runs (medlm.utils.sweep_callback.SweepParentRun) started in this process and
# not yet closed; here, so that a command closes them without importing the callback's MLflow code
OPEN_SWEEPS: list = []


@contextmanager
def closing_sweeps() -> Iterator[None]:
    """Around a command that sweeps: a sweep that ends with an exception (a sweeper re-raising a
    failed job's error, Ctrl-C) closes its parent run with the trials that ended, FAILED (KILLED
    on Ctrl-C)."""
    try:
        yield
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for callback in list(OPEN_SWEEPS):
            callback._stopped_early(status)
        raise
