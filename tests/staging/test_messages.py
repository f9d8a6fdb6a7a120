"""Every message that sends a user to staging names the real command: ``medlm-prepare stage DIR``
with the option and the name that stage what is missing."""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import tiktoken

from medlm.data.sources import HubSource
from medlm.errors import MedlmError
from medlm.staging.data_files import DATASETS, stage_command


@pytest.mark.parametrize(
    ("hub_id", "config", "name"),
    [
        ("qiaojin/PubMedQA", "pqa_labeled", "pubmedqa"),
        ("qiaojin/PubMedQA", "pqa_artificial", "pubmedqa_artificial"),
        ("qiaojin/PubMedQA", "pqa_unlabeled", "pubmedqa_unlabeled"),
        ("curaihealth/medical_questions_pairs", None, "question_pairs"),
        ("nvidia/HelpSteer", None, "helpsteer"),
        ("Rowan/hellaswag", None, "hellaswag"),
        ("HuggingFaceFW/fineweb-edu", "sample-100BT", "fineweb_edu"),
    ],
)
def test_an_unreachable_hub_dataset_names_the_stage_command_for_it(
    hub_id: str, config: str | None, name: str
) -> None:
    assert name in DATASETS
    message = HubSource(hub_id, config, hint_subdir="x", hint_file="y").unreachable_message()
    assert message.endswith(
        f"; on a machine with internet, medlm-prepare stage DIR --datasets {name} writes it "
        "for MEDLM_DATA_DIR=DIR/data"
    )


def test_a_dataset_staging_does_not_know_is_not_sent_there() -> None:
    assert stage_command("tatsu-lab/alpaca", None) is None
    message = HubSource("tatsu-lab/alpaca", None).unreachable_message()
    assert "medlm-prepare" not in message


def test_a_model_that_cannot_be_downloaded_names_the_stage_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlm.models.checkpoint import resolve_pretrained

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(MedlmError) as info:
        resolve_pretrained("meta-llama/Llama-3.2-1B")
    message = str(info.value)
    assert message.startswith("meta-llama/Llama-3.2-1B: could not download the model")
    assert message.endswith(
        "(on a machine with internet, medlm-prepare stage DIR --models meta-llama/Llama-3.2-1B "
        "writes DIR/models/Llama-3.2-1B)"
    )


def test_missing_tiktoken_files_name_the_stage_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from medlm.data.tokenizer import TiktokenTokenizer

    def offline(name: str):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(MedlmError, match="medlm-prepare stage DIR --tokenizers gpt2 writes DIR/"):
        TiktokenTokenizer("gpt2")


def test_an_unreachable_corpus_for_shards_names_the_stage_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medlm.data.shard_sources import open_source

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    source = open_source("HuggingFaceFW/fineweb-edu", hub_config="sample-10BT")
    with pytest.raises(MedlmError) as info:
        next(source.documents())
    assert str(info.value).endswith(
        "give local JSONL/parquet files as SOURCE (medlm-prepare stage DIR --datasets "
        "fineweb_edu writes a slice of it)"
    )
