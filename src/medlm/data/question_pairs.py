"""Curai's medical question pairs (3,048 pairs, 1 = same meaning) as a sequence-classification task.

Sources: the published CSV (no header; doctor id, question 1, question 2, label) given as ``path``
or found at ``$MEDLM_DATA_DIR/medical_question_pairs/mqp.csv``; otherwise the Hub's
``curaihealth/medical_questions_pairs`` (fields dr_id, question_1, question_2, label).

Each original question (question_1) appears in two pairs: one rewrite with the same meaning and
one with a different meaning. Splits keep both pairs of a question together, so that no test
question was seen in training. Batches are ``{"input_ids", "attention_mask"}`` (B, T), right-padded
with ``<|endoftext|>``, and ``labels`` (B,).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from medlm.data.classification import classification_loader
from medlm.data.sources import HubSource, Source, resolve_source
from medlm.data.splits import seeded_split
from medlm.data.tokenizer import Tokenizer, load_tokenizer
from medlm.errors import ConfigError, DataError

HUB_ID = "curaihealth/medical_questions_pairs"
SUBDIR = "medical_question_pairs"
LOCAL_FILE = "mqp.csv"
DEFAULT_TEMPLATE = "Question 1: {question_1}\nQuestion 2: {question_2}\nSame meaning:"
CSV_HEADER = ("dr_id", "question_1", "question_2", "label")


@dataclass(frozen=True)
class QuestionPair:
    dr_id: str
    question_1: str
    question_2: str
    label: int
    source: str  # "file:line" or "hub_id record i", for error messages


def _check_pair(dr_id: object, q1: object, q2: object, label: object, where: str) -> QuestionPair:
    for name, q in (("question 1", q1), ("question 2", q2)):
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: {name} is empty")
    lab = str(label).strip()
    if lab not in ("0", "1"):
        raise DataError(f"{where}: label must be 0 or 1, got {label!r}")
    return QuestionPair(str(dr_id).strip(), q1.strip(), q2.strip(), int(lab), where)


def read_pairs_csv(path: str | Path) -> list[QuestionPair]:
    """Read and check Curai's CSV; a header row named like the Hub's fields is skipped.

    A quoted field may run over lines, but not over whole pairs: a field holding lines that
    are pairs of their own is an unbalanced quote (a stray ``"`` that swallowed the pairs after
    it into one question), reported at the line where it opened.
    """
    path = Path(path)
    pairs: list[QuestionPair] = []
    line = 1  # first line of the next record
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, strict=True)
            for row in reader:
                where, start, line = f"{path}:{line}", line, reader.line_num + 1
                swallowed = _swallowed_pairs(row) if reader.line_num > start else []
                if swallowed:
                    raise DataError(_unbalanced_quote(path, start, reader.line_num, swallowed))
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if not pairs and tuple(c.strip().lower() for c in row) == CSV_HEADER:
                    continue
                if len(row) != 4:
                    raise DataError(
                        f"{where}: expected 4 columns (doctor id, question 1, question 2, "
                        f"label), got {len(row)}"
                    )
                pairs.append(_check_pair(*row, where=where))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        if reader.line_num > line:  # a quoted field opened on an earlier line went wrong here
            raise DataError(_unbalanced_quote(path, line, reader.line_num, [], err)) from None
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
    if not pairs:
        raise DataError(f"{path}: no question pairs")
    return pairs


def _swallowed_pairs(row: list[str]) -> list[str]:
    """The lines inside ``row``'s fields (after a field's first line) that read as whole pairs:
    doctor id, two questions and a 0/1 label."""
    swallowed = []
    for value in row:
        for text in value.splitlines()[1:]:
            fields = next(csv.reader([text]), [])
            if len(fields) == 4 and fields[3].strip() in ("0", "1"):
                swallowed.append(text)
    return swallowed


def _unbalanced_quote(
    path: Path, start: int, end: int, swallowed: list[str], err: csv.Error | None = None
) -> str:
    """The message for a quoted field opened on line ``start`` and still open on line ``end``."""
    if swallowed:
        what = f"holds {len(swallowed)} line(s) that are pairs of their own ({swallowed[0][:60]!r})"
    else:
        what = f"is still open there ({err})"
    return (
        f"{path}:{start}: unbalanced quote: a quoted field opened on line {start} runs to line "
        f"{end} and {what}; close or remove the quote"
    )


def read_pairs_hub(source: HubSource) -> list[QuestionPair]:
    ds = source.load()
    missing = [c for c in CSV_HEADER if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source.describe()}: records lack the fields {missing} (has {ds.column_names})"
        )
    return [
        _check_pair(
            r["dr_id"], r["question_1"], r["question_2"], r["label"], f"{source.hub_id} record {i}"
        )
        for i, r in enumerate(ds)
    ]


def split_by_question(
    pairs: Sequence[QuestionPair], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[QuestionPair]]:
    """Seeded train/val/test split over original questions: pairs sharing question_1 stay
    together."""
    groups: dict[str, list[QuestionPair]] = {}
    for p in pairs:
        groups.setdefault(p.question_1, []).append(p)
    keys = sorted(groups)
    n = len(pairs)
    sizes = {"test": round(test_fraction * n), "val": round(val_fraction * n)}
    parts = seeded_split([len(groups[k]) for k in keys], sizes, seed)
    out = {
        split: [p for i in parts[split] for p in groups[keys[i]]]
        for split in ("train", "val", "test")
    }
    if not out["train"]:
        raise ConfigError(
            f"data: {n} pairs leave nothing to train on with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    return out


def encode_pair(
    template: str, q1: str, q2: str, max_length: int, tokenizer: Tokenizer
) -> list[int]:
    """Tokens of the filled template, at most ``max_length``; an overlong pair is cut inside its
    questions (the longer first), so that the template's tail, the token scored, survives."""
    encode, decode = tokenizer.encode, tokenizer.decode
    ids = encode(template.format(question_1=q1, question_2=q2))
    while len(ids) > max_length:
        t1, t2 = encode(q1), encode(q2)
        if not t1 and not t2:
            return ids[:max_length]  # the template alone is too long
        for _ in range(len(ids) - max_length):
            if len(t1) >= len(t2):
                t1 = t1[:-1]
            else:
                t2 = t2[:-1]
        q1, q2 = decode(t1).rstrip("\ufffd"), decode(t2).rstrip("\ufffd")  # no half characters
        ids = encode(template.format(question_1=q1, question_2=q2))
    return ids


class PairDataset(Dataset):
    """Token ids and labels of a list of pairs, tokenised once."""

    def __init__(
        self, pairs: Iterable[QuestionPair], template: str, max_length: int, tokenizer: Tokenizer
    ) -> None:
        self.pairs = list(pairs)
        self.examples = [
            (encode_pair(template, p.question_1, p.question_2, max_length, tokenizer), p.label)
            for p in self.pairs
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.examples[i]


class QuestionPairsDataModule(L.LightningDataModule):
    num_labels = 2

    def __init__(
        self,
        path: str | None = None,
        hub_id: str = HUB_ID,
        template: str = DEFAULT_TEMPLATE,
        max_length: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 1337,
        num_workers: int = 0,
        tokenizer: str = "gpt2",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"data.max_length must be a positive integer, got {max_length!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1), got {frac!r}")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction must be < 1, got "
                f"{val_fraction} + {test_fraction}"
            )
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers!r}")
        try:
            bare = template.format(question_1="", question_2="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"data.template {template!r} is not a format string over {{question_1}} and "
                f"{{question_2}}: {type(err).__name__}: {err}"
            ) from None
        if "{question_1}" not in template or "{question_2}" not in template:
            raise ConfigError(
                f"data.template must contain {{question_1}} and {{question_2}}, got {template!r}"
            )
        self.tokenizer = load_tokenizer(tokenizer)
        if len(self.tokenizer.encode(bare)) >= max_length:
            raise ConfigError(
                f"data.template alone takes {len(self.tokenizer.encode(bare))} tokens, no room "
                "for the "
                f"questions within data.max_length={max_length}"
            )
        self.path, self.hub_id, self.template = path, hub_id, template
        self.max_length, self.batch_size, self.num_workers = max_length, batch_size, num_workers
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self._source: Source | None = None
        self.splits: dict[str, list[QuestionPair]] = {}
        self.datasets: dict[str, PairDataset] = {}

    @property
    def source(self) -> Source:
        """``data.path`` (the CSV, or a folder holding it), ``$MEDLM_DATA_DIR``, else the Hub."""
        if self._source is None:
            hub = HubSource(self.hub_id, None, "train", hint_subdir=SUBDIR, hint_file=LOCAL_FILE)
            self._source = resolve_source(self.path, subdir=SUBDIR, patterns=[LOCAL_FILE], hub=hub)
        return self._source

    def read_pairs(self) -> list[QuestionPair]:
        source = self.source
        if isinstance(source, HubSource):
            return read_pairs_hub(source)
        return [pair for path in source.files for pair in read_pairs_csv(path)]

    def prepare_data(self) -> None:
        if isinstance(self.source, HubSource):
            self.source.load()  # download into the datasets cache once, on rank 0

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.splits = split_by_question(
            self.read_pairs(), self.val_fraction, self.test_fraction, self.seed
        )
        self.datasets = {
            k: PairDataset(v, self.template, self.max_length, self.tokenizer)
            for k, v in self.splits.items()
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        return classification_loader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            pad_id=self.tokenizer.eot_id,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
