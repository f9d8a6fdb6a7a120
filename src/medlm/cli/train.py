"""medlm-train: compose model x data x trainer with Hydra, fit, and record the run in MLflow.

medlm-train                                        # experiment=quickstart
medlm-train experiment=biomedgpt_pubmedqa trainer=gpu
medlm-train -m optim.lr=1e-4,3e-4                  # a sweep: one MLflow run per job, one parent
medlm-train -m hparams_search=medquad_alpaca_optuna # an Optuna search (pip install medlm[sweep])
medlm-train hydra.run.dir=<a run's dir> ckpt_path=auto   # resume it, same MLflow run
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning.pytorch as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from medlm.callbacks.resume_state import ResumeState
from medlm.errors import ConfigError, MedlmError
from medlm.utils.cli import CONFIG_DIR, run_hydra, user_errors
from medlm.utils.slurm import requeued_checkpoint
from medlm.utils.sweep_callback import closing_sweeps
from medlm.utils.sweeps import in_sweep, trial_errors, trial_value
from medlm.utils.tracking import RUN_ID_FILE, make_loggers, mlflow_loggers, record_run

log = logging.getLogger("medlm.train")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``auto``: this run's last checkpoint if there is one; a path: it must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(ckpt_path).is_file():
        raise MedlmError(f"ckpt_path: {ckpt_path} does not exist")
    return ckpt_path


def check_context(cfg: DictConfig, net) -> None:
    """The data's block must fit the model's context; fail before any data is read."""
    block, context = cfg.data.get("block_size"), getattr(net.config, "block_size", None)
    if block is not None and context is not None and block > context:
        raise ConfigError(
            f"data.block_size: {block} is longer than the model's context of {context} tokens"
        )


def train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) the configured model; return the best ``optimized_metric``."""
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("model: %s", cfg.model._target_)
    net = instantiate(cfg.model)  # a wrong model value fails here, before any data is read
    check_context(cfg, net)
    datamodule = instantiate(cfg.data)
    module = instantiate(
        cfg.module,
        net=net,
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        _convert_="all",
    )

    # a requeued SLURM job resumes from the checkpoint it saved when it was signalled
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir) or requeued_checkpoint(
        output_dir
    )
    run_id_file = output_dir / RUN_ID_FILE
    resume_run_id = run_id_file.read_text().strip() if ckpt_path and run_id_file.is_file() else None
    # a callback set to null on the command line (callbacks.samples=null) is switched off
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # always, and last: the random state and the loader's place in the epoch in every checkpoint
    callbacks.append(ResumeState())
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=make_loggers(cfg, resume_run_id)
    )
    if rank_zero_only.rank == 0:  # DDP: the other ranks run this too, and must not write records
        record_run(trainer.loggers, cfg, output_dir, resumed=resume_run_id is not None)

    if cfg.get("train"):
        log.info("fitting%s", f", resuming from {ckpt_path}" if ckpt_path else "")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    for lg in mlflow_loggers(trainer.loggers):
        lg.experiment.set_tag(lg.run_id, "best_checkpoint", best or "none")
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)

    metric = cfg.get("optimized_metric")
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.monitor == metric and ckpt_cb.best_model_score is not None:
        return float(ckpt_cb.best_model_score)
    value = trainer.callback_metrics.get(metric) if metric else None
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    # a sweep's job hands its error to the sweeper, which records the trial as failed and goes on
    with trial_errors() if in_sweep() else user_errors():
        return trial_value(cfg, train(cfg))


def main() -> None:
    # a sweeper that stops on a failed job raises that job's error here
    with user_errors(), closing_sweeps():
        run_hydra(_hydra_main)


if __name__ == "__main__":
    main()
