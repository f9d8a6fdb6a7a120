"""RequeueOnSignal in one process, no SLURM needed: a signalled fit checkpoints at the step
boundary, asks for a requeue and stops; the resumed fit logs the steps an uninterrupted fit logs,
each once.
(test_slurm.py does the same with real SLURM jobs, submitit and MLflow.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from medlm.callbacks.requeue import REQUEUE_EXIT, RequeueOnSignal
from medlm.utils import slurm


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)
        self.data = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=4)  # 10 steps an epoch

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=20)


class Steps(Logger):
    """Every (step, metric) logged."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, str]] = []

    @property
    def name(self) -> str:
        return "steps"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged += [(step, key) for key in sorted(metrics)]


class SignalAt(L.Callback):
    """Sends this process ``signum`` during training step ``step``, as SLURM would."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def fit(root: Path, logger: Steps, ckpt_path: str | None = None, *callbacks: L.Callback) -> None:
    trainer = L.Trainer(
        default_root_dir=root, max_epochs=2, logger=logger, log_every_n_steps=1,
        callbacks=[*callbacks, RequeueOnSignal(root / "checkpoints")], accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    try:
        trainer.fit(Regression(), ckpt_path=ckpt_path)
    finally:
        logger.logged.append((-1, f"stopped at {trainer.global_step}"))


@pytest.fixture
def batch_job(monkeypatch) -> list[str]:
    """A SLURM batch job's environment (not one Lightning treats as a SLURM cluster: no
    SLURM_NTASKS); the requeues it asks for are recorded."""
    for name in ("SLURM_NTASKS", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_NAME", "medlm-test")
    requeued: list[str] = []
    monkeypatch.setattr(slurm, "requeue", requeued.append)
    return requeued


@pytest.mark.parametrize("signum, requeues", [(signal.SIGUSR1, ["42"]), (signal.SIGTERM, [])],
                         ids=["requeue-signal", "sigterm"])  # fmt: skip
@pytest.mark.parametrize("at_step", [3, 9])  # mid-epoch; the last step before validation
def test_a_signalled_fit_resumes_where_it_stopped(signum, requeues, at_step, batch_job, tmp_path,
                                                  monkeypatch) -> None:  # fmt: skip
    reference = Steps()
    fit(tmp_path / "reference", reference)
    assert reference.logged[-1] == (-1, "stopped at 20")

    root, job = tmp_path / "job", Steps()
    with pytest.raises(SystemExit) as exit_:
        fit(root, job, None, SignalAt(signum, at_step))
    assert exit_.value.code == REQUEUE_EXIT
    # SIGTERM: SLURM is already requeueing (or cancelling) the job; the requeue signal asks for it
    assert batch_job == requeues
    stop = job.logged.pop()
    assert stop == (-1, f"stopped at {at_step + 1}")  # the signalled step was completed, no more
    assert signal.getsignal(signum) is not None and not isinstance(
        getattr(signal.getsignal(signum), "__self__", None), RequeueOnSignal
    )  # its handlers are given back

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    ckpt = slurm.requeued_checkpoint(root)
    assert ckpt == str(root / "checkpoints" / slurm.REQUEUE_CKPT)
    fit(root, job, ckpt)
    assert job.logged == reference.logged  # the same steps and metrics, none missing, none twice
    assert not Path(ckpt).exists()  # training ended: nothing left to resume from
