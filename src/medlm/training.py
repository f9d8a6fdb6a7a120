"""What ``medlm-train`` does once its config is composed: check everything, build the model, the
data and the trainer, fit and test, record the run in MLflow, and say how it ended.

Kept apart from the command (:mod:`medlm.cli.train`) so that ``medlm-train --help`` and
``--cfg job`` answer without importing torch, Lightning or MLflow.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning.pytorch as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from medlm.callbacks.resume_state import ResumeState
from medlm.errors import ConfigError
from medlm.resume_plan import ResumePlan, plan_resume
from medlm.utils import preflight
from medlm.utils.quiet import lightning_logs_once
from medlm.utils.run_outcome import closing_summary, failed_with_reason
from medlm.utils.tracking import make_loggers, mlflow_loggers, record_run

log = logging.getLogger("medlm.train")


def check_context(cfg: DictConfig, net) -> None:
    """The data's block must fit the model's context; fail before any data is read."""
    block, context = cfg.data.get("block_size"), getattr(net.config, "block_size", None)
    if block is not None and context is not None and block > context:
        raise ConfigError(
            f"data.block_size: {block} is longer than the model's context of {context} tokens"
        )


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Model, data and trainer, each value checked by its constructor before any data is read."""
    log.info("model: %s", cfg.model._target_)
    net = instantiate(cfg.model)
    check_context(cfg, net)
    datamodule = instantiate(cfg.data)
    module = instantiate(
        cfg.module,
        net=net,
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        _convert_="all",
    )
    preflight.check_optimization(module.optimizer_factory, module.scheduler_factory)
    # a callback set to null on the command line (callbacks.samples=null) is switched off
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # always, and last: the random state and the loader's place in the epoch in every checkpoint
    callbacks.append(ResumeState())
    return module, datamodule, preflight.instantiate_trainer(cfg.trainer, callbacks)


def best_metric(trainer: L.Trainer, metric: str | None) -> tuple[str, float] | None:
    """``metric``'s best checkpointed value, else its last value, else the checkpointed metric's;
    never a NaN or infinite one (a diverged run has no best value to report to a sweeper)."""
    ckpt_cb = trainer.checkpoint_callback
    checkpointed = None
    if ckpt_cb is not None and ckpt_cb.monitor and ckpt_cb.best_model_score is not None:
        score = float(ckpt_cb.best_model_score)
        checkpointed = (ckpt_cb.monitor, score) if math.isfinite(score) else None
    if checkpointed and checkpointed[0] == metric:
        return checkpointed
    value = trainer.callback_metrics.get(metric) if metric else None
    if value is not None and math.isfinite(float(value)):
        return (metric, float(value))
    return checkpointed


def fit_and_test(cfg: DictConfig, trainer: L.Trainer, module, datamodule, ckpt_path) -> None:
    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    for lg in mlflow_loggers(trainer.loggers):
        lg.experiment.set_tag(lg.run_id, "best_checkpoint", best or "none")
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)


def train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) the configured model; return the best ``optimized_metric``."""
    lightning_logs_once()
    output_dir = Path(cfg.paths.output_dir)
    # every check before the MLflow run exists: a mistake leaves no run and no run folder
    with preflight.discard_unused_run_folder(output_dir):
        preflight.check_train_config(cfg)
        resume: ResumePlan = plan_resume(cfg, output_dir)
        if resume.finished:  # nothing to train; the run is left as it is
            closing_summary(cfg, output_dir, [], resume.best, resume.run_id)
            return resume.best[1] if resume.best else None
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        module, datamodule, trainer = build(cfg)
        preflight.prepare_data(datamodule, cfg.train, cfg.test, rank_zero_only.rank)

    if not trainer.fast_dev_run:  # a debug run logs nothing (Lightning's DummyLogger)
        trainer.loggers = make_loggers(cfg, resume.run_id)
    if rank_zero_only.rank == 0:  # DDP: the other ranks run this too, and must not write records
        record_run(trainer.loggers, cfg, output_dir, resumed=resume.run_id is not None)
    metric = cfg.get("optimized_metric")
    try:  # a failure from here on: the run is FAILED with the reason recorded in it
        with failed_with_reason(trainer.loggers, output_dir):
            fit_and_test(cfg, trainer, module, datamodule, resume.ckpt_path)
    except Exception:
        closing_summary(cfg, output_dir, trainer.loggers, best_metric(trainer, metric))
        raise
    best = best_metric(trainer, metric)
    closing_summary(cfg, output_dir, trainer.loggers, best)
    return best[1] if best and best[0] == metric else None
