"""A global batch fixed in tokens, whatever the number of GPUs: gradient accumulation derived from
the world size, and validation counted in optimizer steps.

build-nanogpt trains on 524,288 tokens per optimizer step: micro-batches of 64 x 1024 tokens on
each GPU, accumulated ``524288 / (64 * 1024 * world_size)`` times. ``tokens_per_step`` does the
same here: when the trainer has set up the processes (``setup``, before the optimizer and the
learning-rate schedule exist), this callback sets

    trainer.accumulate_grad_batches = tokens_per_step / (data.batch_size x data.block_size x
                                                         world_size)

so one process accumulates 8 micro-batches, 8 GPUs one each, and every optimizer step sees the
same number of tokens. A global batch the micro-batches cannot fill exactly is a ConfigError.

Lightning counts ``val_check_interval`` in micro-batches; ``val_every_n_steps`` counts optimizer
steps and sets ``val_check_interval`` to ``val_every_n_steps x accumulate_grad_batches``, counted
across epochs (it needs ``trainer.check_val_every_n_epoch=null``). As build-nanogpt's
``step % 250 == 0 or last_step``, the last step (``trainer.max_steps``) validates too: the callback
asks the trainer to stop after it, and Lightning validates before it stops (when
``trainer.min_epochs`` allows a stop, e.g. null). The HellaSwag callback and the checkpoint callback
act at each validation, so they follow this schedule. Under ``fast_dev_run`` Lightning's own
schedule stays. (Lightning's GradientAccumulationScheduler sets ``accumulate_grad_batches`` the same
way.)
"""

from __future__ import annotations

import logging

import lightning.pytorch as L

from medlm.errors import ConfigError
from medlm.utils.checks import check_positive_int, is_int
from medlm.utils.tracking import mlflow_loggers

log = logging.getLogger(__name__)
KEY = "callbacks.global_batch"


def derive_accumulation(
    tokens_per_step: int, batch_size: int, block_size: int, world_size: int
) -> int:
    """Micro-batches each rank accumulates per optimizer step, so that ``world_size`` ranks of
    ``batch_size x block_size`` tokens make ``tokens_per_step``."""
    per_pass = batch_size * block_size * world_size
    if tokens_per_step % per_pass:
        raise ConfigError(
            f"{KEY}.tokens_per_step={tokens_per_step:,} is not a whole number of micro-batches of "
            f"data.batch_size={batch_size} x data.block_size={block_size} x {world_size} "
            f"process(es) = {per_pass:,} tokens; change the batch size, the block size or the "
            "global batch"
        )
    return tokens_per_step // per_pass


class GlobalBatch(L.Callback):
    """Sets ``accumulate_grad_batches`` from ``tokens_per_step`` and ``val_check_interval`` from
    ``val_every_n_steps`` (module doc); either may be null."""

    def __init__(
        self, tokens_per_step: int | None = None, val_every_n_steps: int | None = None
    ) -> None:
        if tokens_per_step is not None:
            check_positive_int(tokens_per_step, f"{KEY}.tokens_per_step")
        if val_every_n_steps is not None:
            check_positive_int(val_every_n_steps, f"{KEY}.val_every_n_steps")
        self.tokens_per_step = tokens_per_step
        self.val_every_n_steps = val_every_n_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        accumulate = trainer.accumulate_grad_batches
        if self.tokens_per_step is not None:
            dm = trainer.datamodule
            batch_size, block_size = (getattr(dm, k, None) for k in ("batch_size", "block_size"))
            if not (is_int(batch_size) and is_int(block_size)):
                raise ConfigError(
                    f"{KEY}.tokens_per_step needs a datamodule with a batch_size and a block_size "
                    f"(windows of a fixed length); {type(dm).__name__} has not both"
                )
            derived = derive_accumulation(
                self.tokens_per_step, batch_size, block_size, trainer.world_size
            )
            if accumulate not in (1, derived):
                raise ConfigError(
                    f"trainer.accumulate_grad_batches={accumulate} and {KEY}.tokens_per_step "
                    f"(which gives {derived} on {trainer.world_size} process(es)) both set the "
                    "accumulation: set trainer.accumulate_grad_batches=1 or "
                    f"{KEY}.tokens_per_step=null"
                )
            accumulate = trainer.accumulate_grad_batches = derived
            if trainer.is_global_zero:
                log.info(
                    "global batch %s tokens: %d x %d tokens x %d process(es) x %d accumulated",
                    f"{self.tokens_per_step:,}",
                    batch_size,
                    block_size,
                    trainer.world_size,
                    derived,
                )
                # the config's param says 1; a tag (not a param: a resume on another number of
                # GPUs changes it) records the accumulation this run used
                for lg in mlflow_loggers(trainer.loggers):
                    lg.experiment.set_tag(lg.run_id, "accumulate_grad_batches", str(derived))
        if self.val_every_n_steps is not None and not trainer.fast_dev_run:
            if trainer.check_val_every_n_epoch is not None:
                raise ConfigError(
                    f"{KEY}.val_every_n_steps counts optimizer steps across epochs: set "
                    "trainer.check_val_every_n_epoch=null"
                )
            trainer.val_check_interval = self.val_every_n_steps * accumulate

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        """After the optimizer step that reaches max_steps: stop, so that Lightning validates."""
        if (
            self.val_every_n_steps is not None
            and not trainer.fast_dev_run
            and trainer.max_steps > 0
            and trainer.global_step >= trainer.max_steps
        ):
            trainer.should_stop = True
