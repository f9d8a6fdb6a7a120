"""A loss-curve PNG (train loss per step, validation loss per epoch) saved and logged at the end of
fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L

from medlm.callbacks.step_loss import step_loss
from medlm.utils.plots import save_figure
from medlm.utils.tracking import log_artifact


class LossPlot(L.Callback):
    def __init__(self, filename: str = "loss_curve.png", title: str = "medlm") -> None:
        self.filename = filename
        self.title = title
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.train.append((trainer.global_step, float(step_loss(loss, trainer, pl_module))))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        val = trainer.callback_metrics.get("val/loss")
        if val is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(val)))

    def state_dict(self) -> dict[str, Any]:  # a resumed run draws the whole curve
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train, self.val = list(state_dict["train"]), list(state_dict["val"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.train:
            return
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        steps, losses = zip(*self.train)
        ax.plot(steps, losses, lw=0.8, alpha=0.6, label="train (per step)")
        if self.val:
            vsteps, vlosses = zip(*self.val)
            ax.plot(vsteps, vlosses, "o-", label="validation (per epoch)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(f"{self.title}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = save_figure(fig, Path(trainer.default_root_dir) / "plots" / self.filename)
        log_artifact(trainer.loggers, path, "plots")
