"""A SLURM job told to stop saves a checkpoint at a step boundary, is requeued, and resumes there.

One mechanism, submitit's checkpointing (what hydra/launcher=slurm runs):

1. SLURM signals the job: submitit's requeue signal (SIGUSR2, ``signal_delay_s`` before the time
   limit) or SIGUSR1 (``scancel --signal=USR1``, Lightning's requeue signal), or SIGTERM
   (``scontrol requeue``, preemption, scancel).
2. This callback, which holds these signals while training runs, only notes the signal. At the end
   of the training step then running (all ranks agree on it) it saves
   ``<run dir>/checkpoints/requeue.ckpt``; that step's metrics and any validation that follows
   are logged as usual, and at the start of the next step the job stops.
3. On the requeue signal rank 0 hands over to submitit's handler, which re-pickles the Hydra job
   (hydra-submitit-launcher's ``checkpoint()``: the same overrides and job number, so the same
   sweep subdir), runs ``scontrol requeue`` and exits; submitit counts time-limit requeues
   against ``hydra.launcher.max_num_timeout``. On SIGTERM SLURM is already requeueing (or
   cancelling) the job: it only exits. Outside submitit (a plain ``sbatch``/``srun`` of
   medlm-train) rank 0 runs ``scontrol requeue`` itself.
4. The requeued job (``SLURM_RESTART_COUNT`` > 0) resumes from the newest checkpoint of its run
   dir (medlm.utils.slurm.requeued_checkpoint) into the MLflow run whose id the run dir holds, so
   its step axis continues with no gap and no repeat.

Why not Lightning's SLURM auto-requeue: in a submitit job SLURM sends submitit's SIGUSR2, which
Lightning's SIGUSR1 handler never sees; and that handler saves the checkpoint inside the signal
handler, wherever the step was interrupted, and training goes on until SLURM kills the job, so
the steps after that checkpoint would be logged twice once the job resumes. Lightning's and
submitit's handlers are taken over only while training runs, so that one mechanism acts.

A map-style dataset's loader is not resumable: a job resumed mid-epoch continues the step count
and the epoch's length, but draws that epoch's batches from a fresh loader (Lightning warns).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as L
import torch

from medlm.utils import slurm
from medlm.utils.io import atomic_path
from medlm.utils.tracking import mlflow_loggers

log = logging.getLogger("medlm.requeue")

NONE, REQUEUE, TERMINATE = 0, 1, 2  # what was asked of the job; the larger wins across ranks
REQUEUE_EXIT = 3  # exit status of a process that stopped for a requeue (no result, not a failure)


def _is_submitit_handler(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit.")


class RequeueOnSignal(L.Callback):
    """Checkpoint at the next step boundary when SLURM signals the job, then requeue (module doc).

    Does nothing outside a SLURM batch job. ``dirpath`` is where ``requeue.ckpt`` goes: the run's
    checkpoint dir, where the requeued job looks for it.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self._asked = NONE  # set by the signal handler, in this process only
        self._stopping = NONE  # agreed by all ranks once requeue.ckpt is saved
        self._previous: dict[int, Any] = {}
        self._active = False  # in a SLURM batch job, while training runs

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / slurm.REQUEUE_CKPT

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if slurm.in_batch_job():
            log.info(
                "SLURM job %s: rank %d of world size %d (SLURM_NTASKS=%s), restart %d",
                slurm.job_id(),
                trainer.global_rank,
                trainer.world_size,
                os.environ.get("SLURM_NTASKS"),
                slurm.restart_count(),
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not slurm.in_batch_job():
            return
        self._active = True
        # Lightning registered its handlers at the start of fit: they are kept to be put back
        for signum in (*slurm.requeue_signals(), signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        self._record_job(trainer)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info(
            "received %s: checkpoint at the end of this step, then stop",
            signal.Signals(signum).name,
        )
        self._asked = max(self._asked, TERMINATE if signum == signal.SIGTERM else REQUEUE)

    def _record_job(self, trainer: L.Trainer) -> None:
        """The SLURM job on the MLflow run; a resumed run is running again (it was left FAILED)."""
        if not trainer.is_global_zero:
            return
        for lg in mlflow_loggers(trainer.loggers):
            client = lg.experiment
            client.set_tag(lg.run_id, "slurm_job_id", slurm.job_id())
            client.set_tag(lg.run_id, "slurm_restarts", str(slurm.restart_count()))
            client.set_tag(lg.run_id, "slurm_world_size", str(trainer.world_size))
            if slurm.restart_count() > 0:
                client.update_run(lg.run_id, status="RUNNING")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._previous or self._stopping != NONE:
            return
        asked = self._asked
        if trainer.world_size > 1:  # any rank's signal stops every rank at this same step
            flag = torch.tensor(asked, device=pl_module.device)
            asked = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if asked == NONE:
            return
        # Lightning resumes a checkpoint saved here after this step (RESTARTED_ON_TRAIN_BATCH_END)
        if trainer.is_global_zero:
            with atomic_path(self.ckpt_path) as tmp:
                trainer.save_checkpoint(tmp)
        else:
            trainer.save_checkpoint(self.ckpt_path)  # collective; only rank 0 writes
        log.info("saved %s at step %d", self.ckpt_path, trainer.global_step)
        self._stopping = asked

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._stopping != NONE:
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        requeue_signal = slurm.requeue_signal()
        handler: Callable | Any = self._previous.get(requeue_signal)
        self._restore_handlers()
        if self._stopping == REQUEUE and trainer.is_global_zero:
            if _is_submitit_handler(handler):
                # re-pickles the job, requeues it and exits; raises when it will not requeue
                handler(requeue_signal, None)
            else:
                slurm.requeue(slurm.job_id())
        log.info("stopping for the requeue; the job resumes from %s", self.ckpt_path)
        sys.exit(REQUEUE_EXIT)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        # training is done (also when it ended before a signalled job had to stop): last.ckpt
        # holds its end, and a requeue.ckpt would only be resumed from by mistake
        if self._active and trainer.is_global_zero:
            self.ckpt_path.unlink(missing_ok=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._previous = {}
