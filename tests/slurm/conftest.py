"""A real single-node SLURM for the tests of this folder, brought up by scripts/slurm_local.sh.

The tests skip, saying why, only where SLURM cannot run here: its Debian packages are not
installed (``scripts/slurm_local.sh install`` as root installs them) or the tests do not run as
root (the daemons run as root without systemd). ``MEDLM_REQUIRE_SLURM=1`` (CI) turns those skips
into failures. A cluster that fails to come up is always a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm_local.sh"
SLURM_DIR = Path(os.environ.get("MEDLM_SLURM_DIR", "/tmp/medlm-slurm"))
# every job the tests submit carries this name, so that leftovers of an interrupted session can be
# cancelled without touching anyone else's jobs
JOB_NAME = "medlm-test"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: runs jobs on the local SLURM of scripts/slurm_local.sh"
    )


def _unavailable() -> str | None:
    """Why SLURM cannot run here, or None."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [d for d in DAEMONS if shutil.which(d, path=path) is None]
    if missing:
        return (
            f"SLURM packages not installed ({', '.join(missing)} missing): "
            f"run '{SCRIPT.relative_to(SCRIPT.parents[1])} install' as root"
        )
    if os.geteuid() != 0:
        return "the local SLURM runs its daemons as root: run these tests as root"
    return None


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MEDLM_SLURM_DIR": str(SLURM_DIR)},
    )


def _cancel_test_jobs() -> None:
    subprocess.run(["scancel", "--name", JOB_NAME], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def slurm() -> Iterator[Path]:
    """The running cluster (its state dir); SLURM_CONF points SLURM's commands at it."""
    reason = _unavailable()
    if reason:
        if os.environ.get("MEDLM_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (SLURM is required: MEDLM_REQUIRE_SLURM=1)")
        pytest.skip(reason)
    was_up = _run("status").returncode == 0
    if not was_up:
        up = _run("up")
        assert up.returncode == 0, f"scripts/slurm_local.sh up failed:\n{up.stdout}\n{up.stderr}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(SLURM_DIR / "etc" / "slurm.conf"))
        _cancel_test_jobs()
        yield SLURM_DIR
        _cancel_test_jobs()
    if not was_up:  # a cluster someone else started stays up
        down = _run("down")
        assert down.returncode == 0, f"scripts/slurm_local.sh down failed:\n{down.stderr}"
