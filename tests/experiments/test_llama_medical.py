"""The llama_medical experiment: composes with every trainer config, runs through medlm.train,
records
in MLflow, and its checkpoint generates with medlm-generate and exports to transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medlm.cli import export, generate
from medlm.models.checkpoint import load_network
from medlm.models.llama import Llama
from medlm.training import train
from tests.helpers import compose_train, mlflow_runs

SMALL = ["data.batch_size=4", "data.block_size=64", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def test_composes_a_small_llama_with_cpu_gpu_and_ddp_trainers(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=llama_medical"])
    assert cfg.task_name == "llama_medical" and cfg.model._target_ == "medlm.models.llama.Llama"
    m = cfg.model.config
    assert (m.vocab_size, m.n_embd, m.n_layer, m.n_head, m.n_kv_head, m.block_size) == (
        50257,
        128,
        4,
        4,
        2,
        128,
    )
    assert (
        cfg.data._target_ == "medlm.data.pubmedqa.PubMedQADataModule" and cfg.data.block_size == 128
    )
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("cpu", "32-true")
    assert cfg.callbacks.samples.temperature == 0.7 and cfg.callbacks.samples.top_p == 0.9
    assert "MLFlowLogger" in cfg.logger.mlflow._target_
    gpu = compose_train(tmp_path, ["experiment=llama_medical", "trainer=gpu"]).trainer
    assert (gpu.accelerator, gpu.devices, gpu.precision) == ("gpu", 1, "bf16-mixed")
    ddp = compose_train(tmp_path, ["experiment=llama_medical", "trainer=ddp"]).trainer
    assert (ddp.accelerator, ddp.strategy, ddp.precision) == ("gpu", "ddp", "bf16-mixed")


@pytest.mark.usefixtures("shared_data_dir")
def test_fast_dev_run(tmp_path: Path, cache_dir: Path) -> None:
    train(
        compose_train(
            tmp_path, ["experiment=llama_medical", "debug=fdr", *SMALL], cache_dir=cache_dir
        )
    )


@pytest.mark.usefixtures("shared_data_dir")
def test_pretrained_llama_directory_fine_tunes(tmp_path: Path, cache_dir: Path) -> None:
    """model=llama_pretrained: a local Hugging Face Llama (tiny, GPT-2 vocabulary) through the same
    run."""
    import transformers

    torch.manual_seed(0)
    hf_dir = tmp_path / "hf_llama"
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=50257,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    ).save_pretrained(hf_dir)
    cfg = compose_train(
        tmp_path,
        [
            "experiment=llama_medical",
            "model=llama_pretrained",
            f"model.pretrained={hf_dir}",
            "debug=fdr",
            *SMALL,
        ],
        cache_dir=cache_dir,
    )
    assert cfg.model._target_ == "medlm.models.llama.Llama.from_pretrained"
    train(cfg)


@pytest.mark.usefixtures("shared_data_dir")
def test_trains_records_generates_and_exports(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "experiment=llama_medical",
            *SMALL,
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=6",
            "+trainer.limit_val_batches=2",
            "callbacks.samples.max_new_tokens=6",
        ],
        cache_dir=cache_dir,
    )
    train(cfg)

    [run] = mlflow_runs(tmp_path)
    assert (
        run["tags"]["task_name"] == "llama_medical"
        and run["params"]["model.config.n_kv_head"] == "2"
    )
    losses = [v for _, v in run["metrics"]["train/loss"]]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5
    assert len(run["metrics"]["val/loss"]) == 2
    samples = list((tmp_path / "run" / "samples").glob("epoch_*.md"))
    assert len(samples) == 2 and "**Generated**" in samples[0].read_text()

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    net = load_network(ckpt)
    assert isinstance(net, Llama)
    capsys.readouterr()  # the training's own output
    generate.main(
        [str(ckpt), "--prompt", "Question: Does", "--max-new-tokens", "5", "--temperature", "0"]
    )
    out = capsys.readouterr().out
    assert out.startswith("Question: Does") and len(out) > len("Question: Does\n")

    export.main([str(ckpt), str(tmp_path / "hf")])
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - net(ids)).abs().max() <= 1e-4
