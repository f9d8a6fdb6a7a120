"""MLflow bookkeeping for a run: where the store is, what every run records, artifacts from
callbacks."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from medlm.utils.io import atomic_write
from medlm.utils.mlflow_logger import open_mlflow_logger
from medlm.utils.run_names import run_name, task_overrides
from medlm.utils.sweeps import MLFLOW_PARENT_RUN_ID, parent_run_id, swept_keys

# MLflow rejects longer param values; a longer one (a long template) is cut and marked
MAX_PARAM_LENGTH = 6000
# the run folder's record of its MLflow run, which a resumed run continues
RUN_ID_FILE = "mlflow_run_id"


def mlflow_loggers(loggers: Iterable[Logger]) -> list[MLFlowLogger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def log_artifact(
    loggers: Iterable[Logger], path: str | Path, artifact_dir: str | None = None
) -> None:
    """Upload a file to every MLflow run this trainer logs to."""
    for lg in mlflow_loggers(loggers):
        lg.experiment.log_artifact(lg.run_id, str(path), artifact_dir)


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {"model.config.n_layer": 4, ...}, Hydra's own node left out."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            text = str(node)
            flat[prefix] = (
                text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
            )

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def git_commit(repo: str | Path) -> str:
    """The commit of the checkout holding ``repo`` (the medlm code that ran), '-dirty' when it had
    changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def named_run(lcfg: DictConfig, cfg: DictConfig) -> DictConfig:
    """The MLflow logger's config with the run's name (unless one is set: ``run_name: null``
    means the experiment and its distinguishing overrides, :mod:`medlm.utils.run_names`) and, in a
    sweep's job, the sweep's parent run (MLflow's ``mlflow.parentRunId`` tag)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    extra: dict[str, Any] = {}
    if lcfg.get("run_name") is None:
        job_num = int(hydra_cfg.job.get("num") or 0) if multirun else None
        swept = swept_keys(hydra_cfg.sweep.dir) if multirun else None
        extra["run_name"] = run_name(cfg.task_name, task_overrides(hydra_cfg), job_num, swept)
    parent = parent_run_id(hydra_cfg.sweep.dir) if multirun else None
    if parent:
        extra["tags"] = {**(lcfg.get("tags") or {}), MLFLOW_PARENT_RUN_ID: parent}
    if not extra:
        return lcfg
    return OmegaConf.merge(OmegaConf.to_container(lcfg, resolve=True), extra)


def make_loggers(cfg: DictConfig, resume_run_id: str | None) -> list[Logger]:
    """The configured loggers; an MLflow logger continues run ``resume_run_id`` when given."""
    loggers = []
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is None:
            continue
        if "MLFlowLogger" in lcfg._target_:
            # only rank 0 writes to MLflow (its rank from SLURM_PROCID/RANK at import); jobs of a
            # sweep that start together open the store one at a time
            if rank_zero_only.rank == 0:
                loggers.append(open_mlflow_logger(named_run(lcfg, cfg), resume_run_id))
            continue
        loggers.append(instantiate(lcfg))
    return loggers


def record_run(loggers: Iterable[Logger], cfg: DictConfig, output_dir: Path, resumed: bool) -> None:
    """What every run records, training or evaluation: the resolved config as params (a resumed run
    keeps the params it has), the config and overrides as files and artifacts, and tags (git commit,
    Hydra job, task, tags). Writes the MLflow run id into the run folder, for a resume to
    continue."""
    hydra_cfg = HydraConfig.get()
    config_file = output_dir / "config.yaml"
    with atomic_write(config_file) as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    overrides_file = output_dir / "overrides.yaml"
    with atomic_write(overrides_file) as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))))
    tags = {
        "git_commit": git_commit(Path(__file__).parent),
        "hydra_job_name": hydra_cfg.job.name,
        "hydra_job_num": str(hydra_cfg.job.get("num", 0)),
        "output_dir": str(output_dir),
        "task_name": cfg.task_name,
        **{f"tag.{t}": "true" for t in cfg.get("tags") or []},
    }
    if hydra_cfg.mode == RunMode.MULTIRUN:
        tags["sweep_dir"] = str(Path(hydra_cfg.sweep.dir).resolve())
    for lg in mlflow_loggers(loggers):
        if not resumed:
            lg.log_hyperparams(flatten_config(cfg))
        for key, value in tags.items():
            lg.experiment.set_tag(lg.run_id, key, value)
        with atomic_write(output_dir / RUN_ID_FILE) as f:
            f.write(lg.run_id)
    log_artifact(loggers, config_file, "config")
    log_artifact(loggers, overrides_file, "config")
