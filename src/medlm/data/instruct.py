"""Instruction tuning data: Alpaca-style records (instruction, input, output) as prompt-masked
examples.

Every instruction dataset goes through this one module; only the config differs:
- Alpaca JSON Lines that a user brings: ``data.path`` is one file (validation split off by prompt,
  seeded) or a directory holding ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (also ``.json``,
  ``.parquet``, ``validation.*``, Hub-style ``data/train-*.parquet``), as ``medlm-prepare medquad``
  writes them; or ``data.train_path`` / ``val_path`` / ``test_path`` one by one.
- MedQuAD: with ``data.medquad_src`` set, ``prepare_data`` converts the MedQuAD XML (or CSV) into
  ``data.path`` when that directory has no split files yet, exactly as ``medlm-prepare medquad
  SRC data.path`` would (default filters, seed and fractions).
- A Hugging Face Hub dataset (``datasets.load_dataset(hub_id, hub_config, split=...)``) or a local
  JSONL/parquet export of it, with ``data.fields`` naming its columns: nvidia/HelpSteer's
  ``prompt``/``response`` become the instruction and the output. Without ``data.path``,
  ``$MEDLM_DATA_DIR/<data.subdir>`` is tried before the Hub (see :mod:`medlm.data.sources`).

A record's prompt is the template (``prompt_input`` when it has an input, ``prompt_no_input``
otherwise) and its answer is the output followed by end-of-text. Labels are -100 on every prompt
token and on padding, so the CausalLM's loss and perplexity are over answer tokens only. Batches
are packed blocks with ``doc_ids`` (``data.packing=true``) or right-padded rows; either way no
example attends to another (:mod:`medlm.data.masked_examples`). A bad record raises ``DataError``
naming the file and the line (or the Hub row).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from medlm.data.alpaca import ALPACA_TEMPLATE, check_template, format_prompt
from medlm.data.cache import TokenCache, cache_key
from medlm.data.masked_examples import (
    OVERLONG,
    PackedExamples,
    PadCollate,
    PaddedExamples,
    check_block_size,
    fit_examples,
    tokenize_examples,
)
from medlm.data.packing import EpochShuffleSampler
from medlm.data.resume import resumable_loader
from medlm.data.sources import (
    DATA_DIR_ENV,
    HubSource,
    LocalSource,
    RawRecord,
    Source,
    resolve_sources,
)
from medlm.data.splits import seeded_split
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError
from medlm.utils.checks import check_number

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ROLES = ("instruction", "input", "output")
DEFAULT_FIELDS = {"instruction": "instruction", "input": "input", "output": "output"}
DEFAULT_HUB_SPLITS = {"train": "train", "val": None, "test": None}
# Bump when parsing or formatting changes the tokens a config produces: invalidates cached tokens.
FORMAT_VERSION = 1


def _split_patterns(*names: str) -> tuple[str, ...]:
    return tuple(
        p
        for n in names
        for p in (
            f"{n}.jsonl",
            f"{n}.json",
            f"{n}.parquet",
            f"{n}-*.parquet",
            f"{n}/*.parquet",
            f"{n}/*.jsonl",
            f"data/{n}-*.parquet",
        )
    )


# File names of each split in a data directory, in order of preference.
SPLIT_PATTERNS = {
    "train": _split_patterns("train"),
    "val": _split_patterns("val", "validation", "valid"),
    "test": _split_patterns("test"),
}


@dataclass(frozen=True)
class InstructionRecord:
    """One instruction, its optional input and the answer; ``where`` names it in messages."""

    instruction: str
    input: str
    output: str
    where: str = ""

    def prompt(self, template: Mapping[str, str]) -> str:
        return format_prompt(self.instruction, self.input, template)


# ------------------------------------------------------------------------------ parsing records


def parse_record(raw: RawRecord, fields: Mapping[str, str | None]) -> InstructionRecord:
    """The record's instruction, input and output under the names ``fields`` gives them.

    Instruction and output must be non-empty strings; a missing or null input is an empty one.
    Surrounding whitespace is stripped (the template supplies the separators).
    """
    where = raw.location()
    data = raw.data
    if not isinstance(data, dict):
        raise DataError(
            f"{where}: expected a record object with fields "
            f"{', '.join(n for n in fields.values() if n)}, got {type(data).__name__}"
        )
    values = {}
    for role in ROLES:
        name = fields.get(role)
        value = None if name is None else data.get(name)
        required = role != "input"
        if value is None:
            if required:
                raise DataError(f"{where}: missing field {name!r} (the {role})")
            value = ""
        if not isinstance(value, str):
            raise DataError(
                f"{where}: field {name!r} (the {role}) must be a string, got {value!r:.80}"
            )
        value = value.strip()
        if required and not value:
            raise DataError(f"{where}: field {name!r} (the {role}) is empty")
        values[role] = value
    return InstructionRecord(values["instruction"], values["input"], values["output"], where)


def passes(raw: RawRecord, min_values: Mapping[str, float]) -> bool:
    """Whether every numeric field named in ``min_values`` is at least its minimum (HelpSteer's
    helpfulness, say); a missing or non-numeric field is a bad record."""
    for name, low in min_values.items():
        value = raw.data.get(name) if isinstance(raw.data, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(
                f"{raw.location()}: field {name!r} (data.min_values) must be a number, got "
                f"{value!r:.80}"
            )
        if value < low:
            return False
    return True


def load_records(
    source: Source, fields: Mapping[str, str | None], min_values: Mapping[str, float] | None = None
) -> list[InstructionRecord]:
    """Every record of ``source`` that passes ``min_values``, validated, in source order."""
    records, skipped = [], 0
    for raw in source.records():
        record = parse_record(raw, fields)
        if min_values and not passes(raw, min_values):
            skipped += 1
            continue
        records.append(record)
    if skipped:
        log.info(
            "%s: %d record(s) below data.min_values=%s left out",
            source.describe(),
            skipped,
            dict(min_values),
        )
    if not records:
        raise DataError(
            f"{source.describe()}: no instruction records"
            + (" pass data.min_values" if skipped else "")
        )
    return records


def split_by_prompt(
    records: Sequence[InstructionRecord], val_fraction: float, seed: int, origin: str = "instruct"
) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """A seeded train/validation split by prompt: records that share an instruction and input
    (HelpSteer has several responses per prompt) land on the same side. Both keep source order."""
    keys = list(dict.fromkeys((r.instruction, r.input) for r in records))
    n_val = max(1, round(len(keys) * val_fraction))
    if len(keys) - n_val < 1:
        raise DataError(
            f"{origin}: {len(keys)} distinct prompt(s) cannot be split into train and validation "
            f"(data.val_fraction={val_fraction}); at least 2 are needed"
        )
    val_keys = {keys[i] for i in seeded_split([1] * len(keys), {"val": n_val}, seed)["val"]}
    train = [r for r in records if (r.instruction, r.input) not in val_keys]
    val = [r for r in records if (r.instruction, r.input) in val_keys]
    return train, val


# ----------------------------------------------------------------------------------- config checks


def check_fields(fields: Any) -> dict[str, str | None]:
    if not isinstance(fields, Mapping) or not set(fields) <= set(ROLES):
        raise ConfigError(
            f"data.fields must map some of {', '.join(ROLES)} to record field names, got "
            f"{fields!r:.200}"
        )
    out = {**DEFAULT_FIELDS, **dict(fields)}
    for role, name in out.items():
        if not (name is None and role == "input") and (not isinstance(name, str) or not name):
            raise ConfigError(
                f"data.fields.{role} must be a field name"
                + (" or null" if role == "input" else "")
                + f", got {name!r}"
            )
    return out


def check_min_values(min_values: Any) -> dict[str, float]:
    if min_values is None:
        return {}
    if not isinstance(min_values, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in min_values.items()
    ):
        raise ConfigError(
            f"data.min_values must map field names to numbers, got {min_values!r:.200}"
        )
    return dict(min_values)


def check_hub_splits(hub_splits: Any) -> dict[str, str | None]:
    out = dict(DEFAULT_HUB_SPLITS)
    if hub_splits is not None:
        if not isinstance(hub_splits, Mapping) or not set(hub_splits) <= set(SPLITS):
            raise ConfigError(
                f"data.hub_splits must map some of {', '.join(SPLITS)} to Hub split names, got "
                f"{hub_splits!r}"
            )
        out.update(hub_splits)
    if not out["train"]:
        raise ConfigError("data.hub_splits.train must name the Hub split to train on")
    return out


# --------------------------------------------------------------------------------- DataModule


class InstructionDataModule(L.LightningDataModule):
    """Alpaca-style instruction/input/output records as answer-only-loss examples for a CausalLM.

    ``prepare_data`` (rank 0) converts MedQuAD if asked and tokenises every split into the cache;
    ``setup`` reads the cache. ``sample_prompts(n)`` are the prompts of the first ``n`` validation
    records (fixed across runs) and ``sample_references(n)`` their answers, for the sample callback.
    """

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        subdir: str | None = "alpaca",
        medquad_src: str | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
        hub_splits: Mapping[str, str | None] | None = None,
        revision: str | None = None,
        fields: Mapping[str, str | None] | None = None,
        min_values: Mapping[str, float] | None = None,
        template: Mapping[str, str] | None = None,
        val_fraction: float = 0.05,
        seed: int = 1337,
        block_size: int = 256,
        packing: bool = True,
        overlong: str = "truncate",
        batch_size: int = 8,
        num_workers: int = 0,
        cache_dir: str | None = None,
        tokenizer: str = "gpt2",
        num_sample_questions: int = 3,
        name: str = "instruct",
    ) -> None:
        super().__init__()
        self.template = check_template(ALPACA_TEMPLATE if template is None else template)
        self.fields = check_fields(DEFAULT_FIELDS if fields is None else fields)
        self.min_values = check_min_values(min_values)
        self.hub_splits = check_hub_splits(hub_splits)
        check_block_size(block_size)
        if overlong not in OVERLONG:
            raise ConfigError(
                f"data.overlong must be one of {', '.join(OVERLONG)}, got {overlong!r}"
            )
        if not isinstance(packing, bool):
            raise ConfigError(f"data.packing must be true or false, got {packing!r}")
        check_number(val_fraction, "data.val_fraction", (int, float), 0, high=1, low_ok=False)
        check_number(seed, "data.seed", int, -(2**63))
        check_number(batch_size, "data.batch_size", int, 1)
        check_number(num_workers, "data.num_workers", int, 0)
        check_number(num_sample_questions, "data.num_sample_questions", int, 0)
        if medquad_src is not None and not path:
            raise ConfigError(
                "data.medquad_src needs data.path: the directory the converted JSONL files go to"
            )
        if (val_path or test_path) and not train_path:
            raise ConfigError("data.val_path / data.test_path need data.train_path")
        if train_path and path:
            raise ConfigError(
                "set data.path or data.train_path (with val_path, test_path), not both"
            )
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(
                f"data.name must be a plain name (letters, digits, _ and -), got {name!r}"
            )
        # plain values only: a checkpoint is read back with weights_only=True, which refuses
        # DictConfig
        self.save_hyperparameters(
            {
                "path": path,
                "train_path": train_path,
                "val_path": val_path,
                "test_path": test_path,
                "subdir": subdir,
                "medquad_src": medquad_src,
                "hub_id": hub_id,
                "hub_config": hub_config,
                "hub_splits": self.hub_splits,
                "revision": revision,
                "fields": self.fields,
                "min_values": self.min_values,
                "template": self.template,
                "val_fraction": val_fraction,
                "seed": seed,
                "block_size": block_size,
                "packing": packing,
                "overlong": overlong,
                "batch_size": batch_size,
                "num_workers": num_workers,
                "cache_dir": cache_dir,
                "tokenizer": tokenizer,
                "num_sample_questions": num_sample_questions,
                "name": name,
            },
            logger=False,
        )
        self.path, self.train_path, self.val_path, self.test_path = (
            path,
            train_path,
            val_path,
            test_path,
        )
        self.subdir, self.medquad_src = subdir, medquad_src
        self.hub_id, self.hub_config, self.revision = hub_id, hub_config, revision
        self.val_fraction, self.seed = float(val_fraction), seed
        self.block_size, self.packing, self.overlong = block_size, packing, overlong
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache = TokenCache(cache_dir)
        self.tokenizer = load_tokenizer(tokenizer)
        self.num_sample_questions = num_sample_questions
        self.name = name
        self._sources: dict[str, Source | None] | None = None
        self._records: dict[str, list[InstructionRecord]] = {}
        self.datasets: dict[str, Dataset] = {}

    # ---- where the records come from

    def _convert_medquad(self, out_dir: Path) -> None:
        """Write ``out_dir/{train,val,test}.jsonl`` from MedQuAD unless they are all there."""
        if all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS):
            return
        from medlm.data.medquad import convert, format_summary

        src = Path(self.medquad_src).expanduser()
        if not src.exists():
            raise DataError(
                f"data.path={out_dir} holds no converted MedQuAD yet and data.medquad_src={src} "
                f"does not exist: set {DATA_DIR_ENV} to the folder holding medquad/xml "
                "(medlm-prepare stage DIR --datasets medquad writes DIR/data/medquad/xml), set "
                f"data.medquad_src, or run medlm-prepare medquad SRC {out_dir}"
            )
        log.info("converting MedQuAD %s -> %s", src, out_dir)
        summary = convert(src, out_dir)
        log.info("MedQuAD conversion:\n%s", format_summary(summary))

    def _resolve_sources(self) -> dict[str, Source | None]:
        if self.train_path:
            sources: dict[str, Source | None] = {}
            for split, value in (
                ("train", self.train_path),
                ("val", self.val_path),
                ("test", self.test_path),
            ):
                p = Path(value).expanduser() if value else None
                if p is not None and not p.is_file():
                    raise DataError(f"data.{split}_path={value}: no such file")
                sources[split] = LocalSource((p,)) if p is not None else None
            return sources
        if self.path and self.medquad_src is not None:
            self._convert_medquad(Path(self.path).expanduser())
        hub = None
        if self.hub_id:
            hub = {
                s: HubSource(
                    self.hub_id,
                    self.hub_config,
                    split,
                    self.revision,
                    hint_subdir=self.subdir or "",
                    hint_file="train.jsonl",
                )
                if split
                else None
                for s, split in self.hub_splits.items()
            }
        found = resolve_sources(self.path, subdir=self.subdir, patterns=SPLIT_PATTERNS, hub=hub)
        if found is None:
            raise ConfigError(
                "no instruction data configured: set data.path (an Alpaca JSONL file, or a "
                "directory "
                "with train.jsonl/val.jsonl/test.jsonl), data.train_path, or data.hub_id"
                + (f" (or put the files in ${DATA_DIR_ENV}/{self.subdir}/)" if self.subdir else "")
            )
        return found

    @property
    def sources(self) -> dict[str, Source | None]:
        if self._sources is None:
            self._sources = self._resolve_sources()
        return self._sources

    def has_split(self, split: str) -> bool:
        return (
            split != "test" or self.sources["test"] is not None
        )  # val: split off train when absent

    def records(self, split: str) -> list[InstructionRecord]:
        """The validated records of ``split``; without a validation source, val is split off train
        by prompt (``val_fraction``, ``seed``)."""
        if split not in self._records:
            source = self._origin(split)
            if split != "test" and self.sources["val"] is None:
                pool = load_records(source, self.fields, self.min_values)
                train, val = split_by_prompt(pool, self.val_fraction, self.seed, source.describe())
                self._records.update(train=train, val=val)
            else:
                self._records[split] = load_records(source, self.fields, self.min_values)
            log.info("%s %s: %d records", self.name, split, len(self._records[split]))
        return self._records[split]

    def sample_prompts(self, n: int | None = None) -> list[str]:
        """Prompts (template without the answer) of the first ``n`` validation records: the same
        held-out questions at every validation and in every run."""
        return [r.prompt(self.template) for r in self._sample_records(n)]

    def sample_references(self, n: int | None = None) -> list[str]:
        """The reference answers of :meth:`sample_prompts`, to log beside the generations."""
        return [r.output for r in self._sample_records(n)]

    def _sample_records(self, n: int | None) -> list[InstructionRecord]:
        n = self.num_sample_questions if n is None else n
        check_number(n, "number of sample questions", int, 0)
        return self.records("val")[:n]

    # ---- tokens (cached) and datasets

    def _origin(self, split: str) -> Source:
        """The source a split's records come from (train's, for a validation split made from it)."""
        if self.sources[split] is not None:
            return self.sources[split]
        if split == "test":
            raise DataError(
                f"{self.name}: no test split: set data.test_path, or put test.jsonl beside "
                "train.jsonl"
            )
        return self.sources["train"]

    def _key(self, split: str) -> str:
        derived = self.sources["val"] is None and split in ("train", "val")
        return cache_key(
            dataset="instruct",
            format=FORMAT_VERSION,
            split=split,
            source=self._origin(split).identity(),
            derived={"seed": self.seed, "val_fraction": self.val_fraction} if derived else None,
            fields=self.fields,
            min_values=self.min_values,
            template=self.template,
            tokenizer=self.tokenizer.name,
        )

    def tokens(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's examples as a flat token array and an (n, 2) index of (prompt length,
        total length), from the cache or tokenised now (``masked_examples.tokenize_examples``)."""
        key = self._key(split)
        name = f"{self.name}-{split}"
        tokens, index = (
            self.cache.load(f"{name}-tokens", key),
            self.cache.load(f"{name}-index", key),
        )
        if tokens is not None and index is not None:
            return tokens, index
        records = self.records(split)
        tokens, index = tokenize_examples(
            ((r.prompt(self.template), r.output) for r in records), self.tokenizer
        )
        self.cache.save(f"{name}-tokens", key, tokens)
        self.cache.save(f"{name}-index", key, index)
        log.info(
            "%s %s: tokenised %d examples, %d tokens", self.name, split, len(index), len(tokens)
        )
        return tokens, index

    def build_dataset(self, split: str) -> Dataset:
        tokens, index = self.tokens(split)
        rows, counts = fit_examples(index, self.block_size, self.overlong)
        label = f"{self.name} {split} split ({self._origin(split).describe()})"
        pad_id = self.tokenizer.eot_id
        if self.packing:
            dataset: Dataset = PackedExamples(tokens, rows, self.block_size, pad_id, label)
            layout = (
                f"{len(dataset)} packed blocks of {self.block_size} ({dataset.fill():.0%} filled)"
            )
        else:
            dataset = PaddedExamples(tokens, rows, label)
            layout = f"{len(dataset)} padded rows"
        log.info(
            "%s: %d of %d examples (%d answers truncated, %d dropped as too long, %d prompts "
            "longer "
            "than the block); %s",
            label,
            counts["kept"],
            counts["examples"],
            counts["truncated"],
            counts["dropped_long"],
            counts["dropped_long_prompt"],
            layout,
        )
        return dataset

    def prepare_data(self) -> None:
        """Rank 0: convert MedQuAD if asked, read and tokenise every split into the cache."""
        for split in SPLITS:
            if self.has_split(split):
                self.tokens(split)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "fit", ("train", "val")
        )
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        dataset = self.datasets[split]
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None
        collate = None if self.packing else PadCollate(self.tokenizer.eot_id)
        if shuffle:  # the training loader: its place in the epoch is part of the checkpoint
            return resumable_loader(
                dataset,
                sampler,
                self.batch_size,
                collate_fn=collate,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
