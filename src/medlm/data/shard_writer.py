"""Documents -> token shards (``medlm-prepare shards``): parallel, resumable, never half-written.

The documents of every SOURCE form one stream, in order. Worker processes tokenise chunks of it
(``workers``, default: the cores); the results are taken back in submission order, so the shards
do not depend on the number of workers. Each document becomes end-of-text + its tokens, and the
token stream is cut into shards of exactly ``shard_tokens`` tokens (the last one shorter), a
document running on into the next shard where it does not fit. The first ``val_tokens`` tokens
(default: the first shard) are the validation split, the rest train.

Each shard is written atomically, then ``manifest.json`` is rewritten to list it with its sha256
and the stream position where it ends (document index, tokens of that document already written).
A run started again on the same OUT_DIR with the same settings checks the listed shards against
their checksums, keeps the ones that match, and goes on from the end of the last one: the documents
before it are read but not tokenised again. Different settings on a non-empty OUT_DIR are an error.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlm.data.shard_sources import DocumentSource, open_sources
from medlm.data.shards import (
    MANIFEST,
    MANIFEST_FORMAT,
    VERSION,
    file_sha256,
    read_header,
    read_manifest,
    shard_dtype,
    tokenizer_record,
    write_manifest,
    write_shard,
)
from medlm.data.tokenizer import Tokenizer, load_tokenizer
from medlm.errors import ConfigError, DataError
from medlm.utils.checks import check_number

log = logging.getLogger(__name__)

DEFAULT_SHARD_TOKENS = 100_000_000
CHUNK_CHARS = 1 << 18  # characters of text per task sent to a worker
# settings that must match for a run to continue the shards already in OUT_DIR
SETTINGS = (
    "source",
    "source_identity",
    "hub_config",
    "hub_split",
    "text_field",
    "tokenizer",
    "dtype",
    "shard_tokens",
    "val_tokens",
)


@dataclass
class PrepareSummary:
    out_dir: Path
    documents: int = 0
    skipped_empty: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    shards: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    reused_shards: int = 0  # finished shards of an earlier, interrupted run
    new_tokens: int = 0  # tokenised by this run
    seconds: float = 0.0

    def format(self) -> str:
        total = sum(self.tokens.values())
        rate = (
            f", {self.new_tokens / self.seconds:,.0f} tokens/s"
            if self.new_tokens and self.seconds
            else ""
        )
        reused = f" ({self.reused_shards} kept from an earlier run)" if self.reused_shards else ""
        empty = f" ({self.skipped_empty:,} empty skipped)" if self.skipped_empty else ""
        return (
            f"documents {self.documents:,}{empty}\n"
            f"tokens    {total:,} (train {self.tokens['train']:,}, val {self.tokens['val']:,})\n"
            f"shards    {sum(self.shards.values())} "
            f"(train {self.shards['train']}, val {self.shards['val']})"
            f"{reused}\nseconds   {self.seconds:.1f}{rate}\nwrote     {self.out_dir / MANIFEST}"
        )


# ------------------------------------------------------------------------------------ tokenising


def encode_documents(
    texts: Sequence[str], tokenizer: Tokenizer, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """End-of-text + tokens of each text, concatenated, and the length of each document's part."""
    ids: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    eot = tokenizer.eot_id
    for i, text in enumerate(texts):
        start = len(ids)
        ids.append(eot)
        ids.extend(tokenizer.encode(text))
        lengths[i] = len(ids) - start
    return np.array(ids, dtype=dtype), lengths


_WORKER: tuple[Tokenizer, np.dtype] | None = None


def _init_worker(spec: str) -> None:
    global _WORKER
    tokenizer = load_tokenizer(spec)
    _WORKER = (tokenizer, shard_dtype(tokenizer.vocab_size))


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER is not None
    return encode_documents(texts, *_WORKER)


def chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    """Consecutive groups of texts of about ``chunk_chars`` characters (at least one text each)."""
    group: list[str] = []
    size = 0
    for text in texts:
        group.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield group
            group, size = [], 0
    if group:
        yield group


def encoded_chunks(
    groups: Iterable[list[str]], tokenizer: Tokenizer, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``encode_documents`` of each group, in order; with ``workers`` > 1 in that many processes.

    At most two tasks per worker are in flight, so a streamed corpus is read only as fast as it is
    tokenised (``Pool.imap`` would read the whole input ahead).
    """
    dtype = shard_dtype(tokenizer.vocab_size)
    if workers == 1:
        for group in groups:
            yield encode_documents(group, tokenizer, dtype)
        return
    with mp.Pool(workers, initializer=_init_worker, initargs=(tokenizer.name,)) as pool:
        pending: deque = deque()
        for group in groups:
            pending.append(pool.apply_async(_encode_in_worker, (group,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ------------------------------------------------------------------------------------- the stream


class DocumentStream:
    """The non-empty documents of all sources, in order, counting what it passes and skips."""

    def __init__(self, sources: Sequence[DocumentSource]) -> None:
        self.sources = sources
        self.documents = 0
        self.skipped_empty = 0

    def __iter__(self) -> Iterator[str]:
        for source in self.sources:
            for text in source.documents():
                if not text.strip():
                    self.skipped_empty += 1
                    continue
                self.documents += 1
                yield text


def skip(texts: Iterator[str], n: int) -> Iterator[str]:
    """``texts`` after its first ``n`` (read, not tokenised)."""
    for _ in range(n):
        if next(texts, None) is None:
            raise DataError(
                f"the source has fewer documents than the {n} the shards in OUT_DIR were "
                "made from; it changed since: delete OUT_DIR or use another"
            )
    return texts


# ----------------------------------------------------------------------------------- the writer


class ShardWriter:
    """Fills shards from encoded chunks and records each finished one in the manifest."""

    def __init__(
        self, out_dir: Path, manifest: dict[str, Any], tokenizer: Tokenizer, start: tuple[int, int]
    ) -> None:
        self.out_dir = out_dir
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.dtype = shard_dtype(tokenizer.vocab_size)
        self.doc, self.offset = start  # stream position of the next token: document, tokens into it
        self.val_written = sum(s["tokens"] for s in manifest["shards"] if s["split"] == "val")
        self._new_buffer()

    def _new_buffer(self) -> None:
        val_left = self.manifest["val_tokens"] - self.val_written
        self.split = "val" if val_left > 0 else "train"
        capacity = (
            min(self.manifest["shard_tokens"], val_left)
            if val_left > 0
            else self.manifest["shard_tokens"]
        )
        self.buffer = np.empty(capacity, dtype=self.dtype)
        self.fill = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Place one chunk: ``tokens`` continue the stream at (``doc``, ``offset``)."""
        ends = np.cumsum(lengths) - self.offset  # end of each document within ``tokens``
        first_doc, first_offset, placed = self.doc, self.offset, 0
        while placed < len(tokens):
            take = min(len(self.buffer) - self.fill, len(tokens) - placed)
            self.buffer[self.fill : self.fill + take] = tokens[placed : placed + take]
            self.fill += take
            placed += take
            done = int(np.searchsorted(ends, placed, side="right"))  # documents finished so far
            self.doc = first_doc + done
            self.offset = placed - int(ends[done - 1]) if done else first_offset + placed
            if self.fill == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        shards = self.manifest["shards"]
        name = f"{self.split}_{len(shards):06d}.bin"
        sha = write_shard(
            self.out_dir / name,
            self.buffer[: self.fill],
            self.tokenizer.vocab_size,
            self.tokenizer.eot_id,
        )
        shards.append(
            {
                "name": name,
                "split": self.split,
                "tokens": self.fill,
                "sha256": sha,
                "end": {"document": self.doc, "offset": self.offset},
            }
        )
        if self.split == "val":
            self.val_written += self.fill
        write_manifest(self.out_dir, self.manifest)
        self._new_buffer()


# ----------------------------------------------------------------------------------- resuming


def _clean_temporary_files(out_dir: Path) -> None:
    """Temporary files an interrupted write left behind (atomic writes make ``.<name>.*.tmp``)."""
    for tmp in out_dir.glob(".*.tmp"):
        if tmp.name.startswith(f".{MANIFEST}.") or tmp.name[1:].startswith(("train_", "val_")):
            tmp.unlink(missing_ok=True)


def finished_shards(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an earlier run with these settings, cut to the shards whose checksums match;
    None when OUT_DIR has no manifest."""
    if not (out_dir / MANIFEST).is_file():
        return None
    old = read_manifest(out_dir)
    changed = [k for k in SETTINGS if old.get(k) != settings[k]]
    if changed:
        raise DataError(
            f"{out_dir} holds shards of another preparation (different {', '.join(changed)}); "
            "delete it or choose another OUT_DIR"
        )
    kept = []
    for shard in old["shards"]:
        path = out_dir / shard["name"]
        try:
            ok = (
                path.is_file()
                and file_sha256(path) == shard["sha256"]
                and read_header(path) is not None
            )
        except DataError:
            ok = False
        if not ok:
            log.warning("%s: missing or damaged; writing it and the shards after it again", path)
            break
        kept.append(shard)
    for shard in old["shards"][len(kept) :]:
        (out_dir / shard["name"]).unlink(missing_ok=True)
    if len(kept) < len(old["shards"]):
        old["complete"] = False
    old["shards"] = kept
    return old


# ------------------------------------------------------------------------------------- prepare


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare_shards(
    sources: Sequence[str],
    out_dir: str | os.PathLike,
    tokenizer: str = "gpt2",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_tokens: int | None = None,
    workers: int | None = None,
    text_field: str = "text",
    hub_config: str | None = None,
    hub_split: str = "train",
    progress: bool = True,
    chunk_chars: int = CHUNK_CHARS,
) -> PrepareSummary:
    """Tokenise the documents of ``sources`` into shards in ``out_dir`` (see the module doc)."""
    check_number(shard_tokens, "--shard-tokens", int, 1)
    if val_tokens is not None:
        check_number(val_tokens, "--val-tokens", int, 1)
    workers = default_workers() if workers is None else workers
    check_number(workers, "--workers", int, 1)
    if not text_field:
        raise ConfigError("--text-field must not be empty")
    started = time.perf_counter()
    tok = load_tokenizer(tokenizer)
    opened = open_sources(list(sources), text_field, hub_config, hub_split)
    out = Path(out_dir)
    settings = {
        "source": list(sources),
        "source_identity": [s.identity for s in opened],
        "hub_config": hub_config,
        "hub_split": hub_split,
        "text_field": text_field,
        "tokenizer": tokenizer_record(tok),
        "dtype": shard_dtype(tok.vocab_size).name,
        "shard_tokens": shard_tokens,
        "val_tokens": shard_tokens if val_tokens is None else val_tokens,
    }
    _clean_temporary_files(out)
    manifest = finished_shards(out, settings)
    if manifest is not None and manifest.get("complete"):
        return _summary(
            out, manifest, time.perf_counter() - started, reused=len(manifest["shards"]), new=0
        )
    manifest = manifest or {
        "format": MANIFEST_FORMAT,
        "version": VERSION,
        **settings,
        "shards": [],
        "complete": False,
    }
    reused = len(manifest["shards"])
    end = manifest["shards"][-1]["end"] if reused else {"document": 0, "offset": 0}
    if reused:
        log.info("continuing after %d finished shard(s), at document %d", reused, end["document"])

    stream = DocumentStream(opened)
    writer = ShardWriter(out, manifest, tok, (end["document"], 0))
    texts = skip(iter(stream), end["document"])
    from tqdm import tqdm

    with tqdm(
        unit="tok", unit_scale=True, desc="tokenising", disable=not progress, dynamic_ncols=True
    ) as bar:
        first = True
        for tokens, lengths in encoded_chunks(chunks(texts, chunk_chars), tok, workers):
            if first and end["offset"]:  # the document cut by the last finished shard: its rest
                tokens, writer.offset = tokens[end["offset"] :], end["offset"]
            first = False
            writer.add(tokens, lengths)
            bar.update(len(tokens))
    if stream.documents == 0:
        raise DataError(
            f"{', '.join(sources)}: no documents"
            + (f" ({stream.skipped_empty} empty ones skipped)" if stream.skipped_empty else "")
        )
    train = sum(s["tokens"] for s in manifest["shards"] if s["split"] == "train")
    if train + (writer.fill if writer.split == "train" else 0) == 0:
        _remove_outputs(out, manifest)
        total = writer.val_written + writer.fill
        raise DataError(
            f"{', '.join(sources)}: {total:,} tokens in all, no more than the validation split "
            f"({manifest['val_tokens']:,} tokens); lower --val-tokens or --shard-tokens"
        )
    writer.flush()
    manifest.update(complete=True, documents=stream.documents, skipped_empty=stream.skipped_empty)
    write_manifest(out, manifest)
    new = sum(s["tokens"] for s in manifest["shards"][reused:])
    return _summary(out, manifest, time.perf_counter() - started, reused=reused, new=new)


def _remove_outputs(out: Path, manifest: dict[str, Any]) -> None:
    for shard in manifest["shards"]:
        (out / shard["name"]).unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)


def _summary(
    out: Path, manifest: dict[str, Any], seconds: float, reused: int, new: int
) -> PrepareSummary:
    summary = PrepareSummary(
        out,
        manifest.get("documents", 0),
        manifest.get("skipped_empty", 0),
        reused_shards=reused,
        new_tokens=new,
        seconds=seconds,
    )
    for shard in manifest["shards"]:
        summary.tokens[shard["split"]] += shard["tokens"]
        summary.shards[shard["split"]] += 1
    return summary
