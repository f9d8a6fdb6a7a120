"""HellaSwagEval in a real fit: a tiny GPT-2 on token shards, hand-made HellaSwag-format items (a
fixture, not the benchmark), scored at every validation beside val/loss with the counts of the
scorer on the same weights; read once; a bad file or vocabulary stops the fit before its first step;
and two DDP processes over gloo log the counts one process gets."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

import medlm.callbacks.hellaswag as hellaswag_callback
from medlm.callbacks.hellaswag import HellaSwagEval
from medlm.data.shard_datamodule import ShardDataModule
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError, MedlmError
from medlm.eval.hellaswag import HellaSwagCounts, load_hellaswag, score_hellaswag
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.modules.causal_lm import CausalLM
from tests.eval.test_hellaswag import ITEMS

TOK = load_tokenizer("gpt2")


def write_items(path: Path, n: int = 10) -> Path:
    """``n`` HellaSwag-format lines made from the hand-made items of tests/eval (labels rotated)."""
    lines = []
    for k in range(n):
        ctx, endings, label = ITEMS[k % len(ITEMS)]
        row = {"ind": k, "ctx": ctx, "endings": endings, "label": (label + k // 5) % 4}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_module(vocab_size: int = 50257) -> CausalLM:
    torch.manual_seed(0)
    net = GPT2(GPT2Config(block_size=64, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16))
    return CausalLM(net, partial(torch.optim.AdamW, lr=3e-3))


class Recorded(Logger):
    """Every metric logged, with its step."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self) -> str:
        return "recorded"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.logged.setdefault(key, []).append((step, float(value)))


class Snapshots(L.Callback):
    """The network's weights and mode at every validation end (after HellaSwag), and the number
    of training batches run."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.train_batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert pl_module.net.training, "HellaSwag left the network in eval mode"
        self.train_batches += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.weights.append({k: v.clone() for k, v in pl_module.net.state_dict().items()})


def fit(shard_dir: Path, callback: HellaSwagEval, module: CausalLM | None = None, **trainer_kw):
    logger, snaps = Recorded(), Snapshots()
    module = module or tiny_module()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        logger=logger,
        callbacks=[callback, snaps],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    )
    dm = ShardDataModule(str(shard_dir), block_size=32, batch_size=4, seed=1)
    trainer.fit(module, datamodule=dm)
    return trainer, module, logger, snaps


def test_scored_at_every_validation_beside_val_loss(
    tmp_path: Path, shard_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_items(tmp_path / "hellaswag_val.jsonl", 10)
    loads = []

    def counting_load(*args, **kwargs):
        loads.append(args)
        return load_hellaswag(*args, **kwargs)

    monkeypatch.setattr(hellaswag_callback, "load_hellaswag", counting_load)
    callback = HellaSwagEval(path=str(path), limit=9, batch_size=4)
    trainer, module, logger, snaps = fit(shard_dir, callback)

    assert trainer.global_step == 4 and loads == [(str(path), 9, "Rowan/hellaswag")]
    val_steps = [s for s, _ in logger.logged["val/loss"]]
    assert len(val_steps) == 2
    for name in ("acc", "acc_norm", "acc_norm_bytes"):
        assert [s for s, _ in logger.logged[f"hellaswag/{name}"]] == val_steps
    assert [s for s, _ in callback.history] == [2, 4]

    # each logged value is the scorer's on the weights the network had at that validation
    items = load_hellaswag(path, limit=9)
    net = tiny_module().net
    for k, weights in enumerate(snaps.weights):
        net.load_state_dict(weights)
        want = score_hellaswag(net.eval(), TOK, items, batch_size=3).metrics()
        assert callback.history[k][1] == want and want["n"] == 9
        for name in ("acc", "acc_norm", "acc_norm_bytes"):
            assert logger.logged[f"hellaswag/{name}"][k][1] == pytest.approx(want[name])
    assert (
        snaps.weights[0]["transformer.wte.weight"]
        .ne(snaps.weights[1]["transformer.wte.weight"])
        .any()
    )
    assert float(trainer.callback_metrics["hellaswag/acc_norm"]) == pytest.approx(
        callback.history[-1][1]["acc_norm"]
    )


def test_evaluate_puts_the_network_back_as_it_was(tmp_path: Path, shard_dir: Path) -> None:
    callback = HellaSwagEval(path=str(write_items(tmp_path / "val.jsonl", 3)))
    trainer, module, _, _ = fit(shard_dir, callback)
    module.net.train()
    module.zero_grad(set_to_none=True)
    metrics = callback.evaluate(trainer, module)
    assert metrics["n"] == 3 and module.net.training
    assert all(p.grad is None for p in module.net.parameters())


@pytest.mark.parametrize(
    "line, error, message",
    [
        (
            {"ctx": "A man", "endings": ["a", "b", "c"], "label": 0},
            DataError,
            "line 2: 3 endings; a HellaSwag item has 4",
        ),
        (
            {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4},
            DataError,
            "line 2: label 4 is not an ending's index",
        ),
    ],
)
def test_a_bad_file_stops_the_fit_before_its_first_step(
    tmp_path: Path, shard_dir: Path, line: dict, error: type, message: str
) -> None:
    path = write_items(tmp_path / "val.jsonl", 1)
    path.write_text(path.read_text() + json.dumps(line) + "\n")
    snaps = Snapshots()
    with pytest.raises(error, match=message):
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=2,
            logger=False,
            callbacks=[HellaSwagEval(path=str(path)), snaps],
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(tiny_module(), datamodule=ShardDataModule(str(shard_dir), block_size=32))
    assert snaps.train_batches == 0


def test_missing_file_and_wrong_vocabulary_stop_the_fit(
    tmp_path: Path, shard_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no_such_file.jsonl"
    with pytest.raises(DataError, match=f"callbacks.hellaswag.path={missing}: no such file"):
        fit(shard_dir, HellaSwagEval(path=str(missing)))
    monkeypatch.setenv("MEDLM_DATA_DIR", str(tmp_path))  # no hellaswag/ there; the Hub is offline
    with pytest.raises(MedlmError, match="Rowan/hellaswag.*set callbacks.hellaswag.path=/path/"):
        fit(shard_dir, HellaSwagEval())
    path = write_items(tmp_path / "val.jsonl", 2)
    with pytest.raises(ConfigError, match=r"callbacks.hellaswag: the model's vocabulary \(1,000"):
        fit(shard_dir, HellaSwagEval(path=str(path)), module=tiny_module(vocab_size=1000))
    with pytest.raises(ConfigError, match="callbacks.hellaswag.limit"):
        HellaSwagEval(limit=0)
    with pytest.raises(ConfigError, match="callbacks.hellaswag.batch_size"):
        HellaSwagEval(batch_size=0)


# --------------------------------------------------------------------- DDP: 2 processes, gloo


def _ddp_rank(rank: int, port: int, shard_dir: str, items: str, out: str) -> None:
    """One of two DDP processes, started here as a cluster launcher would (LOCAL_RANK set), so
    that Lightning joins them instead of launching its own."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        NODE_RANK="0",
        LOCAL_RANK=str(rank),
        RANK=str(rank),
    )
    torch.set_num_threads(1)
    callback = HellaSwagEval(path=items, batch_size=3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=2,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = tiny_module()
    trainer.fit(module, datamodule=ShardDataModule(shard_dir, block_size=32, batch_size=2))
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "local": vars(callback.local_counts),
        "history": callback.history,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        torch.save(module.net.state_dict(), Path(out, "net.pt"))


@pytest.mark.slow
def test_two_ddp_ranks_log_the_counts_of_one_process(tmp_path: Path, shard_dir: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    items_path = write_items(tmp_path / "val.jsonl", 11)  # odd: the ranks get 6 and 5 items
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _ddp_rank,
        args=(port, str(shard_dir), str(items_path), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]

    net = tiny_module().net
    net.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    items = load_hellaswag(items_path)
    single = score_hellaswag(net.eval(), TOK, items, batch_size=5)
    local = [HellaSwagCounts(**r["local"]) for r in ranks]
    assert (local[0].n, local[1].n) == (6, 5)
    assert local[0] + local[1] == single
    for r in ranks:  # every rank logged the summed counts, after the last step
        [(step, metrics)] = r["history"]
        assert step == 2 and metrics == single.metrics()
