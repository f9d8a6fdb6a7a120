"""PubMedQA PQA-L as 3-label sequence classification, on the prompt its scorer asks.

The input of a question is exactly the text :mod:`medlm.eval.pubmedqa` scores a model on:
``decision_prompt(template, setting)`` formatted with the record (with the default template and
``reasoning_required``: ``Question: ...\\nContext: ...\\nDecision:``); its label is the index of
``final_decision`` in ``LABELS`` (yes, no, maybe). So a classifier trained here is scored on the
text it trained on (``score_pubmedqa(..., mode="classifier")``).

Splits: ``test`` is the authors' official 500 PQA-L test questions; ``train`` and ``val`` are a
seeded split by record of the other 500 (``val_fraction`` 0.1 gives the authors' 450/50 fold
size), so no test question is ever trained or validated on.

Tokens: ``tokenizer.encode_prompt`` of the text, cut from the LEFT to ``max_length``, as the
scorer cuts a prompt longer than the model's block size: the end of the prompt, where the decision
is asked, survives. Batches are those of every classification DataModule
(:mod:`medlm.data.classification`):
``input_ids`` and ``attention_mask`` (B, T) right-padded with the tokenizer's ``eot_id``,
``labels`` (B,).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from medlm.data.classification import Example, classification_loader
from medlm.data.pubmedqa import (
    DEFAULT_TEMPLATE,
    HUB_ID,
    LABELS,
    SETTINGS,
    PubMedQARecord,
    check_template,
    decision_prompt,
    load_records,
    official_test_records,
    pubmedqa_source,
    split_train_val,
)
from medlm.data.sources import HubSource, Source
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError
from medlm.utils.checks import check_number

log = logging.getLogger(__name__)


class PubMedQAClassificationDataModule(L.LightningDataModule):
    """PQA-L questions as (prompt tokens, yes/no/maybe index); test = the official 500."""

    num_labels = len(LABELS)
    label_names = LABELS

    def __init__(
        self,
        path: str | None = None,
        hub_id: str = HUB_ID,
        revision: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        setting: str = "reasoning_required",
        max_length: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        seed: int = 1337,
        num_workers: int = 0,
        tokenizer: str = "gpt2",
    ) -> None:
        super().__init__()
        if setting not in SETTINGS:
            raise ConfigError(f"data.setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
        check_template(template, "data.template")
        prompt, _ = decision_prompt(template, setting)  # a template with no decision: data.template
        check_number(max_length, "data.max_length", int, 1)
        check_number(batch_size, "data.batch_size", int, 1)
        check_number(val_fraction, "data.val_fraction", (int, float), 0, low_ok=False, high=1)
        check_number(seed, "data.seed", int, -(2**63))
        check_number(num_workers, "data.num_workers", int, 0)
        # the settings go into checkpoints, so that a scorer can ask in the template and setting
        self.save_hyperparameters(logger=False)
        self.tokenizer = load_tokenizer(tokenizer)
        bare = PubMedQARecord("", "", (), "", None).format(prompt)
        n_bare = len(self.tokenizer.encode_prompt(bare))
        if n_bare >= max_length:
            raise ConfigError(
                f"data.max_length={max_length}: the prompt's own text {bare!r} "
                f"({setting}) takes {n_bare} tokens, leaving no room for a question"
            )
        self.path, self.hub_id, self.revision = path, hub_id, revision
        self.template, self.setting, self.prompt = template, setting, prompt
        self.max_length, self.batch_size, self.num_workers = max_length, batch_size, num_workers
        self.val_fraction, self.seed = float(val_fraction), seed
        self._source: Source | None = None
        self.splits: dict[str, list[PubMedQARecord]] = {}
        self.datasets: dict[str, list[Example]] = {}

    # ---- records and splits

    @property
    def source(self) -> Source:
        """``data.path``, else ``$MEDLM_DATA_DIR/pubmedqa/ori_pqal.json``, else the Hub's PQA-L."""
        if self._source is None:
            self._source = pubmedqa_source(self.path, self.hub_id, "pqa_labeled", self.revision)
        return self._source

    def split_records(self) -> dict[str, list[PubMedQARecord]]:
        """``test``: the official 500; ``train``/``val``: the seeded split of the other 500."""
        if not self.splits:
            where = self.source.describe()
            records = load_records(self.source, labeled=True)
            test = official_test_records(records, where)
            test_ids = {r.pubid for r in test}
            pool = [r for r in records if r.pubid not in test_ids]
            train, val = split_train_val(pool, self.val_fraction, self.seed, where)
            self.splits = {"train": train, "val": val, "test": test}
        return self.splits

    # ---- examples

    def text(self, record: PubMedQARecord) -> str:
        """The scorer's prompt for ``record`` (``decision_prompt`` + ``PubMedQARecord.format``)."""
        return record.format(self.prompt)

    def prepare_data(self) -> None:
        if isinstance(self.source, HubSource):
            self.source.load()  # download into the datasets cache once, on rank 0

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, records in self.split_records().items():
            # the prompt's tokens, the last max_length of them: the end, where the decision is asked
            full = [self.tokenizer.encode_prompt(self.text(r)) for r in records]
            examples = [
                (ids[-self.max_length :], LABELS.index(r.final_decision))
                for ids, r in zip(full, records, strict=True)
            ]
            self.datasets[split] = examples
            log.info(
                "pubmedqa classification %s: %d questions %s, %d cut from the left to "
                "data.max_length=%d",
                split,
                len(records),
                label_counts(examples),
                sum(len(ids) > self.max_length for ids in full),
                self.max_length,
            )

    # ---- loaders

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


def label_counts(examples: Sequence[Example]) -> dict[str, int]:
    """How many examples carry each label, by name (for logs and READMEs)."""
    counts = dict.fromkeys(LABELS, 0)
    for _, label in examples:
        counts[LABELS[label]] += 1
    return counts
