"""The project root (mlruns/, logs/, .cache/): $MEDLM_HOME, else the checkout holding conf/, else,
for an installed package, the current directory; never wherever a command happens to start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medlm.utils.cli import CONFIG_DIR
from medlm.utils.project import checkout_of, project_root
from tests.cli.train_cli import TINY
from tests.helpers import compose_train, mlflow_runs

REPO = Path(__file__).resolve().parents[2]


def fake_checkout(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'medlm'\n")
    return root / "conf"


def test_medlm_home_wins(tmp_path: Path, monkeypatch) -> None:
    conf = fake_checkout(tmp_path / "checkout")
    monkeypatch.setenv("MEDLM_HOME", str(tmp_path / "home"))
    assert project_root(conf) == tmp_path / "home"


def test_the_checkout_holding_conf_else_the_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MEDLM_HOME")
    monkeypatch.chdir(tmp_path)
    conf = fake_checkout(tmp_path / "checkout")
    assert checkout_of(conf) == tmp_path / "checkout" and project_root(conf) == checkout_of(conf)
    installed = tmp_path / "site-packages" / "medlm" / "conf"  # a non-editable install
    installed.mkdir(parents=True)
    assert checkout_of(installed) is None and project_root(installed) == tmp_path


def test_paths_root_dir_is_this_checkout_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MEDLM_HOME")
    monkeypatch.chdir(tmp_path)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train")
    assert cfg.paths.root_dir == str(Path(CONFIG_DIR).resolve().parent)
    assert cfg.paths.log_dir == f"{cfg.paths.root_dir}/logs"
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{cfg.paths.root_dir}/mlruns/mlflow.db"
    _ = compose_train  # the tests' own runs set paths.root_dir to their temporary project


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data_dir")
def test_medlm_train_from_another_folder_records_into_the_checkouts_store(tmp_path: Path) -> None:
    """A copy of the checkout (its code, conf/ and pyproject.toml), medlm-train started from an
    unrelated folder without MEDLM_HOME: the run lands in the copy's mlruns/ and logs/."""
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    shutil.copytree(
        REPO / "src", checkout / "src", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "conf", checkout / "conf")
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MEDLM_HOME")}
    env["PYTHONPATH"] = str(checkout / "src")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medlm.cli.train",
            *TINY,
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(mlflow_runs(checkout)) == 1 and list(checkout.glob("logs/quickstart/runs/*"))
    assert not list(elsewhere.iterdir())
    assert f"mlflow ui --backend-store-uri sqlite:///{checkout}/mlruns/mlflow.db" in proc.stdout
