"""The loss curve plots each micro-batch's own loss, also under gradient accumulation (where
Lightning hands callbacks the loss divided by the accumulation count)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medlm.callbacks.loss_plot import LossPlot


class FixedLoss(L.LightningModule):
    """The loss of a batch is its one value x exactly (the weight gets a zero gradient)."""

    def __init__(self, xs: list[float]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.xs = xs

    def training_step(self, batch, batch_idx):
        return batch[0].sum() + 0.0 * self.w.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.tensor(self.xs)), batch_size=1)


@pytest.mark.parametrize("accumulate", [1, 4])
def test_plots_the_micro_batch_losses_under_accumulation(tmp_path: Path, accumulate: int) -> None:
    xs = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    plot = LossPlot()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        callbacks=[plot],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(FixedLoss(xs))
    assert [v for _, v in plot.train] == pytest.approx(xs)
    # each micro-batch at the optimizer step it belongs to
    assert [s for s, _ in plot.train] == [(i + 1) // accumulate for i in range(8)]
    assert (tmp_path / "plots" / "loss_curve.png").stat().st_size > 0
