"""PubMedQA as causal-LM text: records formatted with a template, packed into next-token blocks.

Sources (see ``medlm.data.sources``): ``data.path``, ``$MEDLM_DATA_DIR/pubmedqa``, or the Hub's
``qiaojin/PubMedQA`` (configs ``pqa_labeled``, ``pqa_artificial``, ``pqa_unlabeled``). Local files
are the authors' ``ori_pqal.json``/``ori_pqaa.json``/``ori_pqau.json`` (an object keyed by PubMed
id with QUESTION, CONTEXTS, LONG_ANSWER, final_decision) or JSON Lines/parquet exports of the Hub
configs (pubid, question, context.contexts, long_answer, final_decision). Both become
:class:`PubMedQARecord`.

The train/validation split is by record (seeded), so no question is split across the two. The
authors' own 500-question PQA-L test split (``preprocess/split_dataset.py`` in pubmedqa/pubmedqa:
``random.seed(0)``, stratified by label) is reproduced exactly by :meth:`official_test_split`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from medlm.data import packing
from medlm.data.cache import TokenCache, cache_key
from medlm.data.packing import EpochShuffleSampler, PackedBlocks
from medlm.data.resume import resumable_loader
from medlm.data.sources import HubSource, RawRecord, Source, resolve_source
from medlm.data.splits import seeded_split
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError
from medlm.utils.checks import check_number, template_fields

log = logging.getLogger(__name__)

HUB_ID = "qiaojin/PubMedQA"
SUBDIR = "pubmedqa"
# The authors' file name for each Hub config; tried first in a data directory.
ORIGINAL_FILES = {
    "pqa_labeled": "ori_pqal.json",
    "pqa_artificial": "ori_pqaa.json",
    "pqa_unlabeled": "ori_pqau.json",
}
LABELS = ("yes", "no", "maybe")  # in the order of the authors' split code
DEFAULT_TEMPLATE = (
    "Question: {question}\nContext: {context}\nAnswer: {long_answer}\nDecision: {final_decision}"
)
DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nContext: {context}\nAnswer:"
TEMPLATE_FIELDS = ("pubid", "question", "context", "long_answer", "final_decision")
# Bump when parsing or formatting changes what a template produces: invalidates cached tokens.
FORMAT_VERSION = 1

# sha256 of the sorted PubMed ids of data/test_ground_truth.json in pubmedqa/pubmedqa, joined by
# "\n".
OFFICIAL_TEST_SHA256 = "406e3b89eff577ed38571eca5a5819734a6f49ac0437d171b6c64e5c3cd195f8"
OFFICIAL_TEST_SEED = 0


@dataclass(frozen=True)
class PubMedQARecord:
    """One question, whichever file format or Hub config it came from."""

    pubid: str
    question: str
    contexts: tuple[str, ...]
    long_answer: str
    final_decision: str | None  # None in pqa_unlabeled

    @property
    def context(self) -> str:
        """The abstract without its conclusion: the context paragraphs joined by spaces."""
        return " ".join(self.contexts)

    def format(self, template: str) -> str:
        return template.format(
            pubid=self.pubid,
            question=self.question,
            context=self.context,
            long_answer=self.long_answer,
            final_decision=self.final_decision,
        )


# ------------------------------------------------------------------------------ parsing records


def _field(
    raw: RawRecord,
    data: dict,
    name: str,
    shown: str,
    pubid: str | None,
    kind: type | tuple[type, ...],
) -> Any:
    where = raw.location() + (f": pubid {pubid}" if pubid is not None else "")
    if name not in data or data[name] is None:
        raise DataError(f"{where}: missing field {shown!r}")
    value = data[name]
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(
                f"{where}: field {shown!r} must be a list of strings, got {value!r:.80}"
            )
    elif not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: field {shown!r} must be a {names}, got {value!r:.80}")
    return value


def parse_record(raw: RawRecord, labeled: bool) -> PubMedQARecord:
    """Decode one record in the authors' format (keyed by id, upper-case fields) or the Hub's."""
    data = raw.data
    if not isinstance(data, dict):
        raise DataError(f"{raw.location()}: expected a record object, got {type(data).__name__}")
    if raw.key is not None or "QUESTION" in data:  # ori_pqal.json and its siblings
        pubid = (
            raw.key
            if raw.key is not None
            else str(_field(raw, data, "pubid", "pubid", None, (str, int)))
        )
        question = _field(raw, data, "QUESTION", "QUESTION", pubid, str)
        contexts = _field(raw, data, "CONTEXTS", "CONTEXTS", pubid, list)
        long_answer = _field(raw, data, "LONG_ANSWER", "LONG_ANSWER", pubid, str)
    else:  # the Hub's columns, from load_dataset or a JSONL/parquet export of it
        pubid = str(_field(raw, data, "pubid", "pubid", None, (str, int)))
        question = _field(raw, data, "question", "question", pubid, str)
        context = _field(raw, data, "context", "context", pubid, dict)
        contexts = _field(raw, context, "contexts", "context.contexts", pubid, list)
        long_answer = _field(raw, data, "long_answer", "long_answer", pubid, str)
    decision = data.get("final_decision")
    if labeled or decision is not None:
        decision = _field(raw, data, "final_decision", "final_decision", pubid, str)
        if decision not in LABELS:
            raise DataError(
                f"{raw.location()}: pubid {pubid}: unknown final_decision label {decision!r}; "
                f"expected one of {', '.join(LABELS)}"
            )
    return PubMedQARecord(pubid, question, tuple(contexts), long_answer, decision)


def load_records(source: Source, labeled: bool) -> list[PubMedQARecord]:
    """Every record of ``source``, validated; duplicate ids and an empty source are errors."""
    records: list[PubMedQARecord] = []
    seen: dict[str, str] = {}
    for raw in source.records():
        record = parse_record(raw, labeled)
        if record.pubid in seen:
            raise DataError(
                f"{raw.location()}: duplicate pubid {record.pubid} (first at {seen[record.pubid]})"
            )
        seen[record.pubid] = raw.location()
        records.append(record)
    if not records:
        raise DataError(f"{source.describe()}: no PubMedQA records found")
    return records


# ------------------------------------------------------------------------------------- splits


def split_train_val(
    records: Sequence[PubMedQARecord], val_fraction: float, seed: int, origin: str = "pubmedqa"
) -> tuple[list[PubMedQARecord], list[PubMedQARecord]]:
    """A seeded split by record; both parts keep the source order."""
    n = len(records)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise DataError(
            f"{origin}: {n} record(s) cannot be split into train and validation "
            f"(data.val_fraction={val_fraction}); at least 2 are needed"
        )
    parts = seeded_split([1] * n, {"val": n_val}, seed)
    return [records[i] for i in parts["train"]], [records[i] for i in parts["val"]]


def _split_label(pubids: list[str], fold: int, rng: random.Random) -> list[list[str]]:
    rng.shuffle(pubids)
    size = math.ceil(len(pubids) / fold)
    return [
        pubids[i * size :] if i == fold - 1 else pubids[i * size : (i + 1) * size]
        for i in range(fold)
    ]


def authors_split(
    records: Sequence[PubMedQARecord], fold: int, rng: random.Random
) -> list[list[PubMedQARecord]]:
    """``split()`` of the authors' ``preprocess/split_dataset.py``, step for step.

    Each label's ids (yes, no, maybe, in source order) are shuffled with ``rng`` and cut into
    ``fold`` chunks; fold ``i`` is the ``i``-th chunk of every label. When the last fold comes out
    smaller than the first, one random id of each other fold moves to the last.
    """
    by_label: dict[str, list[str]] = {label: [] for label in LABELS}
    for r in records:
        if r.final_decision not in by_label:
            raise DataError(
                f"pubid {r.pubid}: no yes/no/maybe label; the authors' split needs labelled records"
            )
        by_label[r.final_decision].append(r.pubid)
    chunks = {label: _split_label(ids, fold, rng) for label, ids in by_label.items()}
    # dicts, as in the original, so that the ids moved below land at the end of the last fold
    folds = [
        dict.fromkeys(pid for label in LABELS for pid in chunks[label][i]) for i in range(fold)
    ]
    if len(folds[-1]) != len(folds[0]):
        for i in range(fold - 1):
            picked = rng.choice(list(folds[i]))
            folds[-1][picked] = None
            del folds[i][picked]
    by_id = {r.pubid: r for r in records}
    return [[by_id[pid] for pid in f] for f in folds]


def ids_digest(pubids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(pubids)).encode("utf-8")).hexdigest()


def official_test_records(
    records: Sequence[PubMedQARecord], origin: str = "pubmedqa"
) -> list[PubMedQARecord]:
    """The authors' PQA-L test split (500 questions), checked against their published id list."""
    _, test = authors_split(records, 2, random.Random(OFFICIAL_TEST_SEED))
    if ids_digest([r.pubid for r in test]) != OFFICIAL_TEST_SHA256:
        raise DataError(
            f"{origin}: these {len(records)} records do not reproduce the PubMedQA authors' test "
            "split "
            "(data/test_ground_truth.json); it needs the 1,000 PQA-L records in the order of "
            "ori_pqal.json"
        )
    return test


def pubmedqa_source(path: str | None, hub_id: str, hub_config: str, revision: str | None) -> Source:
    """``path``, else ``$MEDLM_DATA_DIR/pubmedqa``, else the Hub config: where one config's records
    are."""
    original, c = ORIGINAL_FILES[hub_config], hub_config
    hub = HubSource(hub_id, c, "train", revision, hint_subdir=SUBDIR, hint_file=original)
    patterns = [
        original,
        f"{c}.jsonl",
        f"{c}.json",
        f"{c}.parquet",
        f"{c}/*.parquet",
        f"{c}/*.jsonl",
    ]
    return resolve_source(path, subdir=SUBDIR, patterns=patterns, hub=hub)


# ------------------------------------------------------------------------- asking for a decision

# the PubMedQA paper's two settings: what the model reads before it decides yes, no or maybe
SETTINGS = ("reasoning_required", "reasoning_free")
# the template field each setting shows, and the one it withholds
_SHOWN = {"reasoning_required": "context", "reasoning_free": "long_answer"}
_HIDDEN = {"reasoning_required": "long_answer", "reasoning_free": "context"}


def decision_prompt(template: str, setting: str) -> tuple[str, str]:
    """``(prompt template, separator)`` cut from a training template for ``setting``.

    The prompt template is ``template`` up to ``{final_decision}``, without the withheld field and
    the literal text before it (its label, e.g. ``\\nAnswer: ``); the whitespace just before
    ``{final_decision}`` becomes the separator that starts every answer (" " + "yes"), as the
    tokenizer saw it in training. Format the prompt with ``PubMedQARecord.format``.
    """
    if setting not in SETTINGS:
        raise ConfigError(
            f"benchmark.setting must be one of {', '.join(SETTINGS)}, got {setting!r}"
        )
    shown, hidden = _SHOWN[setting], _HIDDEN[setting]
    pieces: list[str] = []
    fields_before: set[str] = set()
    found = False
    try:
        parsed = list(string.Formatter().parse(template))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.template: cannot parse {template!r}: {err}") from None
    for literal, name, spec, conversion in parsed:
        root = (name or "").split(".")[0].split("[")[0]
        if root == "final_decision":
            pieces.append(_escape(literal))
            found = True
            break
        if root == hidden:
            continue  # the field and its label go together
        pieces.append(_escape(literal))
        if name is not None:
            fields_before.add(root)
            pieces.append(
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
    if not found:
        raise ConfigError(
            f"data.template has no {{final_decision}}, so a model trained on it was "
            f"never asked for a decision: {template!r}"
        )
    if shown not in fields_before:
        raise ConfigError(
            f"the {setting} setting shows the {shown}, but data.template has no "
            f"{{{shown}}} before {{final_decision}}: {template!r}"
        )
    prompt = "".join(pieces)
    stripped = prompt.rstrip()
    if not stripped:
        raise ConfigError(f"data.template: nothing comes before {{final_decision}}: {template!r}")
    return stripped, prompt[len(stripped) :]


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


# ----------------------------------------------------------------------------------- config checks


def check_template(template: Any, key: str, labeled: bool = True) -> None:
    """Fail before any data is read on a template that cannot format a record."""
    if not isinstance(template, str) or not template:
        raise ConfigError(f"{key} must be a non-empty string, got {template!r}")
    names = template_fields(template, key)
    roots = {re.split(r"[.\[!:]", name, maxsplit=1)[0] for name in names}
    unknown = sorted(roots - set(TEMPLATE_FIELDS))
    if unknown:
        raise ConfigError(
            f"{key} uses unknown field(s) {unknown} in {template!r}; "
            f"available: {', '.join(TEMPLATE_FIELDS)}"
        )
    if not labeled and "final_decision" in roots:
        raise ConfigError(f"{key} uses {{final_decision}}, which pqa_unlabeled records do not have")
    try:
        PubMedQARecord("1", "q", ("c",), "a", "yes").format(template)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as err:
        raise ConfigError(f"{key}: cannot format a record with {template!r}: {err}") from None


# --------------------------------------------------------------------------------- DataModule


class PubMedQADataModule(L.LightningDataModule):
    """PubMedQA question/context/answer/decision text as packed next-token blocks.

    ``prepare_data`` (rank 0) reads, formats and tokenises into the cache; ``setup`` on every rank
    reads the cache. ``sample_prompts`` gives fixed prompts from the validation split for sample
    generations; ``official_test_split`` the authors' 500 PQA-L test questions.
    """

    def __init__(
        self,
        path: str | None = None,
        hub_id: str = HUB_ID,
        hub_config: str = "pqa_labeled",
        template: str = DEFAULT_TEMPLATE,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        val_fraction: float = 0.02,
        seed: int = 1337,
        block_size: int = 128,
        batch_size: int = 8,
        num_workers: int = 0,
        cache_dir: str | None = None,
        tokenizer: str = "gpt2",
        num_sample_questions: int = 3,
        revision: str | None = None,
        exclude_official_test: bool = False,
    ) -> None:
        super().__init__()
        if hub_config not in ORIGINAL_FILES:
            raise ConfigError(
                f"data.hub_config must be one of {', '.join(ORIGINAL_FILES)}, got {hub_config!r}"
            )
        labeled = hub_config != "pqa_unlabeled"
        check_template(template, "data.template", labeled)
        check_template(prompt_template, "data.prompt_template", labeled)
        check_number(val_fraction, "data.val_fraction", (int, float), 0, low_ok=False, high=1)
        check_number(seed, "data.seed", int, -(2**63))
        check_number(block_size, "data.block_size", int, 1)
        check_number(batch_size, "data.batch_size", int, 1)
        check_number(num_workers, "data.num_workers", int, 0)
        check_number(num_sample_questions, "data.num_sample_questions", int, 0)
        if exclude_official_test and hub_config != "pqa_labeled":
            raise ConfigError(
                "data.exclude_official_test needs data.hub_config=pqa_labeled "
                f"(the official test split is part of PQA-L), got {hub_config!r}"
            )
        # in the checkpoint only: the run's params already hold them, as data.* (logged twice else)
        self.save_hyperparameters(logger=False)
        self.path = path
        self.hub_id = hub_id
        self.hub_config = hub_config
        self.labeled = labeled
        self.template = template
        self.prompt_template = prompt_template
        self.val_fraction = float(val_fraction)
        self.seed = seed
        self.block_size = block_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = TokenCache(cache_dir)
        self.tokenizer = load_tokenizer(tokenizer)
        self.num_sample_questions = num_sample_questions
        self.revision = revision
        self.exclude_official_test = bool(exclude_official_test)
        self._source: Source | None = None
        self._records: list[PubMedQARecord] | None = None
        self._split: tuple[list[PubMedQARecord], list[PubMedQARecord]] | None = None
        self._test: list[PubMedQARecord] | None = None
        self.train_dataset: PackedBlocks | None = None
        self.val_dataset: PackedBlocks | None = None
        self.test_dataset: PackedBlocks | None = None

    # ---- records and splits (read once, no tokenising)

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = pubmedqa_source(self.path, self.hub_id, self.hub_config, self.revision)
        return self._source

    def records(self) -> list[PubMedQARecord]:
        """Every record of the configured source, in source order."""
        if self._records is None:
            self._records = load_records(self.source, self.labeled)
            log.info("pubmedqa: %d records from %s", len(self._records), self.source.describe())
        return self._records

    def official_test_split(self) -> list[PubMedQARecord]:
        """The authors' 500-question PQA-L test split (yes, then no, then maybe, as they list
        it)."""
        if self.hub_config != "pqa_labeled":
            raise ConfigError(
                f"the official test split is part of PQA-L: set data.hub_config=pqa_labeled, "
                f"not {self.hub_config!r}"
            )
        if self._test is None:
            self._test = official_test_records(self.records(), self.source.describe())
        return self._test

    def train_val_records(self) -> tuple[list[PubMedQARecord], list[PubMedQARecord]]:
        """The seeded split by record (of the non-test records with ``exclude_official_test``)."""
        if self._split is None:
            pool = self.records()
            if self.exclude_official_test:
                test_ids = {r.pubid for r in self.official_test_split()}
                pool = [r for r in pool if r.pubid not in test_ids]
            self._split = split_train_val(
                pool, self.val_fraction, self.seed, self.source.describe()
            )
        return self._split

    def sample_prompts(self, n: int | None = None) -> list[str]:
        """Prompts of the first ``n`` validation records (default ``num_sample_questions``): fixed
        across runs."""
        return [r.format(self.prompt_template) for r in self.sample_records(n)]

    def sample_references(self, n: int | None = None) -> list[str]:
        """What each sample prompt should be continued with, to log beside the generation.

        The rest of the training text after the prompt when the template starts with the prompt
        (with the defaults: the long answer and ``Decision: <label>``), else the long answer and
        label.
        """
        refs = []
        for r in self.sample_records(n):
            full, prompt = r.format(self.template), r.format(self.prompt_template)
            if full.startswith(prompt):
                refs.append(full[len(prompt) :].strip())
            else:
                refs.append(
                    r.long_answer + (f"\nDecision: {r.final_decision}" if r.final_decision else "")
                )
        return refs

    def sample_records(self, n: int | None = None) -> list[PubMedQARecord]:
        """The first ``n`` validation records (default ``num_sample_questions``)."""
        n = self.num_sample_questions if n is None else n
        check_number(n, "number of sample questions", int, 0)
        return self.train_val_records()[1][:n]

    # ---- tokens (cached)

    def _key(self, *parts: str, **extra: Any) -> str:
        return cache_key(
            dataset="pubmedqa",
            format=FORMAT_VERSION,
            source=self.source.identity(),
            hub_config=self.hub_config,
            template=self.template,
            tokenizer=self.tokenizer.name,
            parts=parts,
            **extra,
        )

    def _tokens(
        self, name: str, key: str, records: Callable[[], Sequence[PubMedQARecord]]
    ) -> np.ndarray:
        """The cached tokens of (name, key); ``records`` is called, and the source read and
        parsed, only on a miss: the key needs nothing but the source's identity and settings."""
        # packing.tokenize_texts looked up at call time, so a test can count the calls
        return self.cache.get_or_build(
            f"pubmedqa-{name}",
            key,
            lambda: packing.tokenize_texts(
                (r.format(self.template) for r in records()), self.tokenizer
            ),
        )

    def _fit_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        key = self._key(
            "train",
            "val",
            seed=self.seed,
            val_fraction=self.val_fraction,
            exclude_official_test=self.exclude_official_test,
        )
        return (
            self._tokens("train", key, lambda: self.train_val_records()[0]),
            self._tokens("val", key, lambda: self.train_val_records()[1]),
        )

    def _test_tokens(self) -> np.ndarray:
        return self._tokens("test", self._key("official-test"), self.official_test_split)

    def prepare_data(self) -> None:
        """Rank 0: read, format and tokenise into the cache, so that other ranks only read it."""
        self._fit_tokens()

    def setup(self, stage: str | None = None) -> None:
        where = self.source.describe()
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            train, val = self._fit_tokens()
            self.train_dataset = PackedBlocks(
                train, self.block_size, f"pubmedqa train split ({where})"
            )
            self.val_dataset = PackedBlocks(
                val, self.block_size, f"pubmedqa validation split ({where})"
            )
        if stage == "test" and self.test_dataset is None:
            if not self.exclude_official_test:
                log.warning(
                    "pubmedqa: the train split includes the official test questions; set "
                    "data.exclude_official_test=true for a model scored on them"
                )
            self.test_dataset = PackedBlocks(
                self._test_tokens(), self.block_size, f"pubmedqa official test split ({where})"
            )

    def _loader(
        self, dataset: PackedBlocks, sampler: EpochShuffleSampler | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        sampler = EpochShuffleSampler(len(self.train_dataset), self.seed)
        return resumable_loader(
            self.train_dataset,
            sampler,
            self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        return self._loader(self.test_dataset)
