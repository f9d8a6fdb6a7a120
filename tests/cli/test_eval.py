"""medlm-eval as a user runs it: each benchmark on every kind of model source, results where users
look (the run folder, the evaluation's MLflow run, the scored training run), and each bad input as
one ``error:`` line, exit 2, no results and no MLflow run."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from medlm.cli import eval as cli
from medlm.data.pubmedqa import PubMedQADataModule
from medlm.data.question_pairs import QuestionPairsDataModule
from medlm.eval.pubmedqa import score_pubmedqa
from medlm.loading import load_model
from medlm.models.checkpoint import load_network
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.training import train
from tests.cli.test_generate import write_medlm_ckpt
from tests.experiments.test_lora_question_pairs import train_arm, write_pairs
from tests.helpers import compose_train, mlflow_runs

pytestmark = pytest.mark.usefixtures("shared_data_dir")
LIMIT = 9  # PubMedQA questions a test scores: evenly spread, so yes, no and maybe are among them


def run_eval(
    root: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """``medlm-eval ARGS`` in-process from ``root`` as the project (MEDLM_HOME): exit status,
    stdout, stderr."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by an earlier run's MLflow logger
    monkeypatch.chdir(root)
    monkeypatch.setenv("MEDLM_HOME", str(root))
    monkeypatch.setattr(sys, "argv", ["medlm-eval", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, token_cache_dir: Path) -> tuple[Path, Path]:
    """A project whose MLflow store holds one short quickstart run; its root and best checkpoint."""
    root = tmp_path_factory.mktemp("project")
    cfg = compose_train(
        root,
        [
            "experiment=quickstart",
            "data.batch_size=4",
            "data.block_size=64",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "+trainer.limit_val_batches=2",
            "callbacks.samples=null",
            f"paths.cache_dir={token_cache_dir}",
        ],
        output_dir=root / "logs" / "quickstart" / "run",
    )
    train(cfg)
    [best] = [
        p
        for p in (root / "logs" / "quickstart" / "run" / "checkpoints").glob("*.ckpt")
        if p.name != "last.ckpt"
    ]
    return root, best


def test_pubmedqa_scores_every_kind_of_source_and_records_where_users_look(
    trained, tiny_hf_gpt2: Path, monkeypatch, capsys
) -> None:
    root, best = trained
    [train_run] = mlflow_runs(root)
    out_dir = root / "eval_pubmedqa"
    code, out, err = run_eval(
        root,
        [
            "benchmark=pubmedqa",
            f"benchmark.limit={LIMIT}",
            f"models.base={tiny_hf_gpt2}",
            f"models.tuned={best}",
            f"models.by_run={train_run['run_id']}",
            f"hydra.run.dir={out_dir}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "| model | acc | macro_f1 | f1_yes | f1_no | f1_maybe | n |" in out
    assert "| majority (always yes) |" in out  # what chance looks like, beside every result
    # the closing summary: the evaluation's MLflow run, its folder, how to see it
    eval_run = next(r for r in mlflow_runs(root) if r["run_id"] != train_run["run_id"])
    assert f"run FINISHED\n  MLflow run  {eval_run['run_id']}  (experiment eval_pubmedqa)" in out
    assert f"  run folder  {out_dir}" in out and "mlflow ui --backend-store-uri" in out

    results = json.loads((out_dir / "results.json").read_text())
    assert results["benchmark"] == "pubmedqa" and set(results["models"]) == {
        "base",
        "tuned",
        "by_run",
    }
    assert results["models"]["tuned"]["n"] == LIMIT
    # quickstart trains on all of PQA-L: the tuned model has seen these questions, and is told so
    assert results["details"]["tuned"]["trained_on_test"] is True
    assert results["details"]["base"]["trained_on_test"] is False
    assert f"models.tuned: {best} was trained on PubMedQA PQA-L without" in out + err
    # the same checkpoint, by path or by its MLflow run: the same scores
    assert results["models"]["tuned"] == results["models"]["by_run"]
    # the scores are those of the scorer called directly on the same model and questions
    dm = PubMedQADataModule()
    records = dm.official_test_split()
    records = [records[i * len(records) // LIMIT] for i in range(LIMIT)]
    loaded = load_model(best)
    direct = score_pubmedqa(
        loaded.net, loaded.tokenizer, records, template=loaded.data_settings()["template"]
    )
    assert results["models"]["tuned"]["acc"] == pytest.approx(direct.metrics["acc"])
    lines = (out_dir / "predictions" / "tuned.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert (
        len(lines) == LIMIT
        and first["id"] == records[0].pubid
        and first["gold"] == records[0].final_decision
    )
    assert set(first["scores"]) == {"yes", "no", "maybe"}
    assert (out_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "confusion" / "tuned.csv").is_file() and "| tuned |" in (
        out_dir / "results.md"
    ).read_text()

    runs = {r["tags"].get("task_name"): r for r in mlflow_runs(root)}
    evaluation, scored = runs["eval_pubmedqa"], runs["quickstart"]
    assert evaluation["metrics"]["tuned/acc"][0][1] == pytest.approx(
        results["models"]["tuned"]["acc"]
    )
    assert evaluation["tags"]["scored_run.tuned"] == train_run["run_id"]
    # the training run's record has the scores, so the MLflow UI's run table sorts by them
    assert scored["metrics"]["eval/pubmedqa/acc"][0][1] == pytest.approx(
        results["models"]["tuned"]["acc"]
    )
    assert scored["tags"]["eval/pubmedqa/run"] == evaluation["run_id"]


def test_hellaswag_on_a_local_file(tiny_hf_gpt2: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    items = [
        {
            "ind": i,
            "ctx": f"A man is sitting on a roof number {i}. He",
            "label": i % 4,
            "activity_label": "Roof",
            "endings": [
                " is using wrap to wrap a pair of skis.",
                " is ripping level tiles off.",
                " is holding a rubik's cube.",
                " starts pulling up roofing on a roof.",
            ],
        }
        for i in range(6)
    ]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    code, out, err = run_eval(
        tmp_path,
        [
            "benchmark=hellaswag",
            f"benchmark.path={path}",
            "benchmark.limit=5",
            f"models.tiny={tiny_hf_gpt2}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "| model | acc | acc_norm | acc_norm_bytes | n |" in out and "| chance | 0.2500 |" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["models"]["tiny"]["n"] == 5 and 0 <= results["models"]["tiny"]["acc"] <= 1


@pytest.fixture(scope="module")
def arms(
    tmp_path_factory: pytest.TempPathFactory, tiny_hf_gpt2: Path
) -> tuple[Path, Path, dict[str, Path]]:
    """A project dir whose MLflow store holds a short linear-probe run and a short LoRA run."""
    root = tmp_path_factory.mktemp("pairs_project")
    pairs = write_pairs(root / "pairs.csv", n_questions=40)
    ckpts = {
        arm: train_arm(root, f"{arm}_question_pairs", tiny_hf_gpt2, pairs, "optim.lr=1e-2")
        for arm in ("linear_probe", "lora")
    }
    return root, pairs, ckpts


def accuracy(ckpt: Path, pairs: Path) -> float:
    """A classifier's test accuracy computed here, independently of medlm-eval."""
    dm = QuestionPairsDataModule(path=str(pairs), max_length=64, batch_size=8)
    net = load_network(ckpt)
    right = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            right += int(
                (
                    net(batch["input_ids"], batch["attention_mask"]).argmax(-1) == batch["labels"]
                ).sum()
            )
            total += len(batch["labels"])
    return right / total


PAIRS = ["benchmark=question_pairs", "benchmark.data.max_length=64", "benchmark.data.batch_size=8"]


def test_question_pairs_scores_the_newest_runs_of_both_arms(arms, monkeypatch, capsys) -> None:
    root, pairs, ckpts = arms
    out_dir = root / "eval_default"
    code, out, err = run_eval(
        root,
        [*PAIRS, f"benchmark.data.path={pairs}", f"hydra.run.dir={out_dir}"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    # the default models are the newest runs of the two training experiments in the MLflow store
    assert f"linear_probe: {ckpts['linear_probe']}" in out and f"lora: {ckpts['lora']}" in out
    assert (
        "| model | acc | f1 | precision | recall | loss | trainable_params | trainable_percent | "
        "n |" in out
    )
    acc = {arm: accuracy(ckpt, pairs) for arm, ckpt in ckpts.items()}
    assert (
        f"| linear_probe | {acc['linear_probe']:.4f} |" in out
        and f"| lora | {acc['lora']:.4f} |" in out
    )
    assert "| 64 |" in out and "| 5,696 |" in out  # trainable: the head; LoRA adapters and the head
    with open(out_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["linear_probe", "lora", "majority class"]
    assert float(rows[1]["acc"]) == pytest.approx(acc["lora"], abs=1e-4)
    assert (out_dir / "confusion" / "lora.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [run] = [r for r in mlflow_runs(root) if r["tags"].get("task_name") == "eval_question_pairs"]
    assert run["metrics"]["lora/acc"][0][1] == pytest.approx(acc["lora"])
    assert (
        run["tags"]["model.lora"] == str(ckpts["lora"])
        and run["params"]["benchmark.split"] == "test"
    )


def test_question_pairs_takes_paths_and_the_val_split(arms, monkeypatch, capsys) -> None:
    root, pairs, ckpts = arms
    code, out, err = run_eval(
        root,
        [
            *PAIRS,
            f"benchmark.data.path={pairs}",
            f"hydra.run.dir={root / 'eval_val'}",
            "benchmark.split=val",
            f"models.lora={ckpts['lora']}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "val split: 8 pairs of" in out and "| lora |" in out and "linear_probe" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["benchmark=nope"], "Could not find 'benchmark/nope'"),
        (
            ["models.x=missing/best.ckpt"],
            "models.x: missing/best.ckpt: no such checkpoint file or model directory",
        ),
        (
            ["models.x=0123456789abcdef0123456789abcdef"],
            "models.x: no MLflow run 0123456789abcdef0123456789abcdef",
        ),
        (
            ["models.x=no_such_experiment"],
            "models.x: 'no_such_experiment' is neither a checkpoint file",
        ),
        (
            ["models.x=LORA", "benchmark.mode=likelihood"],
            "models.x: the likelihood mode needs a causal LM",
        ),
        (["models.x=SMALL_VOCAB"], "tokenizer gpt2 has 50257 tokens but the model"),
        (["models.x=LORA", "benchmark=hellaswag", "benchmark.path=THREE_ENDINGS"], "line 1"),
        (
            ["models.x=LORA", "benchmark=question_pairs", "benchmark.data.seed=7"],
            "was trained with data.seed=1337, this evaluation uses 7",
        ),
        (
            ["models.x=LORA", "benchmark=question_pairs", "benchmark.split=train"],
            "must be test or val",
        ),
    ],
    ids=[
        "unknown-benchmark",
        "missing-file",
        "unknown-run",
        "unknown-experiment",
        "classifier-as-lm",
        "vocabulary",
        "three-endings",
        "other-seed",
        "bad-split",
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    args, message, arms, tmp_path: Path, monkeypatch, capsys
) -> None:
    root, pairs, ckpts = arms
    small = write_medlm_ckpt(
        tmp_path / "small.ckpt",
        GPT2(GPT2Config(vocab_size=96, block_size=32, n_layer=1, n_head=1, n_embd=8)),
    )
    three = tmp_path / "three.jsonl"
    three.write_text(
        json.dumps({"ind": 1, "ctx": "c", "endings": ["a", "b", "c"], "label": 0}) + "\n"
    )
    subs = {"LORA": str(ckpts["lora"]), "SMALL_VOCAB": str(small), "THREE_ENDINGS": str(three)}
    args = [
        a.split("=", 1)[0] + "=" + subs.get(a.split("=", 1)[1], a.split("=", 1)[1]) for a in args
    ]
    if any(a.startswith("benchmark=question_pairs") for a in args):
        args += [f"benchmark.data.path={pairs}", "benchmark.data.max_length=64"]
    before = len(mlflow_runs(root))
    out_dir = tmp_path / "out"
    code, out, err = run_eval(root, [*args, f"hydra.run.dir={out_dir}"], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (out_dir / "results.json").exists() and len(mlflow_runs(root)) == before
    assert not out_dir.exists(), "the run folder Hydra made was left behind"
