"""GlobalBatch: the gradient accumulation that keeps a global batch of tokens on any world size,
validation counted in optimizer steps and after the last one, and the settings it refuses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest

from medlm.callbacks.global_batch import GlobalBatch, derive_accumulation
from medlm.data.shard_datamodule import ShardDataModule
from medlm.errors import ConfigError
from tests.callbacks.test_hellaswag import Recorded, tiny_module


@pytest.mark.parametrize("world_size, accumulate", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_build_nanogpt_batch_on_any_number_of_gpus(world_size: int, accumulate: int) -> None:
    assert derive_accumulation(524288, 64, 1024, world_size) == accumulate


@pytest.mark.parametrize("world_size", [3, 16])
def test_a_global_batch_the_micro_batches_cannot_fill(world_size: int) -> None:
    with pytest.raises(ConfigError, match=r"callbacks.global_batch.tokens_per_step=524,288 is not"):
        derive_accumulation(524288, 64, 1024, world_size)


def fake_trainer(world_size: int, **kw) -> SimpleNamespace:
    values = {
        "datamodule": SimpleNamespace(batch_size=64, block_size=1024),
        "world_size": world_size,
        "is_global_zero": True,
        "accumulate_grad_batches": 1,
        "loggers": [],
        "fast_dev_run": False,
        "check_val_every_n_epoch": None,
        "val_check_interval": 1.0,
    }
    return SimpleNamespace(**{**values, **kw})


@pytest.mark.parametrize("world_size, accumulate", [(1, 8), (8, 1), (32, None)])
def test_setup_sets_accumulation_and_validation_interval_from_the_world_size(
    world_size: int, accumulate: int | None
) -> None:
    callback = GlobalBatch(tokens_per_step=524288, val_every_n_steps=250)
    trainer = fake_trainer(world_size)
    if accumulate is None:  # 32 x 64 x 1024 tokens is twice the global batch
        with pytest.raises(ConfigError, match="32 process"):
            callback.setup(trainer, None, "fit")
        return
    callback.setup(trainer, None, "fit")
    assert trainer.accumulate_grad_batches == accumulate
    assert trainer.val_check_interval == 250 * accumulate  # micro-batches per rank


def test_settings_it_refuses() -> None:
    callback = GlobalBatch(tokens_per_step=524288, val_every_n_steps=250)
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=4 and callbacks.global"):
        callback.setup(fake_trainer(1, accumulate_grad_batches=4), None, "fit")
    with pytest.raises(ConfigError, match="set trainer.check_val_every_n_epoch=null"):
        callback.setup(fake_trainer(1, check_val_every_n_epoch=1), None, "fit")
    no_block = fake_trainer(1, datamodule=SimpleNamespace(batch_size=8))
    with pytest.raises(ConfigError, match="needs a datamodule with a batch_size and a block_size"):
        callback.setup(no_block, None, "fit")
    with pytest.raises(ConfigError, match="callbacks.global_batch.tokens_per_step"):
        GlobalBatch(tokens_per_step=0)
    with pytest.raises(ConfigError, match="callbacks.global_batch.val_every_n_steps"):
        GlobalBatch(val_every_n_steps=1.5)
    fast = fake_trainer(1, fast_dev_run=True)  # Lightning's own schedule stays
    callback.setup(fast, None, "fit")
    assert fast.accumulate_grad_batches == 8 and fast.val_check_interval == 1.0


class Steps(L.Callback):
    def __init__(self) -> None:
        self.batches = 0
        self.validations: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validations.append(trainer.global_step)


def test_a_fit_accumulates_and_validates_every_n_steps_and_after_the_last(
    shard_dir: Path,
) -> None:
    steps, logger = Steps(), Recorded()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=5,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[GlobalBatch(tokens_per_step=3 * 4 * 32, val_every_n_steps=2), steps],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    dm = ShardDataModule(str(shard_dir), block_size=32, batch_size=4, seed=1)
    trainer.fit(tiny_module(), datamodule=dm)
    assert trainer.accumulate_grad_batches == 3 and trainer.val_check_interval == 6
    assert trainer.global_step == 5 and steps.batches == 15
    assert steps.validations == [2, 4, 5]
    assert len(logger.logged["val/loss"]) == 3
