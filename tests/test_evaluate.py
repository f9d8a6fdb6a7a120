"""medlm-eval: two trained arms scored on the same test split, a table and a bar chart, one MLflow
run; a bad input is one ``error:`` line and exit status 2."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import torch

from medlm import evaluate as cli
from medlm.data.question_pairs import QuestionPairsDataModule
from medlm.models.checkpoint import load_network
from tests.helpers import mlflow_runs
from tests.test_lora_question_pairs import train_arm, write_pairs

DATA = ["data.max_length=64", "data.batch_size=8"]


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory, tiny_hf_gpt2: Path) -> tuple[Path, Path, dict[str, Path]]:
    """A project dir whose MLflow store holds a short linear-probe run and a short LoRA run."""
    root = tmp_path_factory.mktemp("project")
    pairs = write_pairs(root / "pairs.csv", n_questions=40)
    ckpts = {arm: train_arm(root, f"{arm}_question_pairs", tiny_hf_gpt2, pairs, "optim.lr=1e-2")
             for arm in ("linear_probe", "lora")}
    return root, pairs, ckpts


def run_eval(root: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``medlm-eval ARGS`` in-process from ``root``: exit status, stdout, stderr."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by an earlier run's MLflow logger
    monkeypatch.chdir(root)
    given = {a.split("=", 1)[0] for a in args}
    monkeypatch.setattr(sys, "argv", ["medlm-eval", *(a for a in DATA if a.split("=")[0] not in given), *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def accuracy(ckpt: Path, pairs: Path) -> float:
    """The arm's test accuracy computed here, independently of medlm-eval."""
    dm = QuestionPairsDataModule(path=str(pairs), max_length=64, batch_size=8)
    net = load_network(ckpt)
    right = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            right += int((net(batch["input_ids"], batch["attention_mask"]).argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return right / total


def test_eval_scores_both_arms_on_the_test_split_and_records_a_run(arms, monkeypatch, capsys) -> None:
    root, pairs, ckpts = arms
    out_dir = root / "eval_default"
    code, out, err = run_eval(root, [f"data.path={pairs}", f"hydra.run.dir={out_dir}"], monkeypatch, capsys)
    assert code == 0, err
    # the default arms are the newest runs of the two training experiments in the MLflow store
    assert f"linear_probe: {ckpts['linear_probe']}" in out and f"lora: {ckpts['lora']}" in out
    assert "| arm | accuracy | F1 | precision | recall | loss | trainable params | trainable % |" in out
    acc = {arm: accuracy(ckpt, pairs) for arm, ckpt in ckpts.items()}
    assert f"| linear_probe | {acc['linear_probe']:.4f} |" in out
    assert f"| lora | {acc['lora']:.4f} |" in out
    assert "| 64 |" in out and "| 5,696 |" in out  # trainable: the head; LoRA adapters and the head

    assert (out_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out_dir / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == ["linear_probe", "lora"]
    assert float(rows[1]["accuracy"]) == pytest.approx(acc["lora"], abs=1e-4)
    assert "| lora |" in (out_dir / "comparison.md").read_text()

    [run] = [r for r in mlflow_runs(root) if r["tags"].get("task_name") == "lora_question_pairs_eval"]
    assert run["metrics"]["lora/test/acc"][0][1] == pytest.approx(acc["lora"])
    assert run["metrics"]["linear_probe/test/acc"][0][1] == pytest.approx(acc["linear_probe"])
    assert {"lora/test/f1", "lora/test/precision", "lora/test/recall", "lora/trainable_params"} <= set(run["metrics"])
    assert run["tags"]["checkpoint.lora"] == str(ckpts["lora"])
    assert run["params"]["split"] == "test"
    artifacts = {p.relative_to(root / "mlruns" / "artifacts").as_posix().split("/", 2)[-1]
                 for p in (root / "mlruns" / "artifacts" / run["run_id"]).rglob("*") if p.is_file()}
    assert {"comparison/comparison.png", "comparison/comparison.md", "comparison/comparison.csv",
            "confusion/lora.png", "confusion/linear_probe.csv", "config/config.yaml"} <= artifacts


def test_eval_takes_checkpoint_paths_and_the_val_split(arms, monkeypatch, capsys) -> None:
    root, pairs, ckpts = arms
    code, out, err = run_eval(root, [f"data.path={pairs}", f"hydra.run.dir={root / 'eval_val'}",
                                     "split=val", f"arms.lora={ckpts['lora']}", "~arms.linear_probe"],
                              monkeypatch, capsys)
    assert code == 0, err
    assert out.startswith("val split: 8 pairs of") and "| lora |" in out and "linear_probe" not in out


@pytest.mark.parametrize("args, message", [
    (["arms.lora=missing/best.ckpt"], "arms.lora: missing/best.ckpt: no such checkpoint file"),
    (["arms.lora=no_such_experiment"], "arms.lora: 'no_such_experiment' is neither a checkpoint file nor an "
                                       "MLflow experiment"),
    (["data.seed=7"], "was trained with data.seed=1337, this evaluation uses 7"),
    (["data.max_length=32"], "was trained with data.max_length=64"),
    (["split=train"], "split: 'train' must be test or val"),
], ids=["missing-file", "unknown-experiment", "other-split", "other-length", "bad-split"])
def test_bad_input_is_one_line_and_exit_2(args, message, arms, monkeypatch, capsys) -> None:
    root, pairs, _ = arms
    code, out, err = run_eval(root, [f"data.path={pairs}", f"hydra.run.dir={root / 'eval_bad'}", *args],
                              monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
