"""The medquad_alpaca experiment end to end: its config, a short instruction-tuning run that lowers
the answer-token loss and logs sample answers at each validation, MedQuAD converted on first use,
and the real-weights variant (model=gpt2_pretrained)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from hydra.utils import instantiate

from medlm.data.alpaca import ALPACA_TEMPLATE
from medlm.data.instruct import InstructionDataModule
from medlm.data.medquad import convert
from medlm.modules.causal_lm import CausalLM
from medlm.training import train
from tests.helpers import compose_train, mlflow_runs

ORGANS = ("liver", "heart", "lung", "kidney", "skin", "brain")


@pytest.fixture(autouse=True)
def _local_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDLM_CACHE_DIR", raising=False)


def fact(i: int) -> dict:
    """A learnable instruction: the answer repeats the question's disease and names its organ."""
    return {
        "instruction": f"Which organ does disease number {i} affect?",
        "input": "",
        "output": f"Disease number {i} affects the {ORGANS[i % len(ORGANS)]}.",
    }


def learnable_dir(tmp_path: Path) -> Path:
    d = tmp_path / "facts"
    d.mkdir()
    for split, ids in (("train", range(160)), ("val", range(500, 508)), ("test", range(600, 606))):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(fact(i)) + "\n" for i in ids))
    return d


def test_experiment_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLM_DATA_DIR", str(tmp_path / "data"))
    cfg = compose_train(tmp_path, ["experiment=medquad_alpaca"])
    assert cfg.task_name == "medquad_alpaca" and cfg.test is True
    assert cfg.data._target_ == "medlm.data.instruct.InstructionDataModule"
    assert cfg.model._target_ == "medlm.models.gpt2.GPT2"
    assert cfg.model.config.block_size == cfg.data.block_size == 256
    assert cfg.data.packing is True and cfg.trainer.accelerator == "cpu"
    # the prompts the converter's length filter counted are the prompts trained on
    assert cfg.data.template is None  # the one Alpaca template, the converter's too
    assert cfg.data.path == str(tmp_path / ".cache" / "medlm" / "medquad_alpaca")
    assert cfg.data.medquad_src == str(tmp_path / "data" / "medquad" / "xml")
    dm = instantiate(cfg.data)
    assert isinstance(dm, InstructionDataModule) and dm.name == "medquad_alpaca"
    assert dm.template == dict(ALPACA_TEMPLATE)


def test_short_run_lowers_the_answer_token_loss_and_logs_sample_answers(tmp_path: Path) -> None:
    d = learnable_dir(tmp_path)
    # a smaller model than gpt2_tiny and short blocks: the 50,257-way output layer dominates a CPU
    # step
    cfg = compose_train(
        tmp_path,
        [
            "experiment=medquad_alpaca",
            f"data.path={d}",
            "data.medquad_src=null",
            "data.block_size=64",
            "data.batch_size=4",
            "model.config.block_size=64",
            "model.config.n_embd=16",
            "model.config.n_head=2",
            "model.config.n_layer=2",
            "optim.lr=2e-2",
            "scheduler.warmup_steps=2",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=6",
            "callbacks.samples.max_new_tokens=12",
        ],
        cache_dir=tmp_path / "cache",
    )

    # the answer-token loss of the very model the run starts from (train() seeds, then builds the
    # net)
    L.seed_everything(cfg.seed)
    net = instantiate(cfg.model)
    dm = instantiate(cfg.data)
    untrained = CausalLM(net, optimizer=torch.optim.AdamW).eval()
    with torch.no_grad():
        sums = [untrained.loss(b) for b in dm.val_dataloader()]
    initial = float(sum(loss * n for loss, n in sums) / sum(n for _, n in sums))
    assert initial == pytest.approx(math.log(50257), abs=0.5)

    train(cfg)

    [run] = mlflow_runs(tmp_path)
    val = [v for _, v in run["metrics"]["val/loss"]]
    assert len(val) == 2
    assert val[0] < initial and val[-1] < val[0] and val[-1] < initial - 3.0, (initial, val)
    assert run["metrics"]["val/ppl"][-1][1] == pytest.approx(math.exp(val[-1]), rel=1e-4)
    assert "test/loss" in run["metrics"] and "train/loss_epoch" in run["metrics"]

    artifacts = sorted((tmp_path / "mlruns" / "artifacts").rglob("samples/epoch_*.md"))
    assert len(artifacts) == 2  # one per validation
    text = artifacts[-1].read_text()
    assert (
        "Which organ does disease number 500 affect?\n\n### Response:" in text
    )  # the first held-out question
    assert fact(500)["output"] in text  # its reference answer
    assert text.count("**Generated**") == 3


@pytest.mark.shared_data
def test_real_medquad_is_converted_on_first_use(shared_data_dir: Path, tmp_path: Path) -> None:
    src = shared_data_dir / "medquad" / "xml" / "9_CDC_QA"  # one source folder keeps the test short
    out = tmp_path / "medquad_alpaca"
    cfg = compose_train(
        tmp_path,
        [
            "experiment=medquad_alpaca",
            f"data.path={out}",
            f"data.medquad_src={src}",
            "debug=fdr",
            "callbacks.samples.max_new_tokens=4",
            "data.batch_size=2",
        ],
        cache_dir=tmp_path / "cache",
    )
    train(cfg)
    reference = tmp_path / "reference"
    summary = convert(src, reference)  # what `medlm-prepare medquad SRC OUT` writes
    assert summary.splits == {"train": 232, "val": 13, "test": 13}
    for split in ("train", "val", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (reference / f"{split}.jsonl").read_bytes()


def test_real_weights_variant_runs(tmp_path: Path, tiny_hf_gpt2: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "experiment=medquad_alpaca",
            "model=gpt2_pretrained",
            f"model.pretrained={tiny_hf_gpt2}",
            f"data.path={learnable_dir(tmp_path)}",
            "data.medquad_src=null",
            "debug=fdr",
            "callbacks.samples.max_new_tokens=4",
            "data.batch_size=2",
        ],
        cache_dir=tmp_path / "cache",
    )
    assert "config" not in cfg.model
    train(cfg)
