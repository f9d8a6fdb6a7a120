"""The runs of one sweep under one MLflow parent run, and the sweep's outcome recorded in it.

A Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml), so that it works the same for
every sweeper (the basic grid sweep, Optuna's search) and every launcher (in this process,
submitit's local processes, SLURM jobs on other nodes):

- when the sweep starts (the sweeping process): the parent run is created in the experiment's
  MLflow experiment with the sweep's search space, overrides and sampler settings as params, and
  its id is written into the sweep folder (:mod:`medlm.utils.sweeps`);
- each job (wherever it runs) names that run as its parent when its MLflow run is created
  (:func:`medlm.utils.tracking.named_run`); when the job ends, it records its outcome in the sweep
  folder and in its own run (``<metric>_best``, or FAILED with the error);
- when the sweep ends: the number of trials completed and failed, the best value of
  ``optimized_metric`` with the best trial's run id, name and overrides, the optimisation history
  plot and a trials table go into the parent run, and a summary is printed. A sweep that stops
  early (a sweeper raising after failed jobs, Ctrl-C) still closes its parent run, as FAILED.
"""

from __future__ import annotations

import atexit
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from medlm.utils.io import atomic_write
from medlm.utils.mlflow_logger import store_lock
from medlm.utils.run_names import is_noise, override_key, run_name, task_overrides
from medlm.utils.sweep_plot import write_sweep_history
from medlm.utils.sweeps import (
    COMPLETED,
    FAILED,
    OPEN_SWEEPS,
    SWEEP_TAG,
    Trial,
    best_trial,
    read_trials,
    swept_keys,
    write_parent_run_id,
    write_swept_keys,
    write_trial,
)
from medlm.utils.tracking import RUN_ID_FILE, flatten_config, git_commit

# an error message kept in a tag is cut to this length
MAX_ERROR = 1000


def mlflow_config(config: DictConfig) -> DictConfig | None:
    """The MLflow logger's config of this command (conf/logger/mlflow.yaml), or None."""
    for lcfg in (config.get("logger") or {}).values():
        if lcfg is not None and "MLFlowLogger" in lcfg.get("_target_", ""):
            return lcfg
    return None


def sweep_direction(config: DictConfig) -> str:
    """minimize or maximize: the sweeper's direction (Optuna's), else the checkpoint callback's
    mode where it monitors ``optimized_metric``, else minimize."""
    direction = config.hydra.sweeper.get("direction")
    if direction is not None:
        first = direction[0] if OmegaConf.is_list(direction) else direction
        return "maximize" if str(first).lower().endswith("maximize") else "minimize"
    ckpt = (config.get("callbacks") or {}).get("model_checkpoint")
    if ckpt and ckpt.get("monitor") == config.get("optimized_metric") and ckpt.get("mode") == "max":
        return "maximize"
    return "minimize"


def search_space(config: DictConfig) -> dict[str, str]:
    """What the sweep varies: the sweeper's ``params`` and the sweep overrides of the command line
    (which win, as the sweepers apply them; a plain value there fixes the parameter)."""
    space = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    task = task_overrides(config.hydra)
    for text, override in zip(task, OverridesParser.create().parse_overrides(task)):
        key = override.key_or_group
        if override.is_sweep_override():
            space[key] = text.split("=", 1)[1]
        else:
            space.pop(key, None)
    return space


def _short_target(node: Any) -> str:
    target = str((node or {}).get("_target_", "")) if node is not None else ""
    return target.rsplit(".", 1)[-1] or "none"


def _param_key(key: str) -> str:
    """MLflow param keys take letters, digits, ``_-./ :``; Hydra keys may carry ``+~@``."""
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in key)


def sweep_params(config: DictConfig, direction: str) -> dict[str, str]:
    """The parent run's params: the search space, the overrides, the sweeper's and sampler's
    settings, the launcher, and what is optimised in which direction."""
    settings = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    settings.pop("params", None)
    params = {
        "optimized_metric": str(config.get("optimized_metric")),
        "direction": direction,
        "sweeper": _short_target(config.hydra.sweeper),
        "launcher": _short_target(config.hydra.launcher),
        "overrides": " ".join(task_overrides(config.hydra)),
        **{f"search.{_param_key(k)}": v for k, v in search_space(config).items()},
        **{f"sweeper.{k}": v for k, v in flatten_config(OmegaConf.create(settings)).items()},
    }
    return params


@dataclass
class _Sweep:
    """What the sweeping process keeps between the sweep's start and end."""

    sweep_dir: str
    task_name: str
    metric: str | None
    direction: str
    searched: tuple[str, ...] = ()  # the keys the sweep varies
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    closed: bool = False


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


class SweepParentRun(Callback):
    """Hydra callback: one MLflow parent run per sweep; see the module docstring."""

    def __init__(self) -> None:
        self._sweep: _Sweep | None = None

    # --- the sweeping process -----------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        direction = sweep_direction(config)
        sweep = _Sweep(sweep_dir, str(config.task_name), config.get("optimized_metric"), direction)
        sweep.searched = tuple(search_space(config))
        write_swept_keys(sweep_dir, sweep.searched)
        for old in (Path(sweep_dir) / "trials").glob("*.json"):  # a reused sweep folder
            old.unlink()
        lcfg = mlflow_config(config)
        if lcfg is not None and rank_zero_only.rank == 0:
            sweep.tracking_uri = lcfg.get("tracking_uri")
            sweep.experiment = str(lcfg.get("experiment_name"))
            sweep.parent_run_id = self._create_parent(config, lcfg, sweep)
            write_parent_run_id(sweep_dir, sweep.parent_run_id)
            print(
                f"sweep: MLflow parent run {sweep.parent_run_id} in experiment "
                f"{sweep.experiment}; folder {sweep_dir}",
                flush=True,
            )
        self._sweep = sweep
        OPEN_SWEEPS.append(self)
        # Hydra calls no callback when a sweeper raises: closing_sweeps() closes the parent then,
        # and this covers a command that does not use it
        atexit.register(self._stopped_early)

    def _create_parent(self, config: DictConfig, lcfg: DictConfig, sweep: _Sweep) -> str:
        from mlflow.entities import Param

        kind = "search" if "optuna" in _short_target(config.hydra.sweeper).lower() else "sweep"
        name = run_name(f"{sweep.task_name} {kind}", task_overrides(config.hydra))
        with store_lock(sweep.tracking_uri):  # the store's tables and the experiment, once
            client = _client(sweep.tracking_uri)
            experiment = client.get_experiment_by_name(sweep.experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else client.create_experiment(
                    sweep.experiment, artifact_location=lcfg.get("artifact_location")
                )
            )
        tags = {
            SWEEP_TAG: kind,
            "sweep_dir": str(Path(sweep.sweep_dir).resolve()),
            "task_name": sweep.task_name,
            "git_commit": git_commit(Path(__file__).parent),
        }
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        params = sweep_params(config, sweep.direction)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return run.info.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(stopped=False)

    def _stopped_early(self, status: str = "FAILED") -> None:
        try:
            self._finish(stopped=True, status=status)
        except Exception as exc:  # the process is ending: say so rather than a traceback
            print(f"sweep: could not close the MLflow parent run: {exc}", file=sys.stderr)

    def _finish(self, stopped: bool, status: str = "FAILED") -> None:
        sweep = self._sweep
        if sweep is None or sweep.closed:
            return
        sweep.closed = True
        atexit.unregister(self._stopped_early)
        if self in OPEN_SWEEPS:
            OPEN_SWEEPS.remove(self)
        trials = read_trials(sweep.sweep_dir)
        best = best_trial(trials, sweep.direction) if sweep.metric else None
        for line in summary(trials, best, sweep, stopped):
            print(f"sweep: {line}", flush=True)
        if sweep.parent_run_id is not None:
            record_outcome(sweep, trials, best, stopped, status)

    # --- each job, wherever it runs -----------------------------------------------------------

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or rank_zero_only.rank != 0:
            return
        overrides = task_overrides(config.hydra)
        job_num = int(config.hydra.job.num)
        run_id_file = Path(config.hydra.runtime.output_dir) / RUN_ID_FILE
        trial = Trial(
            job_num=job_num,
            overrides=overrides,
            status=COMPLETED if job_return.status == JobStatus.COMPLETED else FAILED,
            run_id=run_id_file.read_text().strip() if run_id_file.is_file() else None,
            run_name=run_name(
                str(config.task_name), overrides, job_num, swept_keys(config.hydra.sweep.dir)
            ),
        )
        if trial.status == COMPLETED:
            value = job_return.return_value
            trial.value = float(value) if isinstance(value, (int, float)) else None
        else:  # the job's exception (reading return_value would raise it)
            error = job_return._return_value
            trial.error = f"{type(error).__name__}: {error}"[:MAX_ERROR]
        write_trial(config.hydra.sweep.dir, trial)
        lcfg = mlflow_config(config)
        if trial.run_id and lcfg is not None:
            record_trial(lcfg.get("tracking_uri"), trial, config.get("optimized_metric"))


def record_trial(tracking_uri: str | None, trial: Trial, metric: str | None) -> None:
    """The job's own run: the value it returned as ``<metric>_best``, or FAILED with its error
    (a failure after training, e.g. a NaN objective, left the run FINISHED)."""
    client = _client(tracking_uri)
    if trial.status == COMPLETED:
        if metric and trial.value is not None:
            client.set_tag(trial.run_id, "optimized_metric", metric)
            client.log_metric(trial.run_id, f"{metric}_best", trial.value)
        return
    client.set_tag(trial.run_id, "error", trial.error or "failed")
    if client.get_run(trial.run_id).info.status != "FAILED":
        client.set_terminated(trial.run_id, "FAILED")


def best_overrides(best: Trial, sweep: _Sweep) -> list[str]:
    """The best trial's exact values of what the sweep varied (of all its overrides but Hydra's
    own where the sweep's space is not known): what to paste to train it again."""
    keys = [override_key(o) for o in best.overrides]
    searched = [o for o, k in zip(best.overrides, keys) if k in sweep.searched]
    return searched or [o for o, k in zip(best.overrides, keys) if not is_noise(k)]


def summary(trials: list[Trial], best: Trial | None, sweep: _Sweep, stopped: bool) -> list[str]:
    """What the sweep prints when it ends."""
    failed = [t for t in trials if t.status != COMPLETED]
    lines = [
        f"{len(trials)} trials ended: {len(trials) - len(failed)} completed, {len(failed)} failed"
        + (" (the sweep ended with an error)" if stopped else "")
    ]
    lines += [f"  job #{t.job_num} failed: {t.error}" for t in failed]
    if best is not None:
        lines.append(
            f"best {sweep.metric} ({sweep.direction}): {best.value:.6g} by job #{best.job_num}, "
            f"MLflow run {best.run_id or '-'}"
        )
        lines.append(f"best overrides: {' '.join(best_overrides(best, sweep))}")
    if sweep.parent_run_id:
        lines.append(f"parent run {sweep.parent_run_id} ({sweep.experiment}); {sweep.sweep_dir}")
    return lines


def write_trials_table(trials: list[Trial], path: Path) -> Path:
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", "status", "value", "run_id", "run_name", "overrides", "error"])
        for t in trials:
            writer.writerow(
                [t.job_num, t.status, t.value, t.run_id, t.run_name, " ".join(t.overrides), t.error]
            )
    return path


def record_outcome(
    sweep: _Sweep, trials: list[Trial], best: Trial | None, stopped: bool, failed_status: str
) -> None:
    """The parent run at the sweep's end: counts, the best trial, the plot, the trials table;
    FINISHED when a trial completed and the sweep ended normally, else ``failed_status``."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(sweep.tracking_uri)
    run_id = sweep.parent_run_id
    completed = sum(t.status == COMPLETED for t in trials)
    metrics = {"trials_completed": completed, "trials_failed": len(trials) - completed}
    tags: dict[str, str] = {}
    params: dict[str, str] = {}
    if best is not None:
        metrics[f"{sweep.metric}_best"] = best.value
        tags = {
            "best_run_id": best.run_id or "",
            "best_run_name": best.run_name or "",
            "best_job_num": str(best.job_num),
            "best_overrides": " ".join(best.overrides),
        }
        for override in best_overrides(best, sweep):
            params[f"best.{_param_key(override_key(override))}"] = override.partition("=")[2]
    if stopped:
        tags["error"] = "the sweep ended with an error (see its output)"
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    folder = Path(sweep.sweep_dir)
    client.log_artifact(run_id, str(write_trials_table(trials, folder / "trials.csv")), "sweep")
    if sweep.metric and trials:
        title = f"{sweep.task_name}: {len(trials)} trials, {sweep.metric}"
        plot = write_sweep_history(
            trials, sweep.metric, sweep.direction, folder / "sweep_history.png", title
        )
        client.log_artifact(run_id, str(plot), "sweep")
    optuna_results = folder / "optimization_results.yaml"
    if optuna_results.is_file():
        client.log_artifact(run_id, str(optuna_results), "sweep")
    status = "FINISHED" if completed and not stopped else failed_status
    client.set_terminated(run_id, status)
