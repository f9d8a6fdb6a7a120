"""HellaSwag while pre-training, beside the validation loss, as build-nanogpt evaluates it.

At the end of every validation of a fit (in gpt2_fineweb every 250 optimizer steps, set by
``callbacks.global_batch.val_every_n_steps``), the network being trained is scored with
:func:`medlm.eval.hellaswag.score_hellaswag`, the scorer of ``medlm-eval benchmark=hellaswag``:
each DDP rank scores every ``world_size``-th item, the counts are summed over the ranks, and
``hellaswag/acc``, ``hellaswag/acc_norm`` and ``hellaswag/acc_norm_bytes`` are logged with the
validation metrics (same step as ``val/loss``; rank 0's loggers write them, and
``trainer.callback_metrics`` holds them, so a checkpoint may monitor ``hellaswag/acc_norm``).

Scoring runs in eval mode without gradients, under the trainer's precision (bf16 autocast with
``bf16-mixed``), and puts the network back in training mode. The tokenizer is the datamodule's.
The items are read once, when the fit starts: a missing or malformed file, or a network whose
vocabulary does not fit the tokenizer, is one error before the first training step.

The items: ``path`` (the authors' ``hellaswag_val.jsonl``, an export of the Hub's split, or a folder
holding one), else ``$MEDLM_DATA_DIR/hellaswag/``, else the Hub's ``Rowan/hellaswag`` validation
split; ``limit`` scores only the first N of its 10,042 items.
"""

from __future__ import annotations

import os

import lightning.pytorch as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, MedlmError
from medlm.eval.hellaswag import (
    HUB_ID,
    HellaSwagCounts,
    HellaSwagItem,
    load_hellaswag,
    score_hellaswag,
)
from medlm.eval.likelihood import check_vocab
from medlm.utils.checks import check_positive_int

KEY = "callbacks.hellaswag"
METRICS = ("acc", "acc_norm", "acc_norm_bytes")


class HellaSwagEval(L.Callback):
    """Scores HellaSwag at every validation of a fit and logs ``hellaswag/<metric>``."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        limit: int | None = None,
        batch_size: int = 16,
        hub_id: str = HUB_ID,
    ) -> None:
        if limit is not None:
            check_positive_int(limit, f"{KEY}.limit")
        check_positive_int(batch_size, f"{KEY}.batch_size")
        self.path, self.limit, self.batch_size, self.hub_id = path, limit, batch_size, hub_id
        self.items: list[HellaSwagItem] | None = None
        # (global step, metrics with n) of every evaluation, and this rank's last counts
        self.history: list[tuple[int, dict[str, float]]] = []
        self.local_counts: HellaSwagCounts | None = None

    @staticmethod
    def tokenizer(trainer: L.Trainer) -> Tokenizer:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if not isinstance(tokenizer, Tokenizer):
            raise ConfigError(
                f"{KEY}: the datamodule ({type(trainer.datamodule).__name__}) carries no "
                "tokenizer to score HellaSwag with"
            )
        return tokenizer

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.items is not None:
            return
        check_vocab(pl_module.net, self.tokenizer(trainer), KEY)
        try:
            self.items = load_hellaswag(self.path, self.limit, self.hub_id)
        except MedlmError as err:  # the data sources name their setting data.path; here it is
            raise type(err)(str(err).replace("data.path", f"{KEY}.path")) from err

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = self.evaluate(trainer, pl_module)
        for name in METRICS:
            pl_module.log(f"hellaswag/{name}", metrics[name], prog_bar=name == "acc_norm")
        self.history.append((trainer.global_step, metrics))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """This rank's share of the items, then the counts summed over every rank."""
        net = pl_module.net
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.val_step_context():
                self.local_counts = score_hellaswag(
                    net,
                    self.tokenizer(trainer),
                    self.items,
                    self.batch_size,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                    device=pl_module.device,
                )
        finally:
            net.train(was_training)
        return self.local_counts.all_reduce().metrics()
