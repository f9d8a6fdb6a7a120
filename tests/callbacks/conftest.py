"""Fixtures of the callback tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlm.data.shard_writer import prepare_shards
from tests.data.test_shards import make_docs, write_jsonl


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small GPT-2 token shards of generated documents (about 19k tokens, 1.5k of them val)."""
    tmp = tmp_path_factory.mktemp("callback_shards")
    src = write_jsonl(tmp / "docs.jsonl", make_docs(600, seed=5))
    prepare_shards(
        [str(src)], tmp / "out", shard_tokens=4000, val_tokens=1500, workers=1, progress=False
    )
    return tmp / "out"
