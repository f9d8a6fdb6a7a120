"""Compose medlm's Hydra configs in-process, as ``medlm-train`` would, inside a temporary project
dir."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from medlm.utils.cli import CONFIG_DIR
from medlm.utils.sweeps import SWEEP_TAG


def compose_train(
    root: Path,
    overrides: list[str],
    output_dir: Path | None = None,
    cache_dir: Path | None = None,
    config_name: str = "train",
) -> DictConfig:
    """The ``train`` config (or ``config_name``) with ``root`` as the project dir (mlruns/, logs/
    go there).

    MLflow's ``set_tracking_uri`` exports MLFLOW_TRACKING_URI into this process, which would send
    every later run of the test process to the first run's store: it is cleared here.
    """
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name, overrides=[*overrides, f"paths.root_dir={root}"], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or root / "run")
        cfg.hydra.job.num = 0
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
    HydraConfig().set_config(cfg)
    return cfg


def mlflow_runs(root: Path, parents: bool = False) -> list[dict]:
    """Every run in ``root``'s MLflow store, with its status, params, tags and metric keys; a
    sweep's parent run only with ``parents=True``."""
    con = sqlite3.connect(root / "mlruns" / "mlflow.db")
    runs = []
    query = "SELECT run_uuid, status FROM runs ORDER BY start_time"
    if not parents:
        query = (
            "SELECT run_uuid, status FROM runs WHERE run_uuid NOT IN "
            f"(SELECT run_uuid FROM tags WHERE key='{SWEEP_TAG}') ORDER BY start_time"
        )
    for run_id, status in con.execute(query):
        params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid=?", (run_id,)))
        tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid=?", (run_id,)))
        metrics: dict[str, list[tuple[int, float]]] = {}
        for key, step, value in con.execute(
            "SELECT key, step, value FROM metrics WHERE run_uuid=? ORDER BY step", (run_id,)
        ):
            metrics.setdefault(key, []).append((step, value))
        runs.append(
            {"run_id": run_id, "status": status, "params": params, "tags": tags, "metrics": metrics}
        )
    con.close()
    return runs
