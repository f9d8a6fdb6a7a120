"""Resume that says what it does: ``ckpt_path=auto`` resumes (which checkpoint, which step) or
starts fresh, out loud; a mistyped run folder is an error; a finished run is reported finished and
left as it is; the schedule cannot change on resume (refused with one line); a corrupt checkpoint is
one line and does not touch the original run's status."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from medlm.errors import ConfigError
from medlm.resume_plan import plan_resume
from medlm.training import train
from tests.cli.train_cli import TINY, error_lines, no_run_left, run_train
from tests.helpers import compose_train, mlflow_runs

pytestmark = pytest.mark.usefixtures("shared_data_dir")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, token_cache_dir: Path) -> tuple[Path, Path]:
    """A project with one finished run (1 epoch of 3 steps): its root and run folder."""
    root = tmp_path_factory.mktemp("project")
    run = root / "logs" / "quickstart" / "runs" / "r1"
    train(compose_train(root, TINY, output_dir=run, cache_dir=token_cache_dir))
    return root, run


def resume(finished, extra, monkeypatch, capsys, token_cache_dir) -> tuple[int, str, str]:
    root, run = finished
    args = [*TINY, f"hydra.run.dir={run}", "ckpt_path=auto", f"paths.cache_dir={token_cache_dir}"]
    return run_train([*args, *extra], root, monkeypatch, capsys)


def the_run(root: Path) -> dict:
    [run] = mlflow_runs(root)
    return run


def test_a_finished_run_says_so_and_is_left_as_it_is(
    finished, monkeypatch, capsys, token_cache_dir
) -> None:
    root, run = finished
    before = the_run(root)
    assert before["status"] == "FINISHED"
    code, out, err = resume(finished, [], monkeypatch, capsys, token_cache_dir)
    assert code == 0, err
    assert f"{run} is finished: {run}/checkpoints/last.ckpt is at epoch 0, step 3" in out
    assert "nothing to train" in out and f"MLflow run {before['run_id']}, left as it is" in out
    assert "run FINISHED   best val/loss = " in out and before["run_id"] in out
    after = the_run(root)
    assert after["status"] == "FINISHED" and after["metrics"] == before["metrics"]


def test_a_longer_schedule_on_resume_is_refused(
    finished, monkeypatch, capsys, token_cache_dir
) -> None:
    root, run = finished
    code, out, err = resume(
        finished, ["trainer.max_epochs=2"], monkeypatch, capsys, token_cache_dir
    )
    assert code == 2, err
    [line] = error_lines(err)
    assert f"trainer.max_epochs: 2, but the run in {run} was started with 1" in line
    assert "resume with trainer.max_epochs=1, or start a new run" in line
    assert the_run(root)["status"] == "FINISHED"


def test_a_truncated_checkpoint_is_one_line_and_leaves_the_run_alone(
    finished, monkeypatch, capsys, token_cache_dir, tmp_path: Path
) -> None:
    root, run = finished
    last = run / "checkpoints" / "last.ckpt"
    shutil.copy(last, tmp_path / "last.ckpt")
    last.write_bytes(last.read_bytes()[:5000])
    try:
        code, out, err = resume(finished, [], monkeypatch, capsys, token_cache_dir)
    finally:
        shutil.copy(tmp_path / "last.ckpt", last)
    assert code == 2, err
    [line] = error_lines(err)
    assert line == (
        f"error: cannot resume: {last}: cannot be read as a weights-only checkpoint: "
        "truncated, or not a torch file"
    )
    assert "Traceback" not in err
    run_record = the_run(root)  # still the one run, still FINISHED, no error recorded in it
    assert run_record["status"] == "FINISHED" and "error" not in run_record["tags"]


def test_a_mistyped_run_folder_is_an_error(tmp_path: Path, monkeypatch, capsys) -> None:
    typo = tmp_path / "logs" / "quickstart" / "runs" / "2026-01-01_00-00-0"
    code, out, err = run_train(
        [*TINY, f"hydra.run.dir={typo}", "ckpt_path=auto"], tmp_path, monkeypatch, capsys
    )
    assert code == 2, err
    [line] = error_lines(err)
    assert f"ckpt_path=auto: there is no run to resume in {typo}" in line
    assert "hydra.run.dir mistyped" in line
    assert not typo.exists() and no_run_left(tmp_path)


def test_auto_in_a_run_folder_without_checkpoints_starts_fresh_and_says_so(
    tmp_path: Path, caplog
) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    cfg = compose_train(tmp_path, [*TINY, "ckpt_path=auto"], output_dir=run)
    with pytest.raises(ConfigError, match="no run to resume"):  # Hydra's files only: no run
        plan_resume(cfg, run)
    (run / "config.yaml").write_text("{}")  # a run that stopped before its first checkpoint
    with caplog.at_level(logging.INFO, logger="medlm.resume"):
        plan = plan_resume(cfg, run)
    assert plan.ckpt_path is None and not plan.finished
    assert f"no checkpoint in {run}/checkpoints yet: starting fresh" in caplog.text
