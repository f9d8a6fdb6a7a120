"""A failure after the MLflow run exists (bad data found late, a diverging loss, a bug) leaves the
run FAILED with its reason in it: the tag ``error`` and the artifact ``error.txt`` (also in the run
folder); the command still ends with its one ``error:`` line (a bug: its traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlm.training import train
from tests.cli.train_cli import TINY, error_lines, fail_at, run_train
from tests.helpers import compose_train, mlflow_runs

pytestmark = pytest.mark.usefixtures("shared_data_dir")


def artifact(root: Path, run_id: str, name: str) -> Path:
    [path] = (root / "mlruns" / "artifacts").glob(f"{run_id}/artifacts/{name}")
    return path


def test_a_user_error_during_fit_fails_the_run_with_its_reason(
    tmp_path: Path, monkeypatch, capsys, token_cache_dir: Path
) -> None:
    """What the divergence guard's error does too: a MedlmError raised by a callback mid-fit."""
    run = tmp_path / "run"
    code, out, err = run_train(
        [*TINY, *fail_at(2), f"hydra.run.dir={run}", f"paths.cache_dir={token_cache_dir}"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    message = "record 17 of the training split is bad (step 2)"
    assert code == 2, err
    assert error_lines(err) == [f"error: {message}"] and "Traceback" not in err
    [record] = mlflow_runs(tmp_path)
    assert record["status"] == "FAILED" and record["tags"]["error"] == message
    assert [s for s, _ in record["metrics"]["train/loss"]] == [0, 1]  # what it did before
    assert (run / "error.txt").read_text() == message + "\n"
    assert artifact(tmp_path, record["run_id"], "error.txt").read_text() == message + "\n"
    # the closing summary still says where the run is
    assert f"run FAILED\n  MLflow run  {record['run_id']}" in out and f"run folder  {run}" in out


def test_a_bug_during_fit_fails_the_run_with_its_traceback(
    tmp_path: Path, token_cache_dir: Path
) -> None:
    cfg = compose_train(tmp_path, [*TINY, *fail_at(1, user_error=False)], cache_dir=token_cache_dir)
    with pytest.raises(RuntimeError, match="a bug at step 1"):
        train(cfg)
    [record] = mlflow_runs(tmp_path)
    assert record["status"] == "FAILED"
    assert record["tags"]["error"] == "RuntimeError: a bug at step 1"
    text = artifact(tmp_path, record["run_id"], "error.txt").read_text()
    assert (
        text.startswith("RuntimeError: a bug at step 1\n\nTraceback")
        and "in on_train_batch_start" in text
    )
