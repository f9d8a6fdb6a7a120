"""Run ``medlm.train.train`` straight through, and stopped mid-epoch then resumed, to compare."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch

from medlm.training import train
from tests.helpers import compose_train, mlflow_runs


class Interrupted(RuntimeError):
    """What :class:`StopAtStep` raises: the job dies here."""


class StopAtStep(L.Callback):
    """Kill the run (an exception out of ``trainer.fit``) before optimizer step ``step + 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise Interrupted(f"stopped at step {trainer.global_step}")


def stop_at(step: int) -> list[str]:
    return [
        "+callbacks.stop._target_=tests.resume_helpers.StopAtStep",
        f"+callbacks.stop.step={step}",
    ]


def straight_and_resumed(
    tmp_path: Path, overrides: list[str], stop: int, cache_dir: Path | None = None
) -> tuple[dict, dict, Path, Path]:
    """Train once straight through (``a``); once stopped before step ``stop + 1`` and resumed with
    ``ckpt_path=auto`` in the same output dir (``b``). Returns both MLflow runs and output dirs."""
    out_a, out_b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    train(compose_train(tmp_path / "a", overrides, output_dir=out_a, cache_dir=cache_dir))
    try:
        train(
            compose_train(
                tmp_path / "b", overrides + stop_at(stop), output_dir=out_b, cache_dir=cache_dir
            )
        )
    except Interrupted:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    train(
        compose_train(
            tmp_path / "b", overrides + ["ckpt_path=auto"], output_dir=out_b, cache_dir=cache_dir
        )
    )
    [run_a] = mlflow_runs(tmp_path / "a")
    [run_b] = mlflow_runs(tmp_path / "b")
    return run_a, run_b, out_a, out_b


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_run(run_a: dict, run_b: dict, out_a: Path, out_b: Path, steps: int) -> None:
    """Bitwise-equal final weights; per step the same loss, learning rate and tokens seen; every
    metric's step axis in the resumed MLflow run as in the straight one: no gap, no repeat."""
    wa, wb = final_weights(out_a), final_weights(out_b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs after resuming"
    for key in ("train/loss", "train/lr", "train/tokens_seen"):
        assert [s for s, _ in run_a["metrics"][key]] == list(range(steps)), key
        assert run_b["metrics"][key] == run_a["metrics"][key], key
    assert run_b["metrics"].keys() == run_a["metrics"].keys()
    for key, points in run_b["metrics"].items():
        steps_b = [s for s, _ in points]
        assert steps_b == [s for s, _ in run_a["metrics"][key]], f"{key}: step axis {steps_b}"
    for key in ("val/loss", "train/loss_epoch"):
        assert run_b["metrics"][key] == run_a["metrics"][key], key
