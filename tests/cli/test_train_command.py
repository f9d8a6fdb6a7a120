"""medlm-train as a user runs it: a sweep from the shell, and each bad input as one clear line with
exit 2 that leaves no run folder and no MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from medlm.cli.train import main
from tests.cli.train_cli import no_run_left, run_folders

pytestmark = pytest.mark.usefixtures("shared_data_dir")
QUICK = [
    "experiment=quickstart",
    "data.batch_size=4",
    "data.block_size=64",
    "trainer.enable_progress_bar=false",
    "callbacks.samples=null",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
]
TRAIN_BIN = Path(sys.executable).parent / "medlm-train"


def run_main(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    """``medlm-train ARGV`` in this process, from ``tmp_path`` as the project (MEDLM_HOME); returns
    the exit code and stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDLM_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["medlm-train", *argv])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def pubmedqa_file(tmp_path: Path, records: dict | str) -> Path:
    path = tmp_path / "ori_pqal.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return path


TRUNCATED_JSON = '{"1": {"QUESTION": '
RECORD = {
    "QUESTION": "Does it work?",
    "CONTEXTS": ["Some context."],
    "LONG_ANSWER": "It does.",
    "final_decision": "yes",
}
WITHOUT_LONG_ANSWER = {k: v for k, v in RECORD.items() if k != "LONG_ANSWER"}


@pytest.mark.parametrize(
    "name, make_args, expected",
    [
        (
            "wrong model value, before any data is read",
            lambda tmp: ["model.config.n_head=5", "data.path=/nonexistent/ori_pqal.json"],
            "model.n_head",
        ),
        (
            "block_size over the model's context",
            lambda tmp: ["model.config.block_size=32"],
            "data.block_size",
        ),
        (
            "path that does not exist",
            lambda tmp: ["data.path=/nonexistent/ori_pqal.json"],
            "/nonexistent/ori_pqal.json",
        ),
        (
            "malformed JSON",
            lambda tmp: [f"data.path={pubmedqa_file(tmp, TRUNCATED_JSON)}"],
            "ori_pqal.json",
        ),
        (
            "record missing a field",
            lambda tmp: [f"data.path={pubmedqa_file(tmp, {'123': WITHOUT_LONG_ANSWER})}"],
            "123",
        ),
        (
            "unknown decision label",
            lambda tmp: [
                f"data.path={pubmedqa_file(tmp, {'77': {**RECORD, 'final_decision': 'perhaps'}})}"
            ],
            "perhaps",
        ),
        ("empty dataset", lambda tmp: [f"data.path={pubmedqa_file(tmp, {})}"], "ori_pqal.json"),
        (
            "a required value left unset",
            lambda tmp: ["model=llama_pretrained"],
            "model.pretrained: no value given",
        ),
        (
            "resume checkpoint that does not exist",
            lambda tmp: ["ckpt_path=/nonexistent/last.ckpt"],
            "/nonexistent/last.ckpt",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    name, make_args, expected, tmp_path, monkeypatch, capsys
) -> None:
    code, err = run_main([*QUICK, *make_args(tmp_path)], tmp_path, monkeypatch, capsys)
    assert code == 2, f"{name}: exit {code}\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], f"{name}: {err}"
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.tmp")), "a half-written file was left behind"
    # found before the run was created: no MLflow run (no store even), no run folder
    assert no_run_left(tmp_path), run_folders(tmp_path)


def test_no_network_and_no_local_data_says_how_to_point_at_files(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("MEDLM_DATA_DIR")
    code, err = run_main(QUICK, tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "qiaojin/PubMedQA" in line and "MEDLM_DATA_DIR" in line and "data.path" in line
    assert no_run_left(tmp_path), run_folders(tmp_path)


@pytest.mark.slow
def test_the_console_script_reports_a_user_error_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(TRAIN_BIN), "model.config.n_embd=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.n_embd")
    assert "Traceback" not in proc.stderr
