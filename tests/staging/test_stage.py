"""``medlm-prepare stage``: the Hub replaced at its API boundary by :class:`FakeHub`, the staged
files read back by the DataModules, loaders and tokenizers that use them offline."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken.load
import torch

from medlm.cli.prepare import main
from medlm.staging import data_files
from tests.staging.fake_hub import (
    FakeHub,
    commit_of,
    fineweb_hub_rows,
    hellaswag_hub_rows,
    helpsteer_hub_rows,
    medquad_hub_rows,
    mqp_hub_rows,
    pubmedqa_hub_rows,
)

REPO = Path(__file__).resolve().parents[2]
# tiktoken's real GPT-2 files (tests/conftest.py points TIKTOKEN_CACHE_DIR at ../shared's copy)
SHARED_TIKTOKEN = Path(os.environ.get("TIKTOKEN_CACHE_DIR", REPO.parent / "shared/tiktoken-cache"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return FakeHub().install(monkeypatch)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["stage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())["items"]


def states(out: str) -> dict[str, str]:
    """What the summary says of each item: ``staged`` or ``already staged``."""
    found = {}
    for line in out.splitlines():
        state, sep, rest = line.strip().partition("staged  ")
        if sep and state in ("", "already "):
            found[rest.split()[0]] = state + "staged"
    return found


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- PubMedQA


def test_pubmedqa_is_staged_as_the_authors_file_and_reproduces_the_official_test_split(
    hub: FakeHub,
    shared_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medlm.data.pubmedqa import PubMedQADataModule
    from medlm.data.sources import LocalSource

    original = shared_data_dir / "pubmedqa" / "ori_pqal.json"
    hub.datasets["qiaojin/PubMedQA", "pqa_labeled", "train"] = pubmedqa_hub_rows(original)
    root = tmp_path / "stage"
    code, out, err = run(capsys, str(root), "--datasets", "pubmedqa")
    assert code == 0, err

    staged = root / "data" / "pubmedqa" / "ori_pqal.json"
    # the authors' file byte for byte, but for YEAR, which the Hub does not keep
    without_year = {
        k: {f: v for f, v in r.items() if f != "YEAR"}
        for k, r in json.loads(original.read_text()).items()
    }
    assert staged.read_text() == json.dumps(without_year, indent=4)

    monkeypatch.setenv("MEDLM_DATA_DIR", str(root / "data"))
    dm = PubMedQADataModule(cache_dir=str(tmp_path / "cache"))
    assert dm.source == LocalSource((staged,))
    assert len(dm.records()) == 1000
    assert len(dm.official_test_split()) == 500  # checked against the authors' published ids

    entry = manifest(root)["dataset:pubmedqa"]
    assert entry["source"] == "qiaojin/PubMedQA" and entry["config"] == "pqa_labeled"
    assert entry["revision"] == commit_of("qiaojin/PubMedQA")
    assert entry["rows"] == 1000
    (f,) = entry["files"]
    assert f["path"] == "data/pubmedqa/ori_pqal.json"
    assert f["size"] == staged.stat().st_size
    assert f["sha256"] == hashlib.sha256(staged.read_bytes()).hexdigest()
    assert f"export MEDLM_DATA_DIR={root / 'data'}" in out.splitlines()


def test_pubmedqa_artificial_is_staged_as_parquet_the_datamodule_reads(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlm.data.pubmedqa import PubMedQADataModule

    rows = [
        {
            "pubid": 100 + i,
            "question": f"Does drug {i} work?",
            "context": {"contexts": [f"Trial {i}."], "labels": ["RESULTS"], "meshes": ["Drug"]},
            "long_answer": f"Drug {i} works.",
            "final_decision": "yes" if i % 2 else "no",
        }
        for i in range(6)
    ]
    hub.datasets["qiaojin/PubMedQA", "pqa_artificial", "train"] = rows
    root = tmp_path / "stage"
    assert run(capsys, str(root), "--datasets", "pubmedqa_artificial")[0] == 0
    assert (root / "data" / "pubmedqa" / "pqa_artificial.parquet").is_file()
    monkeypatch.setenv("MEDLM_DATA_DIR", str(root / "data"))
    dm = PubMedQADataModule(hub_config="pqa_artificial", cache_dir=str(tmp_path / "cache"))
    records = dm.records()
    assert [r.pubid for r in records] == [str(100 + i) for i in range(6)]
    assert records[3].contexts == ("Trial 3.",) and records[3].final_decision == "yes"


# ------------------------------------------------------------------------ question pairs, MedQuAD


def test_question_pairs_are_staged_as_curais_csv(
    hub: FakeHub,
    shared_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medlm.data.question_pairs import QuestionPairsDataModule, read_pairs_csv

    original = shared_data_dir / "medical_question_pairs" / "mqp.csv"
    hub.datasets["curaihealth/medical_questions_pairs", None, "train"] = mqp_hub_rows(original)
    root = tmp_path / "stage"
    assert run(capsys, str(root), "--datasets", "question_pairs")[0] == 0
    staged = root / "data" / "medical_question_pairs" / "mqp.csv"
    assert staged.read_bytes() == original.read_bytes()  # Curai's file as published

    monkeypatch.setenv("MEDLM_DATA_DIR", str(root / "data"))
    dm = QuestionPairsDataModule(template="{question_1} {question_2}", max_length=64)
    pairs = dm.read_pairs()
    assert len(pairs) == 3048
    assert [(p.question_1, p.label) for p in pairs] == [
        (p.question_1, p.label) for p in read_pairs_csv(original)
    ]
    assert pairs[0].source.startswith(str(staged))


def test_medquad_is_staged_as_its_xml_and_converts_like_the_published_files(
    hub: FakeHub, shared_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from medlm.data.medquad import convert

    original = shared_data_dir / "medquad" / "xml"
    hub.datasets["lavita/MedQuAD", None, "train"] = medquad_hub_rows(original)
    root = tmp_path / "stage"
    code, _, err = run(capsys, str(root), "--datasets", "medquad")
    assert code == 0, err
    staged = root / "data" / "medquad" / "xml"
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        p.name for p in original.iterdir() if p.is_dir()
    )
    ours = convert(staged, tmp_path / "ours", max_tokens=None)
    theirs = convert(original, tmp_path / "theirs", max_tokens=None)
    assert ours.splits == theirs.splits and sum(ours.splits.values()) > 1000
    for split in ("train", "val", "test"):
        mine = (tmp_path / "ours" / f"{split}.jsonl").read_text()
        assert mine == (tmp_path / "theirs" / f"{split}.jsonl").read_text()
    # the folder whose answers the authors removed keeps its questions, with empty answers
    removed = ours.sources["12_MPlusHerbsSupplements_QA"]
    assert removed.read > 0 and removed.kept == 0


# ------------------------------------------------------------------- HelpSteer, HellaSwag, FineWeb


def test_helpsteer_and_hellaswag_are_read_from_the_staged_files(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlm.data.instruct import InstructionDataModule
    from medlm.data.sources import LocalSource
    from medlm.eval.hellaswag import load_hellaswag

    hub.datasets["nvidia/HelpSteer", None, "train"] = helpsteer_hub_rows(12)
    hub.datasets["nvidia/HelpSteer", None, "validation"] = helpsteer_hub_rows(3, 100, helpful=4)
    hub.datasets["Rowan/hellaswag", None, "validation"] = hellaswag_hub_rows(5)
    root = tmp_path / "stage"
    code, _, err = run(capsys, str(root), "--datasets", "helpsteer", "hellaswag")
    assert code == 0, err

    monkeypatch.setenv("MEDLM_DATA_DIR", str(root / "data"))
    dm = InstructionDataModule(
        subdir="helpsteer",
        hub_id="nvidia/HelpSteer",
        hub_splits={"train": "train", "val": "validation", "test": None},
        fields={"instruction": "prompt", "input": None, "output": "response"},
        min_values={"helpfulness": 3},
        cache_dir=str(tmp_path / "cache"),
    )
    assert dm.sources["train"] == LocalSource((root / "data/helpsteer/train.parquet",))
    assert dm.sources["val"] == LocalSource((root / "data/helpsteer/validation.parquet",))
    assert len(dm.records("train")) == 4  # helpfulness 3 or 4 of 0..4, twice over
    assert dm.records("val")[0].instruction == "What helps with headache number 100?"

    items = load_hellaswag()
    assert [i.label for i in items] == [0, 1, 2, 3, 0]
    assert items[2].ctx == "A man is sitting on a roof 2. he"
    assert items[2].where.startswith(str(root / "data/hellaswag/hellaswag_val.jsonl"))
    first = json.loads((root / "data/hellaswag/hellaswag_val.jsonl").read_text().splitlines()[0])
    assert list(first) == list(data_files.HELLASWAG_KEYS) and first["label"] == 0


def test_a_fineweb_slice_streams_into_parquet_files_that_shards_read(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlm.data.shard_writer import prepare_shards

    monkeypatch.setattr(data_files, "PARQUET_ROWS_PER_FILE", 100)
    monkeypatch.setattr(data_files, "PARQUET_ROWS_PER_GROUP", 30)
    hub.datasets["HuggingFaceFW/fineweb-edu", "sample-10BT", "train"] = fineweb_hub_rows(400)
    root = tmp_path / "stage"
    code, out, err = run(capsys, str(root), "--datasets", "fineweb_edu", "--fineweb-rows", "250")
    assert code == 0, err
    folder = root / "data" / "fineweb_edu" / "sample-10BT"
    assert sorted(p.name for p in folder.iterdir()) == [
        "train-00000.parquet",
        "train-00001.parquet",
        "train-00002.parquet",
    ]
    entry = manifest(root)["dataset:fineweb_edu"]
    assert entry["rows"] == 250 and entry["max_rows"] == 250
    assert f"medlm-prepare shards {folder} OUT_DIR" in out

    summary = prepare_shards(
        [str(folder)], tmp_path / "shards", shard_tokens=2000, workers=1, progress=False
    )
    assert summary.documents == 250


# ----------------------------------------------------------------------------- models, tokenizers


def test_a_model_is_staged_as_safetensors_and_loads(
    hub: FakeHub, tiny_hf_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from medlm.models.checkpoint import load_network

    hub.models["gpt2"] = tiny_hf_gpt2
    root = tmp_path / "stage"
    code, out, err = run(capsys, str(root), "--models", "gpt2")
    assert code == 0, err
    staged = root / "models" / "gpt2"
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        p.name for p in tiny_hf_gpt2.iterdir() if p.suffix in (".json", ".safetensors")
    )
    assert f"model.pretrained={staged}" in out.splitlines()
    ours, theirs = load_network(staged), load_network(tiny_hf_gpt2)
    idx = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(ours(idx), theirs(idx))
    assert manifest(root)["model:gpt2"]["revision"] == commit_of("gpt2")


def test_a_pickled_model_is_converted_and_its_pickle_not_kept(
    hub: FakeHub, tiny_hf_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors.torch import load_file

    from medlm.models.checkpoint import load_network

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((tiny_hf_gpt2 / "config.json").read_bytes())
    state = load_file(tiny_hf_gpt2 / "model.safetensors")
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as transformers saves it
    torch.save(state, pickled / "pytorch_model.bin")
    hub.models["someone/old-gpt2"] = pickled

    root = tmp_path / "stage"
    code, _, err = run(capsys, str(root), "--models", "someone/old-gpt2")
    assert code == 0, err
    staged = root / "models" / "old-gpt2"
    assert sorted(p.name for p in staged.iterdir()) == ["config.json", "model.safetensors"]
    idx = torch.tensor([[5, 6, 7]])
    assert torch.equal(load_network(staged)(idx), load_network(tiny_hf_gpt2)(idx))
    weights = manifest(root)["model:old-gpt2"]["weights"]
    assert weights == "pytorch_model.bin converted to safetensors"


def serve_tiktoken_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """tiktoken's download (``tiktoken.load.read_file``) served from ../shared's cached copies."""
    fetched: list[str] = []

    def read_file(url: str) -> bytes:
        fetched.append(url)
        return (SHARED_TIKTOKEN / hashlib.sha1(url.encode()).hexdigest()).read_bytes()

    monkeypatch.setattr(tiktoken.load, "read_file", read_file)
    return fetched


def test_tiktoken_cache_serves_gpt2_offline_in_a_fresh_process(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = serve_tiktoken_files(monkeypatch)
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    root = tmp_path / "stage"
    code, out, err = run(capsys, str(root), "--tokenizers", "gpt2")
    assert code == 0, err
    assert len(fetched) == 2  # vocab.bpe and encoder.json
    cache = root / "tiktoken-cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        hashlib.sha1(u.encode()).hexdigest() for u in fetched
    )
    assert f"export TIKTOKEN_CACHE_DIR={cache}" in out.splitlines()
    assert os.environ.get("TIKTOKEN_CACHE_DIR") == before  # put back after staging

    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    script = (
        "from medlm.data.tokenizer import load_tokenizer\n"
        "print(load_tokenizer('gpt2').encode('Hello world'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[15496, 995]"  # GPT-2's ids of "Hello" and " world"


def test_a_llama3_tokenizer_model_is_checked_and_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import base64

    from medlm.data.tokenizer import load_tokenizer

    source = tmp_path / "tokenizer.model"
    source.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    root = tmp_path / "stage"
    code, out, err = run(capsys, str(root), "--tokenizers", f"llama3:{source}")
    assert code == 0, err
    staged = root / "tokenizers" / "llama3" / "tokenizer.model"
    assert staged.read_bytes() == source.read_bytes()
    assert f"data.tokenizer=llama3:{staged}" in out.splitlines()
    tok = load_tokenizer(f"llama3:{staged}")
    assert tok.decode(tok.encode("abc")) == "abc" and tok.bos_id == 256

    bad = tmp_path / "bad.model"
    bad.write_text("not base64 at all\n")
    code, _, err = run(capsys, str(tmp_path / "other"), "--tokenizers", f"llama3:{bad}")
    assert code == 2 and f"{bad}: line 1" in err
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------- re-runs and the manifest


def test_a_second_run_skips_what_is_staged_and_force_stages_it_again(
    hub: FakeHub,
    shared_data_dir: Path,
    tiny_hf_gpt2: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    hub.datasets["curaihealth/medical_questions_pairs", None, "train"] = mqp_hub_rows(
        shared_data_dir / "medical_question_pairs" / "mqp.csv"
    )
    hub.models["gpt2"] = tiny_hf_gpt2
    root = tmp_path / "stage"
    argv = (str(root), "--datasets", "question_pairs", "--models", "gpt2")
    assert run(capsys, *argv)[0] == 0
    files = all_files(root)
    stamps = {f: (root / f).stat().st_mtime_ns for f in files}
    calls = hub.count()

    code, out, _ = run(capsys, *argv)
    assert code == 0 and hub.count() == calls  # not even a revision lookup
    assert states(out) == {
        "dataset:question_pairs": "already staged",
        "model:gpt2": "already staged",
    }
    assert all_files(root) == files
    assert {f: (root / f).stat().st_mtime_ns for f in files} == stamps

    (root / "models" / "gpt2" / "config.json").unlink()  # an incomplete item is staged again
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert states(out) == {"dataset:question_pairs": "already staged", "model:gpt2": "staged"}
    assert (root / "models" / "gpt2" / "config.json").is_file()

    calls = hub.count("load_dataset")
    assert run(capsys, *argv, "--force")[0] == 0
    assert hub.count("load_dataset") == calls + 1

    # another revision asked for is another request: staged again, pinned to its commit
    assert run(capsys, str(root), "--datasets", "question_pairs@v1")[0] == 0
    entry = manifest(root)["dataset:question_pairs"]
    assert entry["requested_revision"] == "v1"
    assert entry["revision"] == commit_of("curaihealth/medical_questions_pairs", "v1")
    assert not (root / ".staging").exists()


def test_the_manifest_lists_every_file_with_its_revision_size_and_hash(
    hub: FakeHub,
    shared_data_dir: Path,
    tiny_hf_gpt2: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve_tiktoken_files(monkeypatch)
    hub.datasets["curaihealth/medical_questions_pairs", None, "train"] = mqp_hub_rows(
        shared_data_dir / "medical_question_pairs" / "mqp.csv"
    )
    hub.models["gpt2"] = tiny_hf_gpt2
    root = tmp_path / "stage"
    argv = ("--datasets", "question_pairs", "--models", "gpt2", "--tokenizers", "gpt2")
    assert run(capsys, str(root), *argv)[0] == 0
    items = manifest(root)
    assert set(items) == {"dataset:question_pairs", "model:gpt2", "tokenizer:gpt2"}
    listed = sorted(f["path"] for e in items.values() for f in e["files"])
    assert listed == [f for f in all_files(root) if f != "manifest.json"]
    for e in items.values():
        for f in e["files"]:
            data = (root / f["path"]).read_bytes()
            assert (f["size"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert items["model:gpt2"]["revision"] == commit_of("gpt2")
    assert items["dataset:question_pairs"]["revision"] == commit_of(
        "curaihealth/medical_questions_pairs"
    )


# ----------------------------------------------------------------------------------- errors


def test_an_unknown_name_is_one_line_and_writes_nothing(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "stage"
    for argv, message in (
        (("--datasets", "pubmedqa", "pubmed"), "--datasets pubmed: unknown dataset; one of"),
        (("--models", "./gpt2"), "--models ./gpt2: not a Hugging Face Hub model id"),
        (("--tokenizers", "gpt3"), "--tokenizers gpt3: unknown tokenizer"),
        (("--models", "gpt2", "openai-community/gpt2"), "would both be staged to models/gpt2"),
        (("--datasets", "pubmedqa", "pubmedqa@v1"), "dataset:pubmedqa is asked for twice"),
        ((), "nothing to stage"),
    ):
        code, out, err = run(capsys, str(root), *argv)
        assert code == 2 and err.startswith("error: ") and message in err
        assert err.count("\n") == 1 and out == ""
        assert not root.exists() and hub.count() == 0


def test_an_unreachable_hub_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import huggingface_hub.constants

    root = tmp_path / "stage"
    # the real calls, offline (huggingface_hub reads HF_HUB_OFFLINE once, when imported)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, str(root), "--datasets", "pubmedqa")
    assert code == 2
    assert err.splitlines()[-1] == (
        "error: cannot reach the Hugging Face Hub for dataset qiaojin/PubMedQA: HF_HUB_OFFLINE "
        "is set; unset it and run medlm-prepare stage on a machine that reaches the Hub "
        "(a login node)"
    )
    assert not root.exists()

    # the real calls, online, to a Hub that does not answer (a closed local port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    code, _, err = run(capsys, str(root), "--models", "gpt2")
    assert code == 2
    assert err.splitlines()[-1].startswith(
        "error: cannot reach the Hugging Face Hub for model gpt2 (ConnectError: "
    )
    assert not root.exists()


def test_a_bad_revision_or_repository_is_one_line(
    hub: FakeHub, tiny_hf_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    hub.models["gpt2"] = tiny_hf_gpt2
    root = tmp_path / "stage"
    code, _, err = run(capsys, str(root), "--models", "gpt2@no-such-branch")
    assert code == 2
    assert err.splitlines()[-1].startswith(
        "error: model gpt2: revision 'no-such-branch' not found on the Hugging Face Hub"
    )
    code, _, err = run(capsys, str(root), "--models", "nobody/nothing")
    assert code == 2 and "model nobody/nothing: no such repository" in err
    assert not root.exists() and hub.count("snapshot_download") == 0


def test_a_full_disk_keeps_what_was_staged_and_leaves_nothing_half_written(
    hub: FakeHub,
    shared_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.datasets["curaihealth/medical_questions_pairs", None, "train"] = mqp_hub_rows(
        shared_data_dir / "medical_question_pairs" / "mqp.csv"
    )
    hub.datasets["qiaojin/PubMedQA", "pqa_labeled", "train"] = pubmedqa_hub_rows(
        shared_data_dir / "pubmedqa" / "ori_pqal.json"
    )
    real_dumps = json.dumps

    def dumps(obj, *args, **kwargs):  # the PubMedQA file is written, and the disk fills up
        if kwargs.get("indent") == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(data_files.json, "dumps", dumps)
    root = tmp_path / "stage"
    code, out, err = run(capsys, str(root), "--datasets", "question_pairs", "pubmedqa")
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: no space left on the device while staging dataset:pubmedqa into {root}; "
        "nothing of it was kept: free space and run the same command again"
    )
    assert all_files(root) == ["data/medical_question_pairs/mqp.csv", "manifest.json"]
    assert set(manifest(root)) == {"dataset:question_pairs"}

    monkeypatch.setattr(data_files.json, "dumps", real_dumps)  # space freed: the same command
    code, out, _ = run(capsys, str(root), "--datasets", "question_pairs", "pubmedqa")
    assert code == 0
    assert states(out) == {"dataset:question_pairs": "already staged", "dataset:pubmedqa": "staged"}


def test_a_hub_layout_medlm_does_not_know_is_one_line_and_keeps_nothing(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    hub.datasets["curaihealth/medical_questions_pairs", None, "train"] = [
        {"dr_id": 1, "question1": "a?", "question2": "b?", "label": 1}
    ]
    root = tmp_path / "stage"
    code, _, err = run(capsys, str(root), "--datasets", "question_pairs")
    assert code == 2
    assert err.splitlines()[-1] == (
        "error: curaihealth/medical_questions_pairs row 0: no column 'question_1', 'question_2'; "
        "the Hub dataset's layout is not the one medlm stages (expected dr_id, question_1, "
        "question_2, label)"
    )
    assert not root.exists()
