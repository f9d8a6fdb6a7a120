"""Token shards: the format, ``medlm-prepare shards`` (sources, workers, restart), bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlm.cli.prepare import main as prepare_main
from medlm.data.shard_writer import prepare_shards
from medlm.data.shards import (
    HEADER_BYTES,
    HEADER_DTYPE,
    MANIFEST,
    load_tokens,
    read_manifest,
    write_shard,
)
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import DataError

TOK = load_tokenizer("gpt2")
WORDS = (
    "the patient was given aspirin for chest pain and the biopsy showed no sign of cancer in the "
    "liver while blood pressure rose after surgery"
).split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of varied length, some with newlines, unicode and a literal <|endoftext|>."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(1, 60)))
        text = " ".join(words)
        if i % 7 == 3:
            text += "\nCafé naïve 日本 <|endoftext|> end."
        docs.append(text.capitalize() + ".")
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)),
        encoding="utf-8",
    )
    return path


def expected_stream(docs: list[str]) -> np.ndarray:
    return np.array([t for d in docs for t in [TOK.eot_id, *TOK.encode(d)]], dtype=np.uint16)


def read_all(out: Path) -> tuple[dict, np.ndarray]:
    manifest = read_manifest(out)
    return manifest, np.concatenate([load_tokens(out / s["name"]) for s in manifest["shards"]])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".bin"}


def prepare(src, out: Path, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 1)
    return prepare_shards(
        [str(s) for s in (src if isinstance(src, list) else [src])], out, **kwargs
    )


# ------------------------------------------------------------------------------------ format


def test_shard_file_is_header_then_tokens_and_reads_with_numpy_alone(tmp_path: Path) -> None:
    tokens = np.array([50256, 0, 1, 65535 - 1, 42], dtype=np.uint16)
    sha = write_shard(tmp_path / "s.bin", tokens, vocab_size=50257, eot_id=50256)
    raw = (tmp_path / "s.bin").read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * len(tokens) == 42
    header = np.fromfile(tmp_path / "s.bin", dtype=HEADER_DTYPE, count=1)[
        0
    ]  # as the docstring shows
    assert (
        bytes(header["magic"]),
        int(header["version"]),
        int(header["dtype"]),
        int(header["count"]),
    ) == (b"MEDLMTOK", 1, 2, 5)
    assert (int(header["vocab_size"]), int(header["eot_id"])) == (50257, 50256)
    plain = np.memmap(
        tmp_path / "s.bin", dtype=np.uint16, mode="r", offset=32, shape=(int(header["count"]),)
    )
    assert plain.tolist() == tokens.tolist() == load_tokens(tmp_path / "s.bin").tolist()
    import hashlib

    assert sha == hashlib.sha256(raw).hexdigest()


def test_large_vocabularies_are_written_as_uint32(tmp_path: Path) -> None:
    tokens = np.array([128000, 5, 128255], dtype=np.int64)
    write_shard(tmp_path / "s.bin", tokens, vocab_size=128256, eot_id=128001)
    loaded = load_tokens(tmp_path / "s.bin")
    assert loaded.dtype == np.dtype("<u4") and loaded.tolist() == tokens.tolist()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[:-3], "truncated token shard"),
        (lambda raw: raw[:20], "shorter than the 32-byte header"),
        (lambda raw: b"NOTASHRD" + raw[8:], "not a medlm token shard"),
        (lambda raw: raw[:8] + (7).to_bytes(4, "little") + raw[12:], "format version 7"),
        (lambda raw: raw[:12] + (3).to_bytes(4, "little") + raw[16:], "unknown token dtype code 3"),
        (lambda raw: raw + b"\0\0", "bytes after its"),
    ],
)
def test_a_damaged_shard_is_one_data_error_naming_the_file(
    tmp_path: Path, damage, message: str
) -> None:
    path = tmp_path / "train_000001.bin"
    write_shard(path, np.arange(10), vocab_size=50257, eot_id=50256)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        load_tokens(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------- preparation


def test_round_trip_across_shard_boundaries(tmp_path: Path) -> None:
    docs = make_docs(200)
    summary = prepare(
        write_jsonl(tmp_path / "docs.jsonl", docs),
        tmp_path / "out",
        shard_tokens=997,
        val_tokens=1500,
    )
    manifest, stream = read_all(tmp_path / "out")
    assert stream.tolist() == expected_stream(docs).tolist()
    sizes = [(s["split"], s["tokens"]) for s in manifest["shards"]]
    assert sizes[:2] == [("val", 997), ("val", 503)]  # the validation budget, cut at shard size
    assert all(n == 997 for _, n in sizes[2:-1]) and 0 < sizes[-1][1] <= 997
    assert all(split == "train" for split, _ in sizes[2:])
    assert manifest["complete"] and manifest["documents"] == 200 and summary.documents == 200
    assert summary.tokens == {"val": 1500, "train": len(stream) - 1500}
    assert summary.shards == {"val": 2, "train": len(sizes) - 2}
    assert manifest["tokenizer"]["name"] == "gpt2" and manifest["tokenizer"]["vocab_size"] == 50257
    assert any(
        s["end"]["offset"] > 0 for s in manifest["shards"]
    )  # documents do run on into the next shard
    # each shard's recorded end (document, tokens into it) is where it ends in the stream
    starts = np.concatenate([[0], np.cumsum([1 + len(TOK.encode(d)) for d in docs])])
    ends = np.cumsum([s["tokens"] for s in manifest["shards"]])
    assert [
        starts[s["end"]["document"]] + s["end"]["offset"] for s in manifest["shards"]
    ] == ends.tolist()
    text = summary.format()
    assert "documents 200" in text and "shards    " in text and "seconds" in text


def test_parallel_and_single_worker_shards_are_byte_identical(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(300, seed=1))
    prepare(src, tmp_path / "one", shard_tokens=1024, val_tokens=700, workers=1, chunk_chars=500)
    prepare(src, tmp_path / "two", shard_tokens=1024, val_tokens=700, workers=2, chunk_chars=500)
    one, two = shard_bytes(tmp_path / "one"), shard_bytes(tmp_path / "two")
    assert len(one) > 5 and one == two
    assert read_manifest(tmp_path / "one")["shards"] == read_manifest(tmp_path / "two")["shards"]


def test_restart_keeps_finished_shards_and_ends_identical(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(300, seed=2))
    settings = dict(shard_tokens=800, val_tokens=800)
    prepare(src, tmp_path / "straight", **settings)
    straight = shard_bytes(tmp_path / "straight")

    # what a run killed while writing shard 4 leaves: 4 finished shards in the manifest, the temp
    # file of the fifth, and a stray shard file the manifest does not list yet
    out = tmp_path / "killed"
    out.mkdir()
    manifest = read_manifest(tmp_path / "straight")
    kept = manifest["shards"][:4]
    assert kept[-1]["end"]["offset"] > 0, "choose settings whose 4th shard ends inside a document"
    for s in kept:
        shutil.copy2(tmp_path / "straight" / s["name"], out / s["name"])
    manifest.update(shards=kept, complete=False)
    for key in ("documents", "skipped_empty"):
        manifest.pop(key, None)
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / ".train_000004.bin.abc123.tmp").write_bytes(b"half")
    (out / "train_000005.bin").write_bytes(b"stale")
    before = {s["name"]: os.stat(out / s["name"]).st_ino for s in kept}
    mtimes = {s["name"]: os.stat(out / s["name"]).st_mtime_ns for s in kept}

    summary = prepare(src, out, **settings)
    assert summary.reused_shards == 4
    assert shard_bytes(out) == straight
    assert read_manifest(out)["shards"] == read_manifest(tmp_path / "straight")["shards"]
    assert not list(out.glob(".*.tmp"))
    for name, ino in before.items():  # the finished shards were not written again
        assert os.stat(out / name).st_ino == ino and os.stat(out / name).st_mtime_ns == mtimes[name]

    # a shard damaged after the fact is found by its checksum and written again with the rest
    victim = out / read_manifest(out)["shards"][2]["name"]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    summary = prepare(src, out, **settings)
    assert summary.reused_shards == 2 and shard_bytes(out) == straight

    # a finished preparation run again does nothing
    summary = prepare(src, out, **settings)
    assert summary.reused_shards == len(straight) and summary.new_tokens == 0


def test_other_settings_on_an_existing_out_dir_are_refused(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(50))
    prepare(src, tmp_path / "out", shard_tokens=500, val_tokens=100)
    before = shard_bytes(tmp_path / "out")
    with pytest.raises(DataError, match="another preparation .*shard_tokens"):
        prepare(src, tmp_path / "out", shard_tokens=400, val_tokens=100)
    assert shard_bytes(tmp_path / "out") == before


def test_restart_after_a_killed_preparation(tmp_path: Path) -> None:
    """Kill ``medlm-prepare shards`` (SIGKILL) once it has finished two shards; run it again."""
    import signal
    import subprocess
    import sys
    import time

    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(20000, seed=3))
    args = [
        str(src),
        "--shard-tokens",
        "20000",
        "--val-tokens",
        "20000",
        "--workers",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "medlm.cli.prepare", "shards"]
    subprocess.run(
        [*cmd, args[0], str(tmp_path / "straight"), *args[1:]],
        env=env,
        check=True,
        capture_output=True,
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, args[0], str(out), *args[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads((out / MANIFEST).read_text())["shards"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(read_manifest(out)["shards"])
    total = len(read_manifest(tmp_path / "straight")["shards"])
    assert 2 <= finished < total, "the preparation finished before it could be killed"
    result = subprocess.run(
        [*cmd, args[0], str(out), *args[1:]], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"{finished} kept from an earlier run" in result.stdout
    assert shard_bytes(out) == shard_bytes(tmp_path / "straight")


# ------------------------------------------------------------------------------------- sources


def test_txt_parquet_and_globs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(12, seed=4)
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    for i, d in enumerate(docs[:4]):
        (folder / f"a{i}.txt").write_text(d, encoding="utf-8")
    pq.write_table(
        pa.table({"body": docs[4:8], "n": list(range(4))}), folder / "b" / "part.parquet"
    )
    write_jsonl(folder / "b" / "rest.jsonl", docs[8:], field="body")
    (folder / "README.md").write_text("not a document")  # a folder contributes only text files
    prepare(folder, tmp_path / "out", shard_tokens=300, val_tokens=50, text_field="body")
    _, stream = read_all(tmp_path / "out")
    # sorted by relative path: a0..a3.txt, b/part.parquet, b/rest.jsonl
    assert stream.tolist() == expected_stream(docs).tolist()

    prepare(str(folder / "*.txt"), tmp_path / "glob", shard_tokens=300, val_tokens=20)
    assert read_all(tmp_path / "glob")[1].tolist() == expected_stream(docs[:4]).tolist()


def test_hub_source_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    docs = make_docs(30, seed=5)
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        return iter([{"text": d, "id": str(i), "score": 3.1} for i, d in enumerate(docs)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    prepare(
        "HuggingFaceFW/fineweb-edu",
        tmp_path / "out",
        hub_config="sample-10BT",
        shard_tokens=400,
        val_tokens=100,
    )
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    assert read_all(tmp_path / "out")[1].tolist() == expected_stream(docs).tolist()
    manifest = read_manifest(tmp_path / "out")
    assert manifest["source_identity"][0]["hub_id"] == "HuggingFaceFW/fineweb-edu"


def test_hub_unreachable_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'HuggingFaceFW/fineweb' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(Exception, match="cannot reach the Hugging Face Hub.*local JSONL/parquet"):
        prepare("HuggingFaceFW/fineweb", tmp_path / "out", hub_config="sample-10BT")
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("shared_data_dir")
def test_pubmedqa_and_medquad_documents(tmp_path: Path, shared_data_dir: Path) -> None:
    from medlm.data.medquad import Summary, read_xml
    from medlm.data.pubmedqa import load_records
    from medlm.data.sources import LocalSource

    pqa = shared_data_dir / "pubmedqa" / "ori_pqal.json"
    mq = shared_data_dir / "medquad" / "xml"
    summary = prepare(
        [f"pubmedqa:{pqa.parent}", mq],
        tmp_path / "out",
        shard_tokens=100_000,
        val_tokens=20_000,
        workers=2,
    )
    records = load_records(LocalSource((pqa,)), labeled=True)
    answers = [p.answer.strip() for p in read_xml(mq, Summary())]
    texts = ["\n".join([*r.contexts, r.long_answer]) for r in records] + [a for a in answers if a]
    assert summary.documents == len(texts) and summary.skipped_empty == answers.count("")
    _, stream = read_all(tmp_path / "out")
    assert stream.tolist() == expected_stream(texts).tolist()


# ------------------------------------------------------------------------------------ bad input


def test_a_jsonl_line_that_is_not_json_names_file_and_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "one"}\n\n{"text": "two"\n{"text": "three"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{src}: line 3: not JSON"):
        prepare(src, tmp_path / "out", shard_tokens=100, val_tokens=1)
    assert not (tmp_path / "out").exists()


def test_a_missing_text_field_is_named(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", ["a", "b"], field="content")
    with pytest.raises(
        DataError, match=r"docs.jsonl: line 1: no 'text' field \(fields: content, id\)"
    ):
        prepare(src, tmp_path / "out", shard_tokens=100, val_tokens=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "\n\n", '{"text": "  "}\n'])
def test_an_empty_text_source_is_one_error(tmp_path: Path, content: str) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        prepare(src, tmp_path / "out", shard_tokens=100, val_tokens=1)
    assert not (tmp_path / "out").exists()


def test_too_little_text_for_a_train_split(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(3))
    with pytest.raises(DataError, match="no more than the validation split"):
        prepare(src, tmp_path / "out")  # everything fits in the first (validation) shard
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_prints_summary_and_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(40))
    rc = prepare_main(
        [
            "shards",
            str(src),
            str(tmp_path / "out"),
            "--shard-tokens",
            "300",
            "--val-tokens",
            "100",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "documents 40" in out and "manifest.json" in out

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    rc = prepare_main(["shards", str(bad), str(tmp_path / "out2"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {bad}: line 2: not JSON")
    assert not (tmp_path / "out2").exists()
