"""``medlm-train`` run in-process as a user runs it, and what a failed command must leave behind."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
from hydra.core.global_hydra import GlobalHydra

from medlm.cli.train import main
from medlm.errors import DataError

# a few steps of the quickstart experiment: seconds on a CPU
TINY = [
    "experiment=quickstart",
    "data.batch_size=2",
    "data.block_size=32",
    "model.config.block_size=32",
    "trainer.enable_progress_bar=false",
    "callbacks.samples=null",
    "callbacks.loss_plot=null",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
]


def run_train(
    argv: list[str],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    """``medlm-train ARGV`` with ``root`` as the project (MEDLM_HOME), started from ``cwd`` (the
    project by default): exit status, stdout, stderr."""
    monkeypatch.chdir(cwd or root)
    monkeypatch.setenv("MEDLM_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sys, "argv", ["medlm-train", *argv])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def run_folders(root: Path) -> list[Path]:
    """The run (and sweep job) folders under the project's logs/."""
    return [p for p in root.glob("logs/*/*/*") if p.is_dir()]


def no_run_left(root: Path) -> bool:
    """No run folder, and no MLflow store at all (nothing opened it)."""
    return not run_folders(root) and not (root / "mlruns" / "mlflow.db").exists()


class FailAtStep(L.Callback):
    """Raise during fit, as late failures do: a DataError (a user error: a bad record found late,
    a diverging loss) or a RuntimeError (a bug)."""

    def __init__(self, step: int, user_error: bool = True) -> None:
        self.step, self.user_error = step, user_error

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            if self.user_error:
                raise DataError(f"record 17 of the training split is bad (step {self.step})")
            raise RuntimeError(f"a bug at step {self.step}")


def fail_at(step: int, user_error: bool = True) -> list[str]:
    return [
        "+callbacks.fail._target_=tests.cli.train_cli.FailAtStep",
        f"+callbacks.fail.step={step}",
        f"+callbacks.fail.user_error={str(user_error).lower()}",
    ]
