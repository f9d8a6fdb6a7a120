"""The classification LightningModule: metrics and confusion matrices of known predictions, the
trainable-parameter record, gradients for adapters and head only, and checkpoints that rebuild the
net."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.utils.data import DataLoader

from medlm.callbacks.confusion_matrix import ConfusionMatrixPlot
from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import NETWORK_KEY, load_network, network_spec
from medlm.models.classifier import SequenceClassifier, linear_probe, lora_classifier
from medlm.models.convert_classifier import export_classifier
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.lora import trainable_parameter_summary
from medlm.modules.classifier import SequenceClassification
from tests.helpers import mlflow_runs


class Lookup(nn.Module):
    """A classifier whose predictions the test chooses: the logits of a batch row are the row of
    ``table`` indexed by its first token."""

    num_labels = 2

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.table[input_ids[:, 0]]  # (B, 2)


def _batches(preds: list[int], labels: list[int], batch_size: int = 3) -> DataLoader:
    rows = [
        {
            "input_ids": torch.tensor([p, 7]),
            "attention_mask": torch.ones(2, dtype=torch.long),
            "labels": torch.tensor(y),
        }
        for p, y in zip(preds, labels)
    ]
    return DataLoader(rows, batch_size=batch_size)


def _trainer(tmp_path: Path, mlflow: bool = True, **kwargs) -> L.Trainer:
    """A CPU trainer that logs to an MLflow store under ``tmp_path`` (or nowhere)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    logger = (
        MLFlowLogger(
            experiment_name="unit",
            tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db",
            artifact_location=str(tmp_path / "mlruns" / "artifacts"),
        )
        if mlflow
        else False
    )
    return L.Trainer(
        default_root_dir=tmp_path,
        logger=logger,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[ConfusionMatrixPlot()],
        **kwargs,
    )


def _artifacts(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "mlruns" / "artifacts"
    return {
        p.relative_to(root).as_posix().split("/", 2)[-1]: p for p in root.rglob("*") if p.is_file()
    }


def test_metrics_and_confusion_matrix_of_known_predictions(tmp_path):
    preds = [1, 1, 0, 0, 1, 0, 1, 1]
    labels = [1, 0, 0, 1, 1, 0, 0, 1]  # TP 3, FP 2, TN 2, FN 1
    module = SequenceClassification(Lookup(), label_names=["different", "same"])
    trainer = _trainer(tmp_path)
    [test] = trainer.test(module, dataloaders=_batches(preds, labels), verbose=False)
    assert test["test/acc"] == pytest.approx(5 / 8)
    assert test["test/precision"] == pytest.approx(3 / 5)
    assert test["test/recall"] == pytest.approx(3 / 4)
    assert test["test/f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    logits = Lookup().table.detach()[torch.tensor(preds)]
    assert test["test/loss"] == pytest.approx(
        float(nn.functional.cross_entropy(logits, torch.tensor(labels)))
    )
    [val] = trainer.validate(module, dataloaders=_batches(preds[:4], labels[:4]), verbose=False)
    assert val["val/acc"] == pytest.approx(2 / 4)  # the test epoch's counts were reset

    artifacts = _artifacts(tmp_path)
    assert {
        "confusion/test_step000000.csv",
        "confusion/test_step000000.png",
        "confusion/val_epoch000_step000000.csv",
        "confusion/val_epoch000_step000000.png",
    } <= set(artifacts)
    with open(artifacts["confusion/test_step000000.csv"]) as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["true\\predicted", "different", "same"],
        ["different", "2", "2"],
        ["same", "1", "3"],
    ]
    assert artifacts["confusion/test_step000000.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [run] = mlflow_runs(tmp_path)
    assert run["metrics"]["test/acc"][0][1] == pytest.approx(5 / 8)


def test_multiclass_metrics_are_macro_averaged(tmp_path):
    class Three(Lookup):
        num_labels = 3

        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.table = nn.Parameter(torch.eye(3) * 3)

    preds, labels = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    module = SequenceClassification(Three())
    [test] = _trainer(tmp_path, mlflow=False).test(
        module, dataloaders=_batches(preds, labels), verbose=False
    )
    assert test["test/acc"] == pytest.approx(4 / 6)
    # recall per label: 1/1, 2/3, 1/2; precision: 1/2, 2/2, 1/2
    assert test["test/recall"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert test["test/precision"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def _tiny_hf(tmp_path: Path) -> Path:
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(
        HFConfig(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    ).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _random_batches(n: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50000, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 9:] = 0  # right padding on every other row
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)
    ]
    return DataLoader(rows, batch_size=4)


@pytest.mark.parametrize("kind", ["lora", "linear_probe"])
def test_only_adapters_and_head_train_and_the_count_is_logged(kind, tmp_path, capsys):
    pytest.importorskip("transformers")
    hf = _tiny_hf(tmp_path)
    net = lora_classifier(hf) if kind == "lora" else linear_probe(hf, dropout=0.0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    expected = {"score.weight"} | (
        {n for n in before if ".lora_" in n} if kind == "lora" else set()
    )
    assert trainable == expected
    module = SequenceClassification(
        net, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-2)
    )
    [optimizer] = [module.configure_optimizers()["optimizer"]]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(net.get_parameter(n)) for n in trainable
    }

    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=_random_batches(12))
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert (
        "score.weight" in changed and changed <= trainable
    )  # the frozen base is exactly as loaded
    if kind == "lora":
        assert any(".lora_B." in n for n in changed)

    summary = trainable_parameter_summary(net)
    assert f"SequenceClassifier: {summary}" in capsys.readouterr().out
    [run] = mlflow_runs(tmp_path)
    assert run["params"]["trainable_params"] == str(summary.trainable)
    assert run["params"]["total_params"] == str(summary.total)
    assert float(run["params"]["trainable_percent"]) == pytest.approx(100 * summary.share, abs=1e-4)
    if kind == "linear_probe":
        assert summary.trainable == 2 * 16


def test_checkpoint_rebuilds_the_network_from_a_weights_only_load(tmp_path):
    pytest.importorskip("transformers")
    net = lora_classifier(_tiny_hf(tmp_path), dropout=0.0)
    module = SequenceClassification(
        net, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-2)
    )
    trainer = _trainer(tmp_path, mlflow=False, max_steps=2, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=_random_batches(8))
    trainer.save_checkpoint(tmp_path / "c.ckpt")

    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    spec = ckpt[NETWORK_KEY]
    assert spec["target"] == "medlm.models.classifier.SequenceClassifier"
    assert spec["config"]["num_labels"] == 2 and spec["config"]["pad_token_id"] == 50256
    assert spec["lora"]["r"] == 8
    back = load_network(tmp_path / "c.ckpt")
    assert {n for n, p in back.named_parameters() if p.requires_grad} == {
        n for n, p in net.named_parameters() if p.requires_grad
    }
    batch = next(iter(_random_batches(4, seed=3)))
    with torch.no_grad():
        torch.testing.assert_close(
            back(batch["input_ids"], batch["attention_mask"]),
            net.eval()(batch["input_ids"], batch["attention_mask"]),
        )

    probe = linear_probe(tmp_path / "hf")
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in probe.state_dict().items()},
            NETWORK_KEY: network_spec(probe),
        },
        tmp_path / "probe.ckpt",
    )
    back = load_network(tmp_path / "probe.ckpt")
    assert {n for n, p in back.named_parameters() if p.requires_grad} == {"score.weight"}
    with pytest.raises(
        MedlmError, match="probe.ckpt: this classifier has no LoRA adapters.*--merged"
    ):
        export_classifier(back, tmp_path / "out", merged=False, source=str(tmp_path / "probe.ckpt"))


def test_wrong_settings_are_config_errors(tmp_path):
    backbone = GPT2(GPT2Config(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ConfigError, match="label_names: 3 names for 2 labels"):
        SequenceClassification(SequenceClassifier(backbone), label_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="not a sequence classifier"):
        SequenceClassification(backbone)
    with pytest.raises(MedlmError, match="not a medlm checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "lm.ckpt")
        load_network(tmp_path / "lm.ckpt")
