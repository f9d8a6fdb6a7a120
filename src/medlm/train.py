"""medlm-train: compose model x data x trainer with Hydra, fit, and record the run in MLflow.

    medlm-train                                        # experiment=quickstart
    medlm-train experiment=biomedgpt_pubmedqa trainer=gpu
    medlm-train -m optim.lr=1e-4,3e-4                  # a sweep: one MLflow run per job
    medlm-train hydra.run.dir=<a run's dir> ckpt_path=auto   # resume it, same MLflow run
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning.pytorch as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from medlm.callbacks.resume_state import ResumeState
from medlm.errors import ConfigError, MedlmError
from medlm.utils.cli import user_errors
from medlm.utils.io import atomic_write
from medlm.utils.tracking import flatten_config, git_commit, log_artifact, mlflow_loggers

log = logging.getLogger("medlm.train")
# The project dir is where medlm-train runs. ${hydra:runtime.cwd} cannot name it: a sweeper lays out
# its job dirs before Hydra's runtime config exists.
if not OmegaConf.has_resolver("medlm.cwd"):
    OmegaConf.register_new_resolver("medlm.cwd", os.getcwd)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
RUN_ID_FILE = "mlflow_run_id"


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
        raise ConfigError(f"data.block_size: {block} is longer than the model's context of {context} tokens")


def make_loggers(cfg: DictConfig, resume_run_id: str | None) -> list[Logger]:
    loggers = []
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is None:
            continue
        if "MLFlowLogger" in lcfg._target_ and rank_zero_only.rank != 0:
            continue  # DDP: only rank 0 logs, and the other ranks need not open the store at all
        extra = {"run_id": resume_run_id} if resume_run_id and "MLFlowLogger" in lcfg._target_ else {}
        loggers.append(instantiate(lcfg, **extra))
    return loggers


def record_run(trainer: L.Trainer, cfg: DictConfig, output_dir: Path, resumed: bool) -> None:
    """Params, config artifacts and tags of the run; a resumed run keeps the params it has."""
    hydra_cfg = HydraConfig.get()
    config_file = output_dir / "config.yaml"
    with atomic_write(config_file) as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    overrides_file = output_dir / "overrides.yaml"
    with atomic_write(overrides_file) as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))))
    tags = {"git_commit": git_commit(Path(__file__).parent), "hydra_job_name": hydra_cfg.job.name,
            "hydra_job_num": str(hydra_cfg.job.get("num", 0)), "output_dir": str(output_dir),
            "task_name": cfg.task_name, **{f"tag.{t}": "true" for t in cfg.get("tags") or []}}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        tags["sweep_dir"] = str(Path(hydra_cfg.sweep.dir).resolve())
    for lg in mlflow_loggers(trainer.loggers):
        if not resumed:
            lg.log_hyperparams(flatten_config(cfg))
        for key, value in tags.items():
            lg.experiment.set_tag(lg.run_id, key, value)
        with atomic_write(output_dir / RUN_ID_FILE) as f:
            f.write(lg.run_id)
    log_artifact(trainer.loggers, config_file, "config")
    log_artifact(trainer.loggers, overrides_file, "config")


def train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) the configured model; return the best ``optimized_metric``."""
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("model: %s", cfg.model._target_)
    net = instantiate(cfg.model)  # a wrong model value fails here, before any data is read
    check_context(cfg, net)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, net=net, optimizer=instantiate(cfg.optim),
                         scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                         _convert_="all")

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    run_id_file = output_dir / RUN_ID_FILE
    resume_run_id = run_id_file.read_text().strip() if ckpt_path and run_id_file.is_file() else None
    # a callback set to null on the command line (callbacks.samples=null) is switched off
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # always, and last: the random state and the loader's place in the epoch in every checkpoint
    callbacks.append(ResumeState())
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=make_loggers(cfg, resume_run_id))
    if rank_zero_only.rank == 0:  # DDP: the other ranks run this too, and must not write records
        record_run(trainer, cfg, output_dir, resumed=resume_run_id is not None)

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
    with user_errors():
        return train(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
