"""The launcher configs' resource counts follow the trainer, and a requeued job finds its
checkpoint: no SLURM needed (the jobs themselves run in test_slurm.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from medlm.utils import slurm
from tests.helpers import compose_train, mlflow_runs

RESOURCES = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task")


def launcher(tmp_path: Path, overrides: list[str]) -> dict:
    cfg = compose_train(tmp_path, ["experiment=quickstart", *overrides])
    return {key: cfg.hydra.launcher.get(key) for key in RESOURCES}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], (1, None, 1, 1)),  # quickstart: trainer=cpu, 1 device
        (["trainer=gpu"], (1, 1, 1, 1)),
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], (1, None, 2, 1)),
        (
            ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "data.num_workers=7"],
            (2, 4, 4, 8),
        ),
        (["trainer=fsdp", "trainer.devices=[0,1]"], (1, 2, 2, 1)),
    ],
)
def test_slurm_resources_follow_the_trainer(overrides, expected, tmp_path: Path) -> None:
    got = launcher(tmp_path, ["hydra/launcher=slurm", *overrides])
    assert tuple(got[k] for k in RESOURCES) == expected


def test_every_gpu_of_a_node_needs_a_gpu_count_from_sinfo(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo
    with pytest.raises(SystemExit) as exit_:
        launcher(tmp_path, ["hydra/launcher=slurm", "trainer=ddp"])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("error: trainer.devices: auto needs sinfo") and "trainer.devices=" in line
    )


@pytest.mark.parametrize(
    "sinfo, partition, expected",
    [
        ("gpu* gpu:4\ncpu (null)\n", None, 4),
        ("gpu* gpu:4\nbig gpu:a100:8(S:0-1)\n", "big", 8),
        ("gpu* gpu:4\nbig gpu:a100:8(S:0-1)\nbig gpu:a100:4\n", "big", None),  # nodes differ
        ("cpu* (null)\n", None, None),
        ("debug* (null)\n", "other", None),
    ],
)
def test_gpus_per_node_from_sinfo(sinfo, partition, expected) -> None:
    assert slurm.parse_gpus_per_node(sinfo, partition) == expected


def test_the_local_launcher_shows_no_gpu_to_a_cpu_run(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=quickstart", "hydra/launcher=local"])
    assert cfg.hydra.launcher.gpus_per_node == 0 and cfg.hydra.launcher.tasks_per_node == 1


def test_a_requeued_job_resumes_from_its_newest_checkpoint(tmp_path, monkeypatch) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_text("epoch end")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NAME", "quickstart")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert slurm.requeued_checkpoint(tmp_path) is None  # its first run starts afresh
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm.requeued_checkpoint(tmp_path) == str(ckpts / "last.ckpt")
    (ckpts / "requeue.ckpt").write_text("signalled")
    os.utime(ckpts / "last.ckpt", (time.time() - 60,) * 2)
    assert slurm.requeued_checkpoint(tmp_path) == str(ckpts / "requeue.ckpt")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an salloc shell is not a batch job
    assert slurm.requeued_checkpoint(tmp_path) is None


def test_an_array_task_is_requeued_by_its_array_id(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "11")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert slurm.job_id() == "11_1"


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data_dir")
def test_the_local_launcher_runs_a_sweep_as_submitit_jobs(tmp_path: Path) -> None:
    """Both jobs start at once, on a new MLflow store: they open it one at a time."""
    from tests.slurm.test_slurm import TINY, TRAIN_BIN

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MEDLM_HOME"] = str(tmp_path)
    cmd = [str(TRAIN_BIN), "-m", "hydra/launcher=local", *TINY, "optim.lr=1e-4,3e-4"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    assert sorted(r["params"]["optim.lr"] for r in runs) == ["0.0001", "0.0003"]
    assert all([step for step, _ in r["metrics"]["train/loss"]] == [0, 1, 2] for r in runs)
    [sweep_dir] = {r["tags"]["sweep_dir"] for r in runs}
    assert len(list((Path(sweep_dir) / ".submitit").glob("*/*_result.pkl"))) == 2
