"""Shared fixtures. Tests that read ../shared are marked ``shared_data``: without the files they
skip, unless ``--require-shared-data`` or ``MEDLM_REQUIRE_SHARED_DATA=1`` (CI) turns that skip into
a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-shared-data",
        action="store_true",
        help="fail, instead of skipping, tests whose real data files are missing",
    )


def _require(request: pytest.FixtureRequest, path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = f"{what} not found at {path}"
    if (
        request.config.getoption("--require-shared-data")
        or os.environ.get("MEDLM_REQUIRE_SHARED_DATA") == "1"
    ):
        pytest.fail(
            msg + " (real data is required: --require-shared-data / MEDLM_REQUIRE_SHARED_DATA=1)"
        )
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data_dir(request: pytest.FixtureRequest) -> Path:
    """The real datasets: MEDLM_DATA_DIR, else ../shared/data."""
    path = Path(os.environ.get("MEDLM_DATA_DIR", SHARED / "data"))
    return _require(request, path, "real data directory (MEDLM_DATA_DIR)")


# The Hugging Face libraries offline from the start: huggingface_hub reads HF_HUB_OFFLINE once, when
# it is imported, which test modules do while they are collected, before any fixture runs (without
# this, a test of the Hub fallback waited ~20 s on the network instead of failing at once)
for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_flag] = "1"

# tiktoken's GPT-2 files reachable offline for every test, also for modules that load the tokenizer
# when they are collected
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken-cache").exists():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: the Hugging Face libraries are told to stay offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _project_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs a test starts land in its own temporary project (MEDLM_HOME), never in the checkout's
    mlruns/ and logs/; a test that needs another project sets MEDLM_HOME itself."""
    monkeypatch.setenv("MEDLM_HOME", str(tmp_path))


@pytest.fixture(scope="session")
def tiny_hf_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 saved by transformers: the offline stand-in for hub weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_hf_gpt2")
    config = GPT2Config(vocab_size=50257, n_positions=256, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def token_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the session: each dataset and tokenizer is tokenised once."""
    return tmp_path_factory.mktemp("token_cache")
