"""What ``medlm-eval`` does once its config is composed: load every model, score them on the
benchmark, write the results, record the evaluation in MLflow (and the scores in the training
runs they came from).

Kept apart from the command (:mod:`medlm.cli.eval`) so that ``medlm-eval --help`` and ``--cfg job``
answer without importing torch, Lightning or MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from medlm.errors import ConfigError
from medlm.eval.benchmarks import BENCHMARKS
from medlm.eval.models import ModelToScore, load_models
from medlm.eval.report import Results
from medlm.utils import preflight
from medlm.utils.plots import write_confusion_matrix
from medlm.utils.quiet import lightning_logs_once
from medlm.utils.run_outcome import closing_summary, print_summary, summary
from medlm.utils.tracking import log_artifact, make_loggers, mlflow_loggers, record_run

log = logging.getLogger("medlm.eval")


def pick_device(value: str) -> torch.device:
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ConfigError(
            f"device: {value!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {value} was asked for, but torch sees no CUDA GPU here")
    return device


def record(
    cfg: DictConfig, results: Results, models: list[ModelToScore], files: list[Path], out: Path
) -> None:
    """The evaluation's MLflow run (params, metrics NAME/METRIC, the files, tags linking the runs it
    scored), and each scored training run's eval/<benchmark>/<metric>."""
    loggers = make_loggers(cfg, None)
    if not loggers:
        print_summary(summary("FINISHED", out))
        return
    record_run(loggers, cfg, out, resumed=False)
    metrics = {
        f"{name}/{k}": float(v)
        for name, m in results.models.items()
        for k, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for lg in loggers:
        lg.log_metrics(metrics)
    for path in files:
        log_artifact(
            loggers,
            path,
            path.parent.relative_to(out).as_posix() if path.parent != out else "results",
        )
    for lg in mlflow_loggers(loggers):
        client, eval_run = lg.experiment, lg.run_id
        for m in models:
            client.set_tag(eval_run, f"model.{m.name}", str(m.path))
            if m.run_id is None:
                continue
            client.set_tag(eval_run, f"scored_run.{m.name}", m.run_id)
            for k, v in results.models[m.name].items():
                if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    client.log_metric(m.run_id, f"eval/{results.benchmark}/{k}", float(v))
            client.set_tag(m.run_id, f"eval/{results.benchmark}/run", eval_run)
    for lg in loggers:
        lg.finalize("success")
    closing_summary(cfg, out, loggers, best=None)


def evaluate(cfg: DictConfig) -> Results:
    """Find and load every model, score them, write the outputs, then record the MLflow run."""
    lightning_logs_once()
    name = cfg.benchmark.name
    if name not in BENCHMARKS:
        raise ConfigError(f"benchmark.name: {name!r} is not one of {', '.join(BENCHMARKS)}")
    device = pick_device(str(cfg.device))
    # a tracking server that does not answer: now, not after scoring
    preflight.check_store(cfg)
    tracking_uri = ((cfg.get("logger") or {}).get("mlflow") or {}).get("tracking_uri")
    requested = dict(cfg.get("models") or {}) or dict(cfg.benchmark.get("default_models") or {})
    models = load_models(requested, tracking_uri)
    results = BENCHMARKS[name](models, cfg.benchmark, device)

    out = Path(cfg.paths.output_dir)
    files = list(results.write(out).values())
    for (
        model,
        details,
    ) in results.details.items():  # classifiers and PubMedQA: a confusion matrix each
        if "confusion" in details and "labels" in details:
            files += write_confusion_matrix(
                details["confusion"],
                details["labels"],
                out / "confusion" / model,
                f"{model}: {results.title}",
            )
    print(f"{results.title}\n\n{results.table()}\n")
    for m in models:
        print(f"{m.name}: {m.path}" + (f" (MLflow run {m.run_id})" if m.run_id else ""))
    record(cfg, results, models, files, out)  # ends with the summary: run id, folder, MLflow UI
    return results
