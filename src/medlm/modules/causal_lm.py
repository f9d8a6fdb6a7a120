"""Causal language modelling: next-token loss and perplexity.

This module owns only the loss and the metrics (optimisation is :class:`OptimizedModule`'s), so
every
medlm causal LM (GPT-2, Llama; pretraining, fine-tuning, instruction tuning) trains through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from medlm.models.kv_cache import document_causal_mask, document_positions, output_layer
from medlm.modules.chunked_loss import linear_cross_entropy
from medlm.modules.compile import compile_network
from medlm.modules.metric_state import metric_sums, restore_metric_sums
from medlm.modules.optimization import OptimizedModule
from medlm.utils.checks import check_bool

IGNORE_INDEX = -100


class CausalLM(OptimizedModule):
    """``chunked_loss``: the output layer and the cross-entropy run on chunks of tokens, so that
    the (B, T, vocab) logits are never held at once (:mod:`medlm.modules.chunked_loss`; the same
    loss and gradients), for any network with ``hidden_states`` and a plain linear output layer.
    ``compile``: the network's blocks go through ``torch.compile`` (:mod:`medlm.modules.compile`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., Any] | None = None,
        chunked_loss: bool = True,
        compile: bool = False,
    ) -> None:
        check_bool(chunked_loss, "module.chunked_loss")
        check_bool(compile, "module.compile")
        super().__init__(net, optimizer, scheduler)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.tokens_seen = 0
        head = output_layer(net)  # looked up again at each step: an attribute would join the state
        self.chunked_loss = chunked_loss and isinstance(head, nn.Linear) and head.bias is None
        if compile:
            compile_network(net)

    def _attention(self, doc_ids: Tensor | None) -> dict[str, Tensor]:
        """Packed examples (``doc_ids``) attend only within themselves, from position 0."""
        if doc_ids is None:
            return {}
        return {"pos": document_positions(doc_ids), "mask": document_causal_mask(doc_ids)}

    def forward(self, input_ids: Tensor, doc_ids: Tensor | None = None) -> Tensor:
        """Logits (B, T, vocab); packed examples (``doc_ids``) attend only within themselves."""
        return self.net(input_ids, **self._attention(doc_ids))

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean next-token cross-entropy over the labelled tokens, and how many there were."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        if self.chunked_loss:
            h = self.net.hidden_states(input_ids, **self._attention(batch.get("doc_ids")))
            weight = output_layer(self.net).weight
            total = linear_cross_entropy(h.flatten(0, 1), weight, labels.flatten(), IGNORE_INDEX)
        else:
            logits = self(input_ids, batch.get("doc_ids"))
            total = F.cross_entropy(
                logits.flatten(0, 1).float(),
                labels.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        n_tokens = (labels != IGNORE_INDEX).sum()
        return total / n_tokens.clamp(min=1), n_tokens

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, n_tokens = self.loss(batch)
        self.train_loss.update(loss.detach(), n_tokens)
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, n_tokens = self.loss(batch)
        self.val_loss.update(loss, n_tokens)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, n_tokens = self.loss(batch)
        self.test_loss.update(loss, n_tokens)

    def _log_epoch(self, metric: MeanMetric, stage: str, loss_name: str) -> None:
        """Token-weighted mean loss of the epoch, and its perplexity."""
        if not metric.update_called:
            return
        loss = metric.compute()
        self.log(f"{stage}/{loss_name}", loss, prog_bar=stage == "val")
        self.log(f"{stage}/ppl", torch.exp(loss.clamp(max=50.0)))
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_loss, "train", "loss_epoch")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_loss, "val", "loss")

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_loss, "test", "loss")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tokens_seen"] = self.tokens_seen
        # the epoch's running train loss (all ranks): a mid-epoch resume logs the same epoch mean
        checkpoint["train_loss_state"] = metric_sums(self.train_loss, self.trainer.strategy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        if "train_loss_state" in checkpoint:
            restore_metric_sums(self.train_loss, checkpoint["train_loss_state"], self.global_rank)
