"""Sequence classification: cross-entropy, accuracy/F1/precision/recall and a confusion matrix per
epoch.

The network is a :class:`~medlm.models.classifier.SequenceClassifier` (with LoRA, a frozen backbone
or neither); optimisation is :class:`~medlm.modules.optimization.OptimizedModule`'s, over the
parameters that train. Each val/test epoch leaves its confusion matrix in ``confusion_matrices``
for the :class:`~medlm.callbacks.confusion_matrix.ConfusionMatrixPlot` callback to draw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    ConfusionMatrix,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from medlm.errors import ConfigError
from medlm.models.classifier import SequenceClassifier
from medlm.models.lora import trainable_parameter_summary
from medlm.modules.optimization import OptimizedModule

STAGES = ("val", "test")


def classification_metrics(num_labels: int) -> MetricCollection:
    """Accuracy, F1, precision and recall of predicted labels: binary (label 1 positive) for two
    labels, else accuracy over all examples and the other three macro-averaged over labels."""
    if num_labels == 2:
        return MetricCollection(
            {
                "acc": BinaryAccuracy(),
                "f1": BinaryF1Score(),
                "precision": BinaryPrecision(),
                "recall": BinaryRecall(),
            }
        )
    macro = {"num_classes": num_labels, "average": "macro"}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_labels, average="micro"),
            "f1": MulticlassF1Score(**macro),
            "precision": MulticlassPrecision(**macro),
            "recall": MulticlassRecall(**macro),
        }
    )


class SequenceClassification(OptimizedModule):
    def __init__(
        self,
        net: SequenceClassifier,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        """``optimizer`` may be None where the module only scores (medlm-eval)."""
        super().__init__(net, optimizer, scheduler)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        num_labels = getattr(net, "num_labels", None)
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ConfigError(
                f"model: {type(net).__name__} is not a sequence classifier with 2 or more "
                f"labels (num_labels={num_labels!r})"
            )
        if label_names is not None and len(label_names) != num_labels:
            raise ConfigError(
                f"module.label_names: {len(label_names)} names for {num_labels} labels"
            )
        self.label_names = (
            [str(n) for n in label_names] if label_names else [str(i) for i in range(num_labels)]
        )
        self.train_acc = classification_metrics(num_labels)["acc"]
        self.losses = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self.metrics = nn.ModuleDict(
            {s: classification_metrics(num_labels).clone(prefix=f"{s}/") for s in STAGES}
        )
        task = "binary" if num_labels == 2 else "multiclass"
        self.confusion = nn.ModuleDict(
            {s: ConfusionMatrix(task=task, num_classes=num_labels) for s in STAGES}
        )
        # stage -> (true x predicted counts, when: "epoch003_step000456" or "step000456"), for the
        # plot
        self.confusion_matrices: dict[str, tuple[Tensor, str]] = {}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids and mask -> (B, num_labels) logits."""
        return self.net(input_ids, attention_mask)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy of the batch, and the predicted labels (B,)."""
        logits = self(batch["input_ids"], batch.get("attention_mask")).float()  # (B, num_labels)
        return F.cross_entropy(logits, batch["labels"]), logits.argmax(-1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, preds = self.loss(batch)
        self.train_acc.update(preds, batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def evaluate_batch(self, batch: dict[str, Tensor], stage: str) -> None:
        """Add a batch to the stage's loss, metrics and confusion matrix (also used by
        medlm-eval)."""
        loss, preds = self.loss(batch)
        labels = batch["labels"]
        self.losses[stage].update(loss, labels.numel())
        self.metrics[stage].update(preds, labels)
        self.confusion[stage].update(preds, labels)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def compute_stage(self, stage: str) -> tuple[dict[str, Tensor], Tensor]:
        """``{"<stage>/loss": ..., "<stage>/acc": ..., ...}`` and the confusion matrix (true x
        predicted)
        of everything since the last call; resets them for the next epoch."""
        results = {f"{stage}/loss": self.losses[stage].compute(), **self.metrics[stage].compute()}
        matrix = self.confusion[stage].compute()
        for metric in (self.losses[stage], self.metrics[stage], self.confusion[stage]):
            metric.reset()
        return results, matrix

    def _eval_epoch_end(self, stage: str) -> None:
        """Log the stage's loss and metrics; keep its confusion matrix for the plot callback."""
        if not self.losses[stage].update_called:
            return
        results, matrix = self.compute_stage(stage)
        self.log_dict(results, prog_bar=stage == "val")
        when = (
            f"step{self.global_step:06d}"
            if stage == "test"
            else f"epoch{self.current_epoch:03d}_step{self.global_step:06d}"
        )
        self.confusion_matrices[stage] = (matrix.cpu(), when)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_fit_start(self) -> None:
        """Print and log how many parameters train (LoRA adapters and head, or the head alone)."""
        summary = trainable_parameter_summary(self.net)
        self.print(f"{type(self.net).__name__}: {summary}")
        for logger in self.loggers:
            logger.log_hyperparams(
                {
                    "trainable_params": summary.trainable,
                    "total_params": summary.total,
                    "trainable_percent": round(100 * summary.share, 4),
                }
            )
