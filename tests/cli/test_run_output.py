"""What a run prints and records: quiet by default (no tips, no deprecation noise, no FLOPs column
of zeros, each line once), params once each, samples that show the question and the reference, and
a closing summary that says where the run is and how to see it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlm.data.pubmedqa import PubMedQADataModule
from tests.cli.train_cli import TINY, run_train
from tests.helpers import mlflow_runs

pytestmark = pytest.mark.usefixtures("shared_data_dir")
NOISE = ("💡", "litlogger", "FLOPs", "srun", "LeafSpec", "deprecated", "Warning")


def test_a_run_is_quiet_records_once_and_ends_with_a_summary(
    tmp_path: Path, monkeypatch, capsys, shared_data_dir: Path
) -> None:
    run = tmp_path / "logs" / "quickstart" / "runs" / "r"
    args = [*TINY, "callbacks.samples.max_new_tokens=4", f"hydra.run.dir={run}"]
    args.remove("callbacks.samples=null")
    code, out, err = run_train(args, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    printed = out + err
    assert not [n for n in NOISE if n in printed], printed
    assert "Trainable params" in printed  # the model summary is still there
    cache_lines = [line for line in printed.splitlines() if "medlm.data.cache" in line]
    assert len(cache_lines) == 2, cache_lines  # train and val split, once each
    assert printed.count("pubmedqa: 1000 records from") == 1

    [record] = mlflow_runs(tmp_path)
    params = record["params"]
    assert params["data.batch_size"] == "2" and "batch_size" not in params
    assert not [k for k in params if "." not in k and k.startswith(("hub_", "val_", "num_"))]

    # the closing summary: status, best metric, run id, folder, how to see it
    summary = out[out.index("run FINISHED") :]
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert summary.startswith("run FINISHED   best val/loss = "), summary
    assert f"  MLflow run  {record['run_id']}  (experiment quickstart)" in summary
    assert f"  run folder  {run}" in summary
    assert "make ui" in summary and f"mlflow ui --backend-store-uri {store}" in summary

    # samples: the question from its start and the reference answer in full
    [sample] = (run / "samples").glob("epoch_*.md")
    text = sample.read_text()
    dm = PubMedQADataModule(path=str(shared_data_dir / "pubmedqa" / "ori_pqal.json"))
    prompt, reference = dm.sample_prompts(1)[0], dm.sample_references(1)[0]
    assert f"```\n{prompt[:300]}" in text  # the question, not only the prompt's tail
    assert f"**Reference**\n\n```\n{reference}\n```" in text
    assert "the model saw its last 28 of " in text  # the context fits 32 - 4 prompt tokens


def test_started_from_another_folder_the_run_lands_in_the_project(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    code, out, err = run_train(TINY, project, monkeypatch, capsys, cwd=elsewhere)
    assert code == 0, err
    assert len(mlflow_runs(project)) == 1 and list(project.glob("logs/quickstart/runs/*"))
    assert not list(elsewhere.iterdir()), "a second mlruns/ or logs/ where the command started"


def test_a_long_sample_keeps_its_question_and_its_end() -> None:
    from medlm.callbacks.samples import trim_middle

    short = "Question: q?\nContext: " + "c" * 1800 + "\nAnswer:"
    assert trim_middle(short) == short  # a little over the limit: shown whole
    long = "Question: which?\nContext: " + "c" * 5000 + "\nAnswer:"
    trimmed = trim_middle(long)
    assert trimmed.startswith("Question: which?\n") and trimmed.endswith("c\nAnswer:")
    assert f"[... {len(long) - 1600} characters left out ...]" in trimmed
