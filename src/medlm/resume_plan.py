"""What ``ckpt_path`` resumes, decided and said before the run is opened.

``ckpt_path=auto`` resumes the run folder's ``checkpoints/last.ckpt`` (a requeued SLURM job: its
newest checkpoint, :func:`medlm.utils.slurm.requeued_checkpoint`), or starts fresh; either way it
says so. Before the MLflow run is touched:

- a run folder that holds nothing of a run (Hydra has just made it: a mistyped ``hydra.run.dir``)
  is an error, not a silent fresh start;
- the checkpoint is read (weights only, memory-mapped): a truncated or corrupt file is one error
  line, and the original run keeps its status;
- a run that already reached its ``max_epochs``/``max_steps`` is reported as finished, and nothing
  is trained or recorded;
- the values that lay out the learning-rate schedule (epochs, steps, batches, devices, the
  optimizer's lr, the scheduler) cannot change on resume: the schedule was laid out for the
  original length, and the run's MLflow params show the original values. Such a change is refused
  with a line naming the key and both values (a longer run is a new run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import read_checkpoint
from medlm.utils.preflight import holds_only_hydra_files
from medlm.utils.slurm import requeued_checkpoint
from medlm.utils.tracking import RUN_ID_FILE

log = logging.getLogger("medlm.resume")

# the values a resumed run must keep: they set the schedule's length and shape
SCHEDULE_KEYS = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.limit_train_batches",
    "trainer.accumulate_grad_batches",
    "trainer.devices",
    "trainer.num_nodes",
    "data.batch_size",
    "optim.lr",
    "scheduler",
)
LIGHTNING_MAX_EPOCHS = 1000  # Lightning's max_epochs when neither max_epochs nor max_steps is set


@dataclass(frozen=True)
class ResumePlan:
    """A fresh run (no ``ckpt_path``), or the checkpoint to resume and where it stands."""

    ckpt_path: str | None = None
    run_id: str | None = None  # the MLflow run the resumed run continues
    epoch: int = 0
    step: int = 0
    finished: bool = False
    best: tuple[str, float] | None = None  # the monitored metric and its best value so far


def _say(message: str, *args: Any) -> None:
    if rank_zero_only.rank == 0:
        log.info(message, *args)


def checkpoint_to_resume(requested: str | None, output_dir: Path) -> str | None:
    """``auto``: this run folder's last checkpoint (None: start fresh); a path: it must exist."""
    if requested is None:
        return None
    if requested != "auto":
        if not Path(requested).is_file():
            raise ConfigError(f"ckpt_path: {requested} does not exist")
        return requested
    if holds_only_hydra_files(output_dir):
        raise ConfigError(
            f"ckpt_path=auto: there is no run to resume in {output_dir} (the folder did not exist: "
            "is hydra.run.dir mistyped?); leave ckpt_path out to start a new run"
        )
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return str(last)
    _say("ckpt_path=auto: no checkpoint in %s yet: starting fresh", last.parent)
    return None


def read_training_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning training checkpoint, weights only; a file that is not one is a MedlmError."""
    try:
        state = read_checkpoint(path)
    except MedlmError as err:
        raise MedlmError(f"cannot resume: {err}") from None
    if not isinstance(state.get("loops"), dict) or "global_step" not in state:
        raise MedlmError(
            f"cannot resume: {path} is not a training checkpoint (it has no loop state); "
            "only a checkpoint medlm-train saved can be resumed"
        )
    return state


def is_finished(state: dict[str, Any], trainer: DictConfig) -> bool:
    """Lightning's own test (FitLoop.done): the step limit, or the epochs processed."""
    max_steps = trainer.get("max_steps", -1)
    max_epochs = trainer.get("max_epochs")
    if max_steps not in (None, -1) and state["global_step"] >= max_steps:
        return True
    if max_epochs is None:
        max_epochs = LIGHTNING_MAX_EPOCHS if max_steps in (None, -1) else -1
    if max_epochs == -1:
        return False
    progress = state["loops"].get("fit_loop", {}).get("epoch_progress", {})
    return progress.get("current", {}).get("processed", 0) >= max_epochs


def best_score(state: dict[str, Any]) -> tuple[str, float] | None:
    """The ModelCheckpoint's monitored metric and its best value, as the checkpoint holds them
    (under its class name: ModelCheckpoint or a subclass such as FiniteModelCheckpoint)."""
    for name, cb in (state.get("callbacks") or {}).items():
        if "ModelCheckpoint{" in name and cb.get("best_model_score") is not None:
            return str(cb.get("monitor")), float(cb["best_model_score"])
    return None


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_schedule_unchanged(cfg: DictConfig, output_dir: Path) -> None:
    """The schedule's values as the run folder's ``config.yaml`` recorded them, else a
    ConfigError."""
    recorded = output_dir / "config.yaml"
    if not recorded.is_file():  # a checkpoint from another folder: a new run starts from it
        return
    before = OmegaConf.load(recorded)
    for key in SCHEDULE_KEYS:
        old, new = _value(before, key), _value(cfg, key)
        if old != new:
            raise ConfigError(
                f"{key}: {new!r}, but the run in {output_dir} was started with {old!r}; its "
                f"learning-rate schedule was laid out for that, so a resume cannot change it: "
                f"resume with {key}={old!r}, or start a new run"
            )


def plan_resume(cfg: DictConfig, output_dir: Path) -> ResumePlan:
    """Where this run starts: fresh, or a checked checkpoint (said on the console either way)."""
    ckpt = checkpoint_to_resume(cfg.get("ckpt_path"), output_dir)
    ckpt = ckpt or requeued_checkpoint(output_dir)
    if ckpt is None:
        return ResumePlan()
    state = read_training_checkpoint(ckpt)
    check_schedule_unchanged(cfg, output_dir)
    run_id_file = output_dir / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
    plan = ResumePlan(
        ckpt,
        run_id,
        epoch=int(state.get("epoch", 0)),
        step=int(state["global_step"]),
        finished=is_finished(state, cfg.trainer),
        best=best_score(state),
    )
    into = f", into MLflow run {run_id}" if run_id else ""
    if plan.finished:
        _say(
            "%s is finished: %s is at epoch %d, step %d, the end of the configured training%s; "
            "nothing to train",
            output_dir,
            ckpt,
            plan.epoch,
            plan.step,
            f" (MLflow run {run_id}, left as it is)" if run_id else "",
        )
    else:
        _say("resuming from %s at epoch %d, step %d%s", ckpt, plan.epoch, plan.step, into)
    return plan
