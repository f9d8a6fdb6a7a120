"""The models one evaluation scores, by the names a user gives them (``models.NAME=VALUE``).

A value is a medlm checkpoint (``.ckpt``), a Hugging Face or Meta model directory, the id of an
MLflow run of ``medlm-train`` (its best checkpoint), or the name of an MLflow experiment (a training
``task_name``: the best checkpoint of its newest run that has one). Every model is found and loaded
before anything is scored or recorded, so a bad value leaves no results and no MLflow run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from medlm.errors import ConfigError
from medlm.eval.report import check_model_name
from medlm.loading import LoadedModel, load_model
from medlm.utils.tracking import RUN_ID_FILE

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class ModelToScore:
    name: str
    value: str  # as the user gave it
    path: Path  # the checkpoint file or model directory
    run_id: str | None  # the medlm training run it came from, whose record gets the scores
    loaded: LoadedModel


def _training_run_of(checkpoint: Path) -> str | None:
    """The MLflow run of the medlm run folder a checkpoint sits in
    (``<run>/checkpoints/x.ckpt``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        found = folder / RUN_ID_FILE
        if checkpoint.is_file() and found.is_file():
            return found.read_text().strip() or None
    return None


def _best_checkpoint(name: str, run, where: str) -> Path:
    value = run.data.tags.get("best_checkpoint", "")
    path = Path(value)
    if not value.endswith(".ckpt") or not path.is_file():
        raise ConfigError(
            f"models.{name}: {where} has no best checkpoint that still exists "
            f"(tag best_checkpoint={value or 'none'}); pass a checkpoint path"
        )
    return path


def resolve_model(name: str, value: str, tracking_uri: str | None) -> tuple[Path, str | None]:
    """``(checkpoint file or model directory, training run id or None)`` that ``value`` means."""
    text = str(value)
    path = Path(text).expanduser()
    looks_like_path = (
        path.suffix in (".ckpt", ".pt", ".pth") or "/" in text or text.startswith((".", "~"))
    )
    is_model = (
        path.is_file() or (path / "config.json").is_file() or (path / "params.json").is_file()
    )
    if is_model or (
        path.exists() and looks_like_path
    ):  # a folder that is no model: load_model says why
        return path.resolve(), _training_run_of(path.resolve())
    if looks_like_path:
        raise ConfigError(f"models.{name}: {text}: no such checkpoint file or model directory")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    if RUN_ID.fullmatch(text):
        try:
            run = client.get_run(text)
        except MlflowException:
            raise ConfigError(
                f"models.{name}: no MLflow run {text} in {client.tracking_uri}"
            ) from None
        return _best_checkpoint(name, run, f"MLflow run {text}"), text
    experiment = client.get_experiment_by_name(text)
    if experiment is None:
        raise ConfigError(
            f"models.{name}: {text!r} is neither a checkpoint file, a model directory, an "
            f"MLflow run id nor an MLflow experiment in {client.tracking_uri}"
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.best_checkpoint LIKE '%.ckpt'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    for run in runs:
        if Path(run.data.tags["best_checkpoint"]).is_file():
            return _best_checkpoint(name, run, f"run {run.info.run_id}"), run.info.run_id
    raise ConfigError(
        f"models.{name}: no run of MLflow experiment {text!r} has a best checkpoint that "
        "still exists; pass a checkpoint path"
    )


def load_models(
    models: dict[str, str], tracking_uri: str | None, causal_lm: bool = False
) -> list[ModelToScore]:
    """Every model named, found and loaded (eval mode, CPU), in the order given."""
    if not models:
        raise ConfigError(
            "models: name at least one model to score (models.NAME=<checkpoint, model "
            "directory, MLflow run id or experiment>)"
        )
    found = []
    for name, value in models.items():
        check_model_name(name)
        if value is None:
            continue  # models.NAME=null leaves a default model out
        path, run_id = resolve_model(name, value, tracking_uri)
        log.info("models.%s: %s%s", name, path, f" (MLflow run {run_id})" if run_id else "")
        loaded = load_model(path, causal_lm=causal_lm)
        found.append(ModelToScore(name, str(value), path, run_id, loaded))
    if not found:
        raise ConfigError("models: every model was left out (set at least one models.NAME)")
    return found
