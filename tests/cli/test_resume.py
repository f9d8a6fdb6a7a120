"""Exact resume: a run killed mid-epoch and resumed with ``ckpt_path=auto`` ends bitwise where an
uninterrupted run ends, with the same learning rate at every step and one gap-free MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.resume_helpers import assert_same_run, straight_and_resumed

# 2 epochs of 6 steps; a checkpoint every 4 steps (4, 8, 12) and at each epoch end; killed before
# step 10, so the resumed run starts from step 8: the third batch of the second epoch. Dropout makes
# the result depend on the random state too.
COMMON = [
    "data.batch_size=4",
    "data.block_size=64",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
    "++trainer.limit_train_batches=6",
    "++trainer.limit_val_batches=2",
    "+callbacks.model_checkpoint.every_n_train_steps=4",
    "model.config.resid_dropout=0.1",
    "model.config.block_size=64",
    "callbacks.samples.max_new_tokens=4",
    "callbacks.throughput.log_every_n_steps=2",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


@pytest.mark.usefixtures("shared_data_dir")
def test_pubmedqa_resumes_mid_epoch_exactly(tmp_path: Path, cache_dir: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="medlm.resume"):
        run_a, run_b, out_a, out_b = straight_and_resumed(
            tmp_path, COMMON, stop=10, cache_dir=cache_dir
        )
    assert_same_run(run_a, run_b, out_a, out_b, steps=12)
    # it says what it resumes: the checkpoint, where it stands, the MLflow run it continues
    assert (
        f"resuming from {out_b}/checkpoints/last.ckpt at epoch 1, step 8, "
        f"into MLflow run {run_b['run_id']}" in caplog.text
    )


@pytest.mark.usefixtures("shared_data_dir")
def test_instruction_data_resumes_mid_epoch_exactly(tmp_path: Path, cache_dir: Path) -> None:
    overrides = ["experiment=medquad_alpaca", "test=false", *COMMON]
    run_a, run_b, out_a, out_b = straight_and_resumed(
        tmp_path, overrides, stop=10, cache_dir=cache_dir
    )
    assert_same_run(run_a, run_b, out_a, out_b, steps=12)
