"""Stop training at the first non-finite loss or gradient norm, with one line that names the step.

A NaN loss otherwise trains on silently: the weights become NaN, every later loss is NaN, the
run ends "successfully" and a checkpoint of NaN weights may be kept. This guard checks each
optimizer step after backward and before the optimizer changes the weights, so the last
checkpoint written stays the last good one (ModelCheckpoint writes nothing on an exception
unless ``save_on_exception`` is set, which medlm's config does not set).

What is checked, and when:
- the loss of every micro-batch (``on_before_backward``, kept on the device: no sync there) and
  the gradient norm, both in ``on_before_optimizer_step``: one host sync per optimizer step;
- the monitored validation metric of every ModelCheckpoint (``on_validation_end``, which runs
  before ModelCheckpoint's, Lightning ordering checkpoint callbacks last), for weights that
  overflowed in the last step before a validation.

Steps are counted from 1: "step 2" is the second optimizer step, the one whose batch gave the
NaN (Lightning's ``global_step`` is 1 after it). With fp16 mixed precision the gradient scaler
skips steps with infinite gradients by design, so only the loss is checked there.
"""

from __future__ import annotations

import math

import lightning.pytorch as L
import torch
from torch import Tensor

from medlm.callbacks.step_loss import step_loss
from medlm.errors import TrainingDiverged


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class DivergenceGuard(L.Callback):
    """Raise :class:`~medlm.errors.TrainingDiverged` at the first non-finite loss or gradient
    norm.

    ``check_grad_norm``: also stop on a non-finite gradient norm with a finite loss (an overflow
    in backward). ``check_val``: also stop on a non-finite monitored validation metric.
    """

    def __init__(self, check_grad_norm: bool = True, check_val: bool = True) -> None:
        self.check_grad_norm, self.check_val = check_grad_norm, check_val
        self._losses: list[Tensor] = []  # this step's micro-batch losses, on the device
        self.last_finite: tuple[int, float] | None = None  # (step, loss) of the last good step

    # -- training --------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        self._losses.append(step_loss(loss.detach().float(), trainer, pl_module))

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step + 1
        losses, self._losses = self._losses, []
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        checked: dict[str, Tensor] = {}
        if losses:
            checked["loss"] = torch.stack(losses).mean()
        if self.check_grad_norm and scaler is None:
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            if grads:
                checked["grad_norm"] = torch.nn.utils.get_total_norm(grads).float()
        if not checked:
            return
        device = next(iter(checked.values())).device
        # the one host sync of the step
        values = dict(zip(checked, torch.stack([v.to(device) for v in checked.values()]).tolist()))
        if "loss" in values and scaler is not None:
            values["loss"] /= scaler.get_scale()  # the loss given to backward was scaled
        finite = all(math.isfinite(v) for v in values.values())
        # every process stops together: a rank that stopped alone would hang the others
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise TrainingDiverged(self._message(step, values, finite))
        if "loss" in values:
            self.last_finite = (step, values["loss"])

    # -- validation ------------------------------------------------------------------------------

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.check_val or trainer.sanity_checking:
            return
        for cb in trainer.checkpoint_callbacks:
            monitor = getattr(cb, "monitor", None)
            value = trainer.callback_metrics.get(monitor) if monitor else None
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDiverged(
                    f"training diverged at step {trainer.global_step}: {monitor} "
                    f"{_fmt(float(value))} at validation{self._last()}"
                )

    # -- checkpoint: a resumed run still names the last finite loss before it -------------------

    def state_dict(self) -> dict:
        return {"last_finite": self.last_finite}

    def load_state_dict(self, state_dict: dict) -> None:
        last = state_dict.get("last_finite")
        self.last_finite = None if last is None else (int(last[0]), float(last[1]))

    # -- helpers ---------------------------------------------------------------------------------

    def _last(self) -> str:
        if self.last_finite is None:
            return " (no finite loss before it)"
        step, loss = self.last_finite
        return f" (last finite loss {_fmt(loss)} at step {step})"

    def _message(self, step: int, values: dict[str, float], finite_here: bool) -> str:
        loss, grad_norm = values.get("loss"), values.get("grad_norm")
        if finite_here:
            what = "a non-finite loss or gradient norm on another process"
        elif loss is not None and not math.isfinite(loss):
            what = f"loss {_fmt(loss)}"
        else:
            loss_text = f" with loss {_fmt(loss)}" if loss is not None else ""
            what = f"gradient norm {_fmt(grad_norm)}{loss_text}"
        return f"training diverged at step {step}: {what}{self._last()}"
