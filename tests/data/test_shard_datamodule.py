"""ShardDataModule: windows and labels, the seeded per-epoch order, rank disjointness and coverage,
resuming the loader mid-epoch, and shards that do not fit the configuration."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlm.data.shard_datamodule import EpochOrder, ShardDataModule, ShardSampler
from medlm.data.shard_writer import prepare_shards
from medlm.data.shards import MANIFEST, load_tokens, read_manifest
from medlm.errors import ConfigError, DataError
from tests.data.test_shards import make_docs, write_jsonl


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 20k GPT-2 tokens: train shards of 1,500 (the last one shorter), 1,000 validation."""
    tmp = tmp_path_factory.mktemp("shards")
    src = write_jsonl(tmp / "docs.jsonl", make_docs(600, seed=7))
    prepare_shards(
        [str(src)], tmp / "out", shard_tokens=1500, val_tokens=1000, workers=1, progress=False
    )
    return tmp / "out"


def module(shard_dir: Path, **kwargs) -> ShardDataModule:
    kwargs.setdefault("block_size", 16)
    kwargs.setdefault("batch_size", 3)
    dm = ShardDataModule(str(shard_dir), **kwargs)
    dm.setup("fit")
    return dm


def epoch_items(
    dm: ShardDataModule, world: int, rank: int, epoch: int, batch_size: int | None = None
) -> list:
    sampler = ShardSampler(dm.train_dataset, batch_size or dm.batch_size, world, rank, dm.seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_windows_are_next_token_pairs_of_shard_tokens(shard_dir: Path) -> None:
    dm = module(shard_dir)
    manifest = read_manifest(shard_dir)
    train = [
        load_tokens(shard_dir / s["name"]) for s in manifest["shards"] if s["split"] == "train"
    ]
    assert dm.train_dataset.counts == [(len(t) - 1) // 16 for t in train]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 16)
    assert batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    shard, start = epoch_items(dm, 1, 0, 0)[0]
    assert batch["input_ids"][0].tolist() == train[shard][start : start + 16].tolist()
    assert batch["labels"][0].tolist() == train[shard][start + 1 : start + 17].tolist()
    val = next(iter(dm.val_dataloader()))  # validation: the plain grid, in order
    first_val = load_tokens(shard_dir / manifest["shards"][0]["name"])
    assert val["input_ids"][1].tolist() == first_val[16:32].tolist()


def test_ranks_read_disjoint_parts_of_every_global_batch(shard_dir: Path) -> None:
    dm = module(shard_dir)
    single = epoch_items(dm, 1, 0, epoch=0, batch_size=6)  # one process, twice the micro-batch
    r0, r1 = epoch_items(dm, 2, 0, epoch=0), epoch_items(dm, 2, 1, epoch=0)
    assert len(r0) == len(r1) == len(single) // 2
    assert not set(r0) & set(r1)
    for step in range(
        len(r0) // 3
    ):  # global batch k of the two ranks = batch k of the single process
        assert (
            r0[3 * step : 3 * step + 3] + r1[3 * step : 3 * step + 3]
            == single[6 * step : 6 * step + 6]
        )
    # coverage: every window once, but for the tail that does not fill a global batch
    everything = set(
        EpochOrder(dm.train_dataset, dm.seed, 0)[p] for p in range(len(dm.train_dataset))
    )
    assert len(everything) == len(dm.train_dataset)
    assert len(set(single)) == len(single) == len(dm.train_dataset) // 6 * 6
    assert set(single) <= everything


def test_the_order_is_seeded_per_epoch(shard_dir: Path) -> None:
    dm = module(shard_dir)
    e0, e0_again, e1 = epoch_items(dm, 1, 0, 0), epoch_items(dm, 1, 0, 0), epoch_items(dm, 1, 0, 1)
    assert e0 == e0_again and e0 != e1
    assert epoch_items(module(shard_dir, seed=5), 1, 0, 0) != e0
    shard_orders = [list(dict.fromkeys(s for s, _ in items)) for items in (e0, e1)]
    assert shard_orders[0] != shard_orders[1]  # the shards come in another order
    offsets = {s: {start % 16 for s2, start in e0 if s2 == s} for s in set(s for s, _ in e0)}
    assert all(len(o) == 1 for o in offsets.values())  # one grid per shard and epoch...
    moved = [s for s in offsets if {st % 16 for s2, st in e1 if s2 == s} != offsets[s]]
    assert moved, "no shard's grid moved between epochs"  # ...that moves from epoch to epoch


def test_no_shuffle_reads_the_plain_grid_in_order(shard_dir: Path) -> None:
    dm = module(shard_dir, shuffle=False, batch_size=2)
    batches = list(dm.train_dataloader())
    flat = torch.cat([b["input_ids"] for b in batches])
    assert torch.equal(
        flat, torch.stack([dm.train_dataset[i]["input_ids"] for i in range(len(flat))])
    )


def test_loader_resumes_mid_epoch_with_the_next_batch(shard_dir: Path) -> None:
    dm = module(shard_dir)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    straight = [b["input_ids"] for b in loader]
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 5}

    resumed = dm.train_dataloader()  # a new process: a new loader, its state from the checkpoint
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = [b["input_ids"] for b in resumed]
    assert len(rest) == len(straight) - 5
    assert all(torch.equal(a, b) for a, b in zip(rest, straight[5:]))
    assert resumed.state_dict() == {"epoch": 1, "batches": len(straight)}
    resumed.sampler.set_epoch(2)  # the next epoch starts from its beginning
    assert len(list(resumed)) == len(straight)

    other = dm.train_dataloader()  # a checkpoint of an earlier epoch does not skip in a later one
    other.load_state_dict({"epoch": 0, "batches": 5})
    other.sampler.set_epoch(1)
    assert len(list(other)) == len(straight)


def test_sample_prompts_are_openings_of_validation_documents(shard_dir: Path) -> None:
    dm = module(shard_dir)
    prompts = dm.sample_prompts(2)
    docs = make_docs(600, seed=7)
    assert (
        len(prompts) == 2
        and docs[0].startswith(prompts[0][:20])
        and docs[1].startswith(prompts[1][:20])
    )


# ------------------------------------------------------------------------------------ bad input


def tiny_llama_tokenizer(tmp_path: Path) -> Path:
    merges = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld", b" world"]
    tokens = [bytes([b]) for b in range(256)] + merges
    path = tmp_path / "tokenizer.model"
    path.write_bytes(
        b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for r, t in enumerate(tokens))
    )
    return path


def test_shards_of_another_tokenizer_are_refused(tmp_path: Path) -> None:
    spec = f"llama3:{tiny_llama_tokenizer(tmp_path)}"
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(100))
    prepare_shards(
        [str(src)],
        tmp_path / "out",
        tokenizer=spec,
        shard_tokens=2000,
        val_tokens=500,
        workers=1,
        progress=False,
    )
    assert read_manifest(tmp_path / "out")["dtype"] == "uint16"  # 265 + 256 special tokens
    with pytest.raises(
        ConfigError, match=r"written with tokenizer 'llama3:.*vocab_size 521.*data.tokenizer='gpt2'"
    ):
        module(tmp_path / "out")
    module(tmp_path / "out", tokenizer=spec)  # the right tokenizer reads them


def test_a_shard_whose_header_has_another_vocabulary_is_refused(
    shard_dir: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    name = read_manifest(copy)["shards"][2]["name"]
    raw = bytearray((copy / name).read_bytes())
    raw[24:28] = (128256).to_bytes(4, "little")  # the header's vocab_size
    (copy / name).write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match=rf"{name}: shard written with a vocabulary of 128256 tokens"
    ):
        module(copy)


def test_a_truncated_shard_is_named(shard_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    name = read_manifest(copy)["shards"][1]["name"]
    (copy / name).write_bytes((copy / name).read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"{name}: truncated token shard"):
        module(copy)


def test_a_block_larger_than_every_shard_is_a_config_error(shard_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.block_size=5000 is larger than every train shard"):
        module(shard_dir, block_size=5000)


def test_an_unfinished_preparation_and_a_missing_manifest(shard_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["complete"] = False
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        DataError, match="did not finish; run the same medlm-prepare shards command again"
    ):
        module(copy)
    with pytest.raises(DataError, match="no shard manifest"):
        module(tmp_path)
    with pytest.raises(ConfigError, match="data.path"):
        ShardDataModule(None)


def test_fewer_windows_than_one_global_batch(shard_dir: Path) -> None:
    dm = module(shard_dir, block_size=64, batch_size=1000)
    with pytest.raises(DataError, match="fewer than one global batch of 1000"):
        dm.train_dataloader()
    assert np.all(np.asarray(dm.train_dataset.counts) >= 0)
