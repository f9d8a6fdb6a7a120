"""Start-up: the commands answer ``--help`` and ``--cfg job`` without importing the heavy
libraries (torch, Lightning, MLflow, datasets, transformers, matplotlib take seconds); they are
imported when a run starts. ``benchmarks/bench_startup.py`` prints the times."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "mlflow", "datasets", "transformers", "matplotlib")


@pytest.mark.parametrize("module", ["medlm.cli.train", "medlm.cli.eval", "medlm.cli.prepare"])
def test_a_hydra_command_imports_nothing_heavy(module: str) -> None:
    probe = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == [], f"{module} imports {loaded} at start-up"


def test_help_and_cfg_job_answer_without_a_run() -> None:
    for args in (["--help"], ["--cfg", "job", "experiment=quickstart"]):
        done = subprocess.run(
            [sys.executable, "-m", "medlm.cli.train", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert "task_name: quickstart" in done.stdout


@pytest.mark.usefixtures("shared_data_dir")
def test_a_run_prints_each_lightning_line_once(tmp_path) -> None:
    """Lightning is imported after Hydra has set up logging: its own console handler would print
    each of its lines a second time beside Hydra's."""
    env = {**os.environ, "MEDLM_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "medlm.cli.train", "debug=fdr", "callbacks.samples=null"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert printed.count("Seed set to 1337") == 1, printed
    assert printed.count("GPU available: False") == 1, printed
