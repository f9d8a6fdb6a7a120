"""MLflow bookkeeping for a run: where the store is, what every run records, artifacts from callbacks."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Iterable

from lightning.pytorch.loggers import Logger, MLFlowLogger
from omegaconf import DictConfig, OmegaConf

# MLflow rejects longer param values; a longer one (a long template) is cut and marked
MAX_PARAM_LENGTH = 6000


def mlflow_loggers(loggers: Iterable[Logger]) -> list[MLFlowLogger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger)]


def log_artifact(loggers: Iterable[Logger], path: str | Path, artifact_dir: str | None = None) -> None:
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
            flat[prefix] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def git_commit(repo: str | Path) -> str:
    """The commit of the checkout holding ``repo`` (the medlm code that ran), '-dirty' when it had changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
