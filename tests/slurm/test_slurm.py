"""medlm-train on a real SLURM through ``hydra/launcher=slurm``, as a user submits from a login
node: a job, a sweep, a 2-task DDP job over gloo, and jobs requeued mid-run that resume into the
same MLflow run. The cluster is scripts/slurm_local.sh's (see conftest.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import SWEEP_TAG, mlflow_runs
from tests.slurm.conftest import JOB_NAME

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.usefixtures("shared_data_dir", "slurm"),
]

TRAIN_BIN = Path(sys.executable).parent / "medlm-train"
# a tiny CPU run: 3 training steps and one validation
TINY = [
    "experiment=quickstart",
    "data.batch_size=4",
    "data.block_size=64",
    "trainer.enable_progress_bar=false",
    "callbacks.samples=null",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
]
SLURM = ["hydra/launcher=slurm", f"hydra.launcher.name={JOB_NAME}", "hydra.launcher.timeout_min=10"]
DDP_CPU = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
]


def launch(root: Path, overrides: list[str]) -> subprocess.Popen:
    """``medlm-train -m hydra/launcher=slurm ...`` from ``root`` as the project (MEDLM_HOME): it
    waits for its jobs to end."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MEDLM_HOME"] = str(root)
    return subprocess.Popen(
        [str(TRAIN_BIN), "-m", *SLURM, *overrides],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the launcher did not finish within {timeout}s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def run_statuses(root: Path) -> list[str]:
    con = sqlite3.connect(root / "mlruns" / "mlflow.db")
    query = (  # the sweep's parent run left out: it is the launching command's, not a job's
        "SELECT status FROM runs WHERE run_uuid NOT IN "
        f"(SELECT run_uuid FROM tags WHERE key='{SWEEP_TAG}') ORDER BY start_time"
    )
    statuses = [status for (status,) in con.execute(query)]
    con.close()
    return statuses


def sacct_states(job: str, timeout: float = 60) -> list[str]:
    """Every state the job went through (-D: requeued runs too), once it has ended: the launcher
    returns when the job's result is written, a moment before SLURM sees the job end."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-D", "-X", "-j", job, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        states = out.split()
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"SLURM job {job} did not end within {timeout}s: {states}")
        time.sleep(0.5)


def submitit_dir(run: dict) -> Path:
    """The job's submitit folder: its sbatch script and one log per task."""
    return Path(run["tags"]["sweep_dir"]) / ".submitit" / run["tags"]["slurm_job_id"]


def steps(run: dict, key: str) -> list[int]:
    return [step for step, _ in run["metrics"].get(key, [])]


def test_a_job_finishes_and_leaves_its_mlflow_run(tmp_path: Path) -> None:
    finish(launch(tmp_path, TINY))
    [run] = mlflow_runs(tmp_path)
    assert run_statuses(tmp_path) == ["FINISHED"]
    job = run["tags"]["slurm_job_id"]
    assert sacct_states(job) == ["COMPLETED"]
    assert steps(run, "train/loss") == [0, 1, 2] and steps(run, "val/loss") == [2]
    script = (submitit_dir(run) / f"{job}_submission.sh").read_text()
    for line in ("--ntasks-per-node=1", "--cpus-per-task=1", "--requeue", f"--job-name={JOB_NAME}"):
        assert f"#SBATCH {line}\n" in script


def test_a_two_job_sweep_leaves_two_runs(tmp_path: Path) -> None:
    finish(launch(tmp_path, [*TINY, "optim.lr=1e-4,3e-4"]))
    runs = mlflow_runs(tmp_path)
    assert run_statuses(tmp_path) == ["FINISHED", "FINISHED"]
    assert sorted(r["params"]["optim.lr"] for r in runs) == ["0.0001", "0.0003"]
    # one job array, one task per sweep job
    jobs = sorted(r["tags"]["slurm_job_id"] for r in runs)
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"]
    assert all(sacct_states(job) == ["COMPLETED"] for job in jobs)


def test_a_two_trial_search_runs_its_trials_as_parallel_jobs_under_one_parent(
    tmp_path: Path,
) -> None:
    """An Optuna search with n_jobs=2: both trials go to SLURM as one job array, at once; each
    finds the sweep's parent run in the sweep folder from its own process."""
    search = [
        "hparams_search=medquad_alpaca_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "data.block_size=64",
        "trainer.enable_progress_bar=false",
        "callbacks.samples=null",
        "test=false",
        "debug=limit",
        "trainer.max_epochs=1",
    ]
    out = finish(launch(tmp_path, search))
    [parent] = [r for r in mlflow_runs(tmp_path, parents=True) if SWEEP_TAG in r["tags"]]
    runs = mlflow_runs(tmp_path)
    assert run_statuses(tmp_path) == ["FINISHED", "FINISHED"]
    assert all(r["tags"]["mlflow.parentRunId"] == parent["run_id"] for r in runs)
    jobs = sorted(r["tags"]["slurm_job_id"] for r in runs)
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"]
    assert parent["params"]["launcher"] == "SlurmLauncher"
    best = min(r["metrics"]["val/loss_best"][-1][1] for r in runs)
    assert parent["metrics"]["val/loss_best"][-1][1] == best
    assert "sweep: 2 trials ended: 2 completed, 0 failed" in out


def test_a_two_task_job_runs_ddp_over_gloo_and_both_ranks_see_the_slurm_world(
    tmp_path: Path,
) -> None:
    finish(launch(tmp_path, [*TINY, *DDP_CPU]))
    [run] = mlflow_runs(tmp_path)  # rank 1 writes no MLflow run of its own
    assert run_statuses(tmp_path) == ["FINISHED"]
    assert run["tags"]["slurm_world_size"] == "2"
    folder, job = submitit_dir(run), run["tags"]["slurm_job_id"]
    assert "#SBATCH --ntasks-per-node=2\n" in (folder / f"{job}_submission.sh").read_text()
    for rank in (0, 1):  # one srun task per rank, each with its own log
        log = (folder / f"{job}_{rank}_log.out").read_text() + (
            folder / f"{job}_{rank}_log.err"
        ).read_text()
        assert f"SLURM job {job}: rank {rank} of world size 2 (SLURM_NTASKS=2)" in log, log[-2000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log  # Lightning's process group
    assert steps(run, "train/loss") == [0, 1, 2]


def wait_for_steps(root: Path, job_num: str, at_least: int, timeout: float = 180) -> str:
    """The SLURM job id of sweep job ``job_num`` once it has logged ``at_least`` training steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for run in mlflow_runs(root):
                if (
                    run["tags"].get("hydra_job_num") == job_num
                    and "slurm_job_id" in run["tags"]
                    and len(steps(run, "train/loss")) >= at_least
                ):
                    return run["tags"]["slurm_job_id"]
        except sqlite3.OperationalError:  # the store does not exist yet, or is being written
            pass
        time.sleep(0.5)
    pytest.fail(f"sweep job {job_num} did not log {at_least} steps within {timeout}s")


def test_jobs_requeued_mid_run_resume_into_the_same_mlflow_run(tmp_path: Path) -> None:
    """A 3-job sweep of 2 epochs x 10 steps. After a few steps job 1 is requeued by ``scontrol
    requeue`` (SIGTERM) and job 2 is sent the requeue signal (``scancel --signal=USR1``, as before a
    time limit); job 0 runs through and is the reference: each requeued run logs the same steps,
    each once."""
    proc = launch(
        tmp_path,
        [
            *TINY,
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=10",
            "optim.lr=1e-3,2e-3,3e-3",
        ],
    )
    how = {"1": ["scontrol", "requeue"], "2": ["scancel", "--signal=USR1"]}
    jobs = {}
    for num, command in how.items():  # job 2 starts once a CPU is free (2 CPUs, 1 per job)
        jobs[num] = wait_for_steps(tmp_path, num, at_least=3)
        subprocess.run([*command, jobs[num]], check=True, timeout=60)
    finish(proc)

    runs = {r["tags"]["hydra_job_num"]: r for r in mlflow_runs(tmp_path)}
    assert sorted(runs) == ["0", "1", "2"] and run_statuses(tmp_path) == ["FINISHED"] * 3
    reference = runs["0"]
    assert reference["tags"]["slurm_restarts"] == "0"
    assert steps(reference, "train/loss") == list(range(20))
    for num, job in jobs.items():
        requeued = runs[num]
        assert requeued["tags"]["slurm_restarts"] == "1", num
        assert "REQUEUED" in sacct_states(job) and sacct_states(job)[-1] == "COMPLETED", num
        # no gap and no repeat: every metric at the steps of the run that was not interrupted
        # (the throughput's 10-step window restarts with the process, so its steps differ)
        for key in reference["metrics"].keys() | requeued["metrics"].keys():
            if key != "train/tokens_per_sec":
                assert steps(requeued, key) == steps(reference, key), (num, key)
        # resumed from the checkpoint saved when it was signalled, which is gone once training ended
        run_dir = Path(requeued["tags"]["output_dir"])
        logs = "".join(p.read_text() for p in submitit_dir(requeued).glob("*_log.*"))
        assert f"resuming from {run_dir}/checkpoints/requeue.ckpt" in logs, logs[-3000:]
        assert not (run_dir / "checkpoints" / "requeue.ckpt").exists()
