"""The lora_question_pairs experiment end to end: the recipe, fast_dev_run of both arms, learning on
real pairs, and checkpoints that export to a PEFT adapter and a merged HF model with the same
logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medlm.cli import export as export_cli
from medlm.data.classification import collate_pairs
from medlm.models.checkpoint import load_network
from medlm.models.convert_classifier import export_classifier
from medlm.training import train
from tests.helpers import compose_train, mlflow_runs

TOL = 1e-4
# batches small and short keep a CPU step quick; the progress bar only slows the log
SMALL = ["data.batch_size=8", "data.max_length=64", "trainer.enable_progress_bar=false"]


def write_pairs(path: Path, n_questions: int = 24) -> Path:
    """A question-pair CSV in Curai's format: each question with one same-meaning and one other
    rewrite."""
    rows = []
    for i in range(n_questions):
        rows.append(
            f'{i % 3},What helps with back pain number {i}?,"How can I ease my back pain, case '
            f'{i}?",1'
        )
        rows.append(
            f"{i % 3},What helps with back pain number {i}?,Is a fever of {i} contagious?,0"
        )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def train_arm(
    root: Path, experiment: str, pretrained: Path, data_path: Path | None, *extra: str
) -> Path:
    """Train one arm briefly into ``root/<experiment>`` (MLflow store under ``root``); its best
    checkpoint."""
    overrides = [
        f"experiment={experiment}",
        f"model.pretrained={pretrained}",
        *SMALL,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "test=false",
        *extra,
    ]
    if data_path is not None:
        overrides.append(f"data.path={data_path}")
    cfg = compose_train(root, overrides, output_dir=root / experiment)
    train(cfg)
    [best] = [
        p for p in (root / experiment / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"
    ]
    return best


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_hf_gpt2: Path) -> Path:
    root = tmp_path_factory.mktemp("lora_run")
    return train_arm(root, "lora_question_pairs", tiny_hf_gpt2, write_pairs(root / "pairs.csv"))


def test_experiment_sets_the_recipe(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=lora_question_pairs"])
    assert (
        cfg.model._target_ == "medlm.models.classifier.lora_classifier"
        and cfg.model.pretrained == "gpt2"
    )
    assert (cfg.model.r, cfg.model.alpha, cfg.model.dropout, list(cfg.model.targets)) == (
        8,
        32,
        0.1,
        ["c_attn", "c_proj"],
    )
    assert cfg.data._target_ == "medlm.data.question_pairs.QuestionPairsDataModule"
    assert cfg.module._target_ == "medlm.modules.classifier.SequenceClassification"
    assert cfg.task_name == "lora_question_pairs" and cfg.callbacks.samples is None
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor == "val/acc"
    assert cfg.callbacks.model_checkpoint.mode == "max"
    probe = compose_train(tmp_path, ["experiment=linear_probe_question_pairs"])
    assert probe.model._target_ == "medlm.models.classifier.linear_probe"
    assert set(probe.model) == {
        "_target_",
        "pretrained",
        "num_labels",
        "dropout",
    }  # no LoRA keys leak in
    assert probe.task_name == "linear_probe_question_pairs"
    # the same run but for the model; compared unresolved, since ${task_name} (the loss plot's
    # title) names each experiment
    for key in ("data", "scheduler", "trainer", "callbacks", "module"):
        assert OmegaConf.to_container(probe[key]) == OmegaConf.to_container(cfg[key]), key


@pytest.mark.parametrize("experiment", ["lora_question_pairs", "linear_probe_question_pairs"])
def test_experiment_runs_fast_dev_run_on_real_pairs(
    experiment: str,
    tmp_path: Path,
    tiny_hf_gpt2: Path,
    shared_data_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    cfg = compose_train(
        tmp_path,
        [
            f"experiment={experiment}",
            "debug=fdr",
            "trainer.accelerator=cpu",
            f"model.pretrained={tiny_hf_gpt2}",
            *SMALL,
        ],
    )
    train(cfg)
    out = capsys.readouterr().out
    assert "SequenceClassifier: trainable params:" in out
    assert (
        "test/acc" in out and "test/f1" in out
    )  # the experiment scores the test split after fitting


def test_training_on_real_pairs_logs_every_metric_each_epoch(
    tmp_path: Path, tiny_hf_gpt2: Path, shared_data_dir: Path
) -> None:
    """Two short epochs on the real CSV: the metrics of issue 4 reach MLflow once per epoch, the
    trainable-parameter count is a param, the confusion matrices are artifacts, and the module
    learns (the training loss of a few real batches seen again and again falls)."""
    train_arm(
        tmp_path,
        "lora_question_pairs",
        tiny_hf_gpt2,
        None,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "optim.lr=1e-2",
        "scheduler.warmup_steps=0",
        "test=true",
        "+trainer.limit_test_batches=2",
        "+trainer.overfit_batches=4",
    )
    [run] = mlflow_runs(tmp_path)
    for key in ("val/acc", "val/f1", "val/precision", "val/recall", "val/loss", "train/acc"):
        assert len(run["metrics"][key]) == 2, key
    for key in ("test/acc", "test/f1", "test/precision", "test/recall", "test/loss"):
        assert len(run["metrics"][key]) == 1, key
    assert (
        int(run["params"]["trainable_params"])
        == 2 * (8 * (32 + 96) + 8 * (32 + 32) + 8 * (128 + 32)) + 2 * 32
    )
    losses = [v for _, v in run["metrics"]["train/loss"]]
    assert len(losses) == 8 and sum(losses[-4:]) < sum(losses[:4])
    artifacts = tmp_path / "mlruns" / "artifacts"
    names = {p.name for p in artifacts.rglob("*") if p.parent.name == "confusion"}
    assert {
        "val_epoch000_step000004.png",
        "val_epoch001_step000008.csv",
        "test_step000008.png",
    } <= names


def _batch() -> dict[str, torch.Tensor]:
    """Three right-padded rows of random tokens, as the DataModule batches them."""
    g = torch.Generator().manual_seed(0)
    return collate_pairs(
        [(torch.randint(0, 50000, (n,), generator=g).tolist(), 0) for n in (9, 14, 5)], pad_id=50256
    )


def test_export_checkpoint_writes_a_peft_adapter_and_a_merged_model(
    lora_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    ours = load_network(lora_ckpt)
    batch = _batch()
    with torch.no_grad():
        expected = ours(batch["input_ids"], batch["attention_mask"])
    assert any(
        layer.lora_B.weight.abs().max() > 0
        for layer in [m for m in ours.modules() if hasattr(m, "lora_B")]
    )  # training moved the adapters

    written = export_classifier(ours, tmp_path / "adapter", merged=False, source=str(lora_ckpt))
    assert sorted(p.relative_to(tmp_path / "adapter").as_posix() for p in written) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "base/config.json",
        "base/model.safetensors",
    ]
    assert all(p.is_file() for p in written)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (
        cfg["r"],
        cfg["lora_alpha"],
        cfg["lora_dropout"],
        cfg["target_modules"],
        cfg["modules_to_save"],
    ) == (8, 32, 0.1, ["c_attn", "c_proj"], ["score"])
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "adapter" / "base"
    )
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (got - expected).abs().max() <= TOL

    written = export_classifier(ours, tmp_path / "merged", merged=True, source=str(lora_ckpt))
    assert [p.name for p in written] == ["config.json", "model.safetensors"]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert isinstance(hf, transformers.GPT2ForSequenceClassification)
    with torch.no_grad():
        got = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (got - expected).abs().max() <= TOL

    # the same through the command line (medlm-export hands classifier checkpoints to
    # export_classifier)
    try:
        export_cli.main([str(lora_ckpt), str(tmp_path / "cli"), "--merged"])
    except SystemExit as exit_:
        pytest.fail(f"medlm-export exited with {exit_.code}: {capsys.readouterr().err}")
    assert "config.json, model.safetensors" in capsys.readouterr().out
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "cli").eval()
    with torch.no_grad():
        got = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (got - expected).abs().max() <= TOL
