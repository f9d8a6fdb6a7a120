"""Sequence classification: cross-entropy, accuracy/F1/precision/recall and a confusion matrix per epoch.

The network (a :class:`~medlm.models.classifier.SequenceClassifier`, with LoRA or a frozen
backbone or neither), a partial optimizer and a partial scheduler come from Hydra, as for
:class:`~medlm.modules.causal_lm.CausalLM`, whose optimisation this module shares: AdamW decay
groups over the parameters that train, fused on CUDA, a per-step schedule. Checkpoints carry the
network's description (``medlm.models.checkpoint.NETWORK_KEY``), so that ``load_network`` rebuilds
it from the file alone (a weights-only load, no pickled code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import lightning.pytorch as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.optim import Optimizer  # noqa: E402
from torchmetrics import MeanMetric, MetricCollection  # noqa: E402
from torchmetrics.classification import (BinaryAccuracy, BinaryF1Score, BinaryPrecision,  # noqa: E402
                                         BinaryRecall, ConfusionMatrix, MulticlassAccuracy, MulticlassF1Score,
                                         MulticlassPrecision, MulticlassRecall)

from medlm.errors import ConfigError  # noqa: E402
from medlm.models.checkpoint import NETWORK_KEY, network_spec  # noqa: E402
from medlm.models.classifier import SequenceClassifier  # noqa: E402
from medlm.models.lora import trainable_parameter_summary  # noqa: E402
from medlm.modules.causal_lm import CausalLM  # noqa: E402
from medlm.utils.io import atomic_path, atomic_write  # noqa: E402
from medlm.utils.tracking import log_artifact  # noqa: E402

STAGES = ("val", "test")


def classification_metrics(num_labels: int) -> MetricCollection:
    """Accuracy, F1, precision and recall of predicted labels: binary (label 1 positive) for two
    labels, else accuracy over all examples and the other three macro-averaged over labels."""
    if num_labels == 2:
        return MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "precision": BinaryPrecision(),
                                 "recall": BinaryRecall()})
    macro = {"num_classes": num_labels, "average": "macro"}
    return MetricCollection({"acc": MulticlassAccuracy(num_labels, average="micro"), "f1": MulticlassF1Score(**macro),
                             "precision": MulticlassPrecision(**macro), "recall": MulticlassRecall(**macro)})


class SequenceClassification(L.LightningModule):
    def __init__(self, net: SequenceClassifier, optimizer: Callable[..., Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, label_names: Sequence[str] | None = None) -> None:
        """``optimizer`` may be None where the module only scores (medlm-eval)."""
        super().__init__()
        # the partials are rebuilt from the config, never pickled into checkpoints
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        num_labels = getattr(net, "num_labels", None)
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ConfigError(f"model: {type(net).__name__} is not a sequence classifier with 2 or more "
                              f"labels (num_labels={num_labels!r})")
        if label_names is not None and len(label_names) != num_labels:
            raise ConfigError(f"module.label_names: {len(label_names)} names for {num_labels} labels")
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_names = [str(n) for n in label_names] if label_names else [str(i) for i in range(num_labels)]
        self.train_acc = classification_metrics(num_labels)["acc"]
        self.losses = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self.metrics = nn.ModuleDict({s: classification_metrics(num_labels).clone(prefix=f"{s}/") for s in STAGES})
        task = "binary" if num_labels == 2 else "multiclass"
        self.confusion = nn.ModuleDict({s: ConfusionMatrix(task=task, num_classes=num_labels) for s in STAGES})

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
        """Add a batch to the stage's loss, metrics and confusion matrix (also used by medlm-eval)."""
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
        """``{"<stage>/loss": ..., "<stage>/acc": ..., ...}`` and the confusion matrix (true x predicted)
        of everything since the last call; resets them for the next epoch."""
        results = {f"{stage}/loss": self.losses[stage].compute(), **self.metrics[stage].compute()}
        matrix = self.confusion[stage].compute()
        for metric in (self.losses[stage], self.metrics[stage], self.confusion[stage]):
            metric.reset()
        return results, matrix

    def _eval_epoch_end(self, stage: str) -> None:
        """Log the stage's loss and metrics, save and log its confusion matrix."""
        if not self.losses[stage].update_called:
            return
        results, matrix = self.compute_stage(stage)
        self.log_dict(results, prog_bar=stage == "val")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            when = f"step{self.global_step:06d}" if stage == "test" else \
                f"epoch{self.current_epoch:03d}_step{self.global_step:06d}"
            name, title = f"{stage}_{when}", f"{stage}, {when.replace('_', ', ')}"
            stem = Path(self.trainer.default_root_dir) / "confusion" / name
            for path in write_confusion_matrix(matrix.cpu(), self.label_names, stem, title):
                log_artifact(self.trainer.loggers, path, "confusion")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_fit_start(self) -> None:
        """Print and log how many parameters train (LoRA adapters and head, or the head alone)."""
        summary = trainable_parameter_summary(self.net)
        self.print(f"{type(self.net).__name__}: {summary}")
        for logger in self.loggers:
            logger.log_hyperparams({"trainable_params": summary.trainable, "total_params": summary.total,
                                    "trainable_percent": round(100 * summary.share, 4)})

    # AdamW decay groups over the parameters that train (adapters, head), fused on CUDA, schedule per step
    configure_optimizers = CausalLM.configure_optimizers

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip fused AdamW's gradients under bf16 too, as :class:`CausalLM` does (and why it may)."""
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if not (gradient_clip_val and fused and not str(self.trainer.precision).startswith("16")):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        clip = torch.nn.utils.clip_grad_value_ if gradient_clip_algorithm == "value" else torch.nn.utils.clip_grad_norm_
        clip(self.parameters(), gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NETWORK_KEY] = network_spec(self.net)  # evaluation and export rebuild the net from it


def write_confusion_matrix(matrix: Tensor, label_names: Sequence[str], stem: Path, title: str) -> list[Path]:
    """``stem``.csv (rows: true label, columns: predicted) and ``stem``.png, a heat map with the counts."""
    counts = matrix.long().tolist()
    csv_path, png_path = stem.with_suffix(".csv"), stem.with_suffix(".png")
    with atomic_write(csv_path) as f:
        f.write("true\\predicted," + ",".join(label_names) + "\n")
        for name, row in zip(label_names, counts):
            f.write(name + "," + ",".join(str(c) for c in row) + "\n")
    n = len(label_names)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * n, 1.8 + 0.9 * n))
    top = max(max(r) for r in counts) or 1
    ax.imshow(matrix.float().numpy(), cmap="Blues", vmin=0, vmax=top)
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            ax.text(j, i, str(c), ha="center", va="center", color="white" if c > top / 2 else "black")
    ax.set_xticks(range(n), label_names)
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return [csv_path, png_path]
