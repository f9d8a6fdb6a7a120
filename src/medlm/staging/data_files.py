"""Hub datasets -> the files medlm's DataModules read under ``$MEDLM_DATA_DIR``, as published.

One :class:`DatasetSpec` per name that ``medlm-prepare stage --datasets`` takes: the Hub dataset
it downloads (the one the DataModule itself would load) and a writer that puts the rows, in the
format the DataModule reads locally, at the path it looks for (``data/<subdir>/<file>``):

- ``pubmedqa``: ``pubmedqa/ori_pqal.json``, the authors' format (an object keyed by PubMed id with
  QUESTION, CONTEXTS, LABELS, MESHES, reasoning_*_pred, final_decision, LONG_ANSWER; the Hub does
  not keep YEAR); ``pubmedqa_artificial``/``pubmedqa_unlabeled``: ``pubmedqa/<config>.parquet``
  in the Hub's columns;
- ``question_pairs``: ``medical_question_pairs/mqp.csv``, Curai's headerless 4-column CSV;
- ``medquad``: ``medquad/xml/<source folder>/<document id>.xml``, MedQuAD's XML, one Document per
  file, rebuilt from the Hub's flat export (lavita/MedQuAD, which also left out GARD's answers;
  the published XML, abachaa/MedQuAD on GitHub, has them and is read as is);
- ``helpsteer``: ``helpsteer/{train,validation}.parquet``;
- ``hellaswag``: ``hellaswag/hellaswag_val.jsonl``, the authors' validation file;
- ``fineweb``/``fineweb_edu``: ``<name>/<config>/train-NNNNN.parquet``, the first rows of the
  streamed corpus, for ``medlm-prepare shards``.

Each converted file is read back with the DataModule's own reader before it is kept.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from medlm.errors import DataError
from medlm.staging.manifest import ItemFiles
from medlm.utils.io import atomic_path, atomic_write

FINEWEB_ROWS = 100_000  # documents of a FineWeb slice unless --fineweb-rows says otherwise
FINEWEB_CONFIG = "sample-10BT"
PARQUET_ROWS_PER_FILE = 100_000
PARQUET_ROWS_PER_GROUP = 10_000  # rows held in memory at a time while a slice streams in

Writer = Callable[["DatasetSpec", Mapping[str, Iterable[dict]], ItemFiles, int | None], int]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset ``--datasets`` can stage: where it comes from and how it is written."""

    name: str
    hub_id: str
    config: str | None
    splits: tuple[str, ...]
    subdir: str  # under DIR/data: the DataModule's subdirectory of $MEDLM_DATA_DIR
    write: Writer
    about: str
    streamed: bool = False  # read row by row as it downloads (a slice of a large corpus)
    columns: tuple[str, ...] = ()  # the columns a Hub-layout copy must have (write_hub_parquet)

    @property
    def rel(self) -> str:
        return f"data/{self.subdir}"

    def describe(self) -> str:
        return self.hub_id + (f" ({self.config})" if self.config else "")


def _columns(spec: DatasetSpec, row: Any, i: int, needed: Iterable[str]) -> None:
    missing = [c for c in needed if not isinstance(row, Mapping) or c not in row]
    if missing:
        raise DataError(
            f"{spec.describe()} row {i}: no column {', '.join(map(repr, missing))}; the Hub "
            f"dataset's layout is not the one medlm stages (expected {', '.join(needed)})"
        )


# ------------------------------------------------------------------------------------- PubMedQA

PUBMEDQA_COLUMNS = ("pubid", "question", "context", "long_answer", "final_decision")


def _joined(value: Any) -> Any:
    """The Hub keeps the authors' reasoning_*_pred strings as lists of characters."""
    return "".join(value) if isinstance(value, list) else value


def pubmedqa_record(spec: DatasetSpec, row: Mapping, i: int) -> tuple[str, dict]:
    """A Hub row of pqa_labeled as the authors' (pubid, record), their key order kept."""
    _columns(spec, row, i, PUBMEDQA_COLUMNS)
    ctx = row["context"]
    if not isinstance(ctx, Mapping) or "contexts" not in ctx:
        raise DataError(f"{spec.describe()} row {i}: column 'context' has no 'contexts'")
    rec = {
        "QUESTION": row["question"],
        "CONTEXTS": list(ctx["contexts"]),
        "LABELS": list(ctx.get("labels") or []),
        "MESHES": list(ctx.get("meshes") or []),
    }
    for key in ("reasoning_required_pred", "reasoning_free_pred"):
        if ctx.get(key) is not None:
            rec[key] = _joined(ctx[key])
    rec["final_decision"] = row["final_decision"]
    rec["LONG_ANSWER"] = row["long_answer"]
    return str(row["pubid"]), rec


def write_pubmedqa_original(
    spec: DatasetSpec, splits: Mapping[str, Iterable[dict]], files: ItemFiles, limit: int | None
) -> int:
    """``ori_pqal.json`` as the authors publish it (``json.dumps(..., indent=4)``), in Hub order."""
    from medlm.data.pubmedqa import ORIGINAL_FILES, load_records
    from medlm.data.sources import LocalSource

    doc: dict[str, dict] = {}
    for i, row in enumerate(splits["train"]):
        pubid, rec = pubmedqa_record(spec, row, i)
        if pubid in doc:
            raise DataError(f"{spec.describe()} row {i}: duplicate pubid {pubid}")
        doc[pubid] = rec
    path = files.path(f"{spec.rel}/{ORIGINAL_FILES[spec.config]}")
    with atomic_write(path, encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=4))
    load_records(LocalSource((path,)), labeled=True)  # what PubMedQADataModule reads
    return len(doc)


def write_hub_parquet(
    spec: DatasetSpec, splits: Mapping[str, Iterable[dict]], files: ItemFiles, limit: int | None
) -> int:
    """Each split as ``<config or split>.parquet`` in the Hub's columns (``Dataset.to_parquet``)."""
    n = 0
    for split, ds in splits.items():
        if len(ds):
            _columns(spec, ds[0], 0, spec.columns)
        name = spec.config or split
        with atomic_path(files.path(f"{spec.rel}/{name}.parquet")) as tmp:
            ds.to_parquet(str(tmp))
        n += len(ds)
    return n


# ------------------------------------------------------------------------ medical question pairs

MQP_COLUMNS = ("dr_id", "question_1", "question_2", "label")


def write_mqp_csv(
    spec: DatasetSpec, splits: Mapping[str, Iterable[dict]], files: ItemFiles, limit: int | None
) -> int:
    """Curai's ``mqp.csv``: no header; doctor id, question 1, question 2, label (1 similar)."""
    from medlm.data.question_pairs import LOCAL_FILE, read_pairs_csv

    path = files.path(f"{spec.rel}/{LOCAL_FILE}")
    n = 0
    with atomic_write(path, encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        for i, row in enumerate(splits["train"]):
            _columns(spec, row, i, MQP_COLUMNS)
            writer.writerow([row[c] for c in MQP_COLUMNS])
            n += 1
    read_pairs_csv(path)  # what QuestionPairsDataModule reads
    return n


# ------------------------------------------------------------------------------------- MedQuAD

MEDQUAD_COLUMNS = (
    "document_id",
    "document_source",
    "document_url",
    "question_id",
    "question_focus",
    "question_type",
    "question",
    "answer",
)
# the published folder of each Document's source attribute (abachaa/MedQuAD)
MEDQUAD_FOLDERS = {
    "CancerGov": "1_CancerGov_QA",
    "GARD": "2_GARD_QA",
    "GHR": "3_GHR_QA",
    "MPlusHealthTopics": "4_MPlus_Health_Topics_QA",
    "NIDDK": "5_NIDDK_QA",
    "NINDS": "6_NINDS_QA",
    "NIHSeniorHealth": "7_SeniorHealth_QA",
    "NHLBI": "8_NHLBI_QA_XML",
    "CDC": "9_CDC_QA",
    "ADAM": "10_MPlus_ADAM_QA",
    "MPlusDrugs": "11_MPlusDrugs_QA",
    "MPlusHerbsSupplements": "12_MPlusHerbsSupplements_QA",
}
_UNSAFE = re.compile(r"[^\w.-]")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _split_bar(value: Any) -> list[str]:
    """lavita/MedQuAD joins several CUIs, types or synonyms with ``|``."""
    return [v for v in _text(value).split("|") if v]


def medquad_document(rows: list[Mapping]) -> ET.Element:
    """One MedQuAD ``<Document>`` from the Hub rows of its question/answer pairs."""
    first = rows[0]
    doc = ET.Element(
        "Document",
        id=_text(first["document_id"]),
        source=_text(first["document_source"]),
        url=_text(first["document_url"]),
    )
    ET.SubElement(doc, "Focus").text = _text(first["question_focus"])
    notes = ET.SubElement(doc, "FocusAnnotations")
    if first.get("category"):
        ET.SubElement(notes, "Category").text = _text(first["category"])
    umls = ET.SubElement(notes, "UMLS")
    cuis = ET.SubElement(umls, "CUIs")
    for cui in _split_bar(first.get("umls_cui")):
        ET.SubElement(cuis, "CUI").text = cui
    types = ET.SubElement(umls, "SemanticTypes")
    for t in _split_bar(first.get("umls_semantic_types")):
        ET.SubElement(types, "SemanticType").text = t
    ET.SubElement(umls, "SemanticGroup").text = _text(first.get("umls_semantic_group"))
    synonyms = _split_bar(first.get("synonyms"))
    if synonyms:
        node = ET.SubElement(notes, "Synonyms")
        for s in synonyms:
            ET.SubElement(node, "Synonym").text = s
    pairs = ET.SubElement(doc, "QAPairs")
    for pid, row in enumerate(rows, 1):
        qa = ET.SubElement(pairs, "QAPair", pid=str(pid))
        question = ET.SubElement(
            qa, "Question", qid=_text(row["question_id"]), qtype=_text(row["question_type"])
        )
        question.text = _text(row["question"])
        ET.SubElement(qa, "Answer").text = _text(row["answer"])
    return doc


def medquad_file_names(keys: Iterable[tuple[str, str, str, str]]) -> list[str]:
    """A file name per document, as MedQuAD names them: ``<id>.xml``, and for the documents that
    share an id (one page split by focus, as ``1_CancerGov_QA/0000013_2*.xml``) ``<id>_1.xml``,
    ``<id>_2.xml``, ... in order of appearance."""
    used: set[tuple[str, str]] = set()
    names = []
    for source, doc_id, _, _ in keys:
        stem = _UNSAFE.sub("_", doc_id) or "document"
        name, k = stem, 0
        while (source, name) in used:
            k += 1
            name = f"{stem}_{k}"
        used.add((source, name))
        names.append(f"{name}.xml")
    return names


def write_medquad_xml(
    spec: DatasetSpec, splits: Mapping[str, Iterable[dict]], files: ItemFiles, limit: int | None
) -> int:
    """MedQuAD's XML: ``xml/<source folder>/<document>.xml``, pairs in the Hub's order. A document
    is the rows of one source, id, url and focus (ids and question ids repeat across files)."""
    from medlm.data.medquad import Summary, read_xml

    documents: dict[tuple[str, str, str, str], list[Mapping]] = {}
    n = 0
    for i, row in enumerate(splits["train"]):
        _columns(spec, row, i, MEDQUAD_COLUMNS)
        key = tuple(
            _text(row[c])
            for c in ("document_source", "document_id", "document_url", "question_focus")
        )
        documents.setdefault(key, []).append(row)
        n += 1
    for key, name in zip(documents, medquad_file_names(documents)):
        source = key[0]
        folder = MEDQUAD_FOLDERS.get(source) or f"{_UNSAFE.sub('_', source) or 'unknown'}_QA"
        path = files.path(f"{spec.rel}/xml/{folder}/{name}")
        with atomic_write(path, "wb") as f:
            tree = ET.ElementTree(medquad_document(documents[key]))
            tree.write(f, encoding="UTF-8", xml_declaration=True)
    if documents:
        read_xml(files.scratch / "files" / spec.rel / "xml", Summary())  # what the conversion reads
    return n


# ----------------------------------------------------------------------------------- HellaSwag

HELLASWAG_KEYS = (
    "ind",
    "activity_label",
    "ctx_a",
    "ctx_b",
    "ctx",
    "split",
    "split_type",
    "label",
    "endings",
    "source_id",
)


def hellaswag_item(spec: DatasetSpec, row: Mapping, i: int) -> dict:
    """A Hub row as a line of the authors' ``hellaswag_val.jsonl`` (label and ind as numbers)."""
    _columns(spec, row, i, ("ctx", "endings", "label"))
    item = {k: row[k] for k in HELLASWAG_KEYS if k in row}
    label = _text(row["label"]).strip()
    if not label.isdigit():
        raise DataError(f"{spec.describe()} row {i}: label {row['label']!r} is not a number")
    item["label"] = int(label)
    if isinstance(item.get("ind"), str) and item["ind"].isdigit():
        item["ind"] = int(item["ind"])
    return item


def write_hellaswag_jsonl(
    spec: DatasetSpec, splits: Mapping[str, Iterable[dict]], files: ItemFiles, limit: int | None
) -> int:
    from medlm.data.sources import LocalSource
    from medlm.eval.hellaswag import FILE_PATTERNS, iter_items

    path = files.path(f"{spec.rel}/{FILE_PATTERNS[0]}")
    n = 0
    with atomic_write(path, encoding="utf-8") as f:
        for i, row in enumerate(splits["validation"]):
            f.write(json.dumps(hellaswag_item(spec, row, i), ensure_ascii=False) + "\n")
            n += 1
    for _ in iter_items(LocalSource((path,))):  # what medlm-eval's HellaSwag reads
        pass
    return n


# ------------------------------------------------------------------------------ FineWeb slices


def write_parquet_slice(
    spec: DatasetSpec, splits: Mapping[str, Iterable[dict]], files: ItemFiles, limit: int | None
) -> int:
    """The first ``limit`` rows of a streamed split as ``train-NNNNN.parquet`` files, read and
    written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = iter(splits["train"])
    features = getattr(splits["train"], "features", None)
    schema = features.arrow_schema if features is not None else None
    n, part = 0, 0

    def next_batch(in_file: int) -> list[dict]:
        want = min(PARQUET_ROWS_PER_GROUP, PARQUET_ROWS_PER_FILE - in_file)
        return list(islice(rows, want if limit is None else min(want, limit - n)))

    batch = next_batch(0)
    if batch:
        _columns(spec, batch[0], 0, ("text",))
    while batch:
        path = files.path(f"{spec.rel}/{spec.config}/train-{part:05d}.parquet")
        with atomic_path(path) as tmp:
            in_file, writer = 0, None
            try:
                while batch:
                    table = pa.Table.from_pylist(batch, schema=schema)
                    schema = table.schema
                    writer = writer or pq.ParquetWriter(str(tmp), schema)
                    writer.write_table(table)
                    in_file, n = in_file + len(batch), n + len(batch)
                    if in_file >= PARQUET_ROWS_PER_FILE:
                        break
                    batch = next_batch(in_file)
            finally:
                if writer is not None:
                    writer.close()
        part += 1
        batch = next_batch(0) if in_file >= PARQUET_ROWS_PER_FILE else []
    if n == 0:
        raise DataError(f"{spec.describe()}: the stream gave no rows")
    return n


# ---------------------------------------------------------------------------------- the table

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "pubmedqa",
            "qiaojin/PubMedQA",
            "pqa_labeled",
            ("train",),
            "pubmedqa",
            write_pubmedqa_original,
            "PubMedQA PQA-L, 1,000 labelled questions -> pubmedqa/ori_pqal.json",
        ),
        DatasetSpec(
            "pubmedqa_artificial",
            "qiaojin/PubMedQA",
            "pqa_artificial",
            ("train",),
            "pubmedqa",
            write_hub_parquet,
            "PubMedQA PQA-A, 211k generated questions -> pubmedqa/pqa_artificial.parquet",
            columns=PUBMEDQA_COLUMNS,
        ),
        DatasetSpec(
            "pubmedqa_unlabeled",
            "qiaojin/PubMedQA",
            "pqa_unlabeled",
            ("train",),
            "pubmedqa",
            write_hub_parquet,
            "PubMedQA PQA-U, 61k unlabelled questions -> pubmedqa/pqa_unlabeled.parquet",
            columns=PUBMEDQA_COLUMNS[:4],
        ),
        DatasetSpec(
            "question_pairs",
            "curaihealth/medical_questions_pairs",
            None,
            ("train",),
            "medical_question_pairs",
            write_mqp_csv,
            "Curai's 3,048 medical question pairs -> medical_question_pairs/mqp.csv",
        ),
        DatasetSpec(
            "medquad",
            "lavita/MedQuAD",
            None,
            ("train",),
            "medquad",
            write_medquad_xml,
            "MedQuAD's 47k question/answer pairs -> medquad/xml/<source>/<document>.xml",
        ),
        DatasetSpec(
            "helpsteer",
            "nvidia/HelpSteer",
            None,
            ("train", "validation"),
            "helpsteer",
            write_hub_parquet,
            "NVIDIA HelpSteer -> helpsteer/{train,validation}.parquet",
            columns=("prompt", "response"),
        ),
        DatasetSpec(
            "hellaswag",
            "Rowan/hellaswag",
            None,
            ("validation",),
            "hellaswag",
            write_hellaswag_jsonl,
            "HellaSwag validation, 10,042 items -> hellaswag/hellaswag_val.jsonl",
        ),
        DatasetSpec(
            "fineweb_edu",
            "HuggingFaceFW/fineweb-edu",
            FINEWEB_CONFIG,
            ("train",),
            "fineweb_edu",
            write_parquet_slice,
            "FineWeb-Edu, the first --fineweb-rows documents -> fineweb_edu/<config>/*.parquet",
            streamed=True,
        ),
        DatasetSpec(
            "fineweb",
            "HuggingFaceFW/fineweb",
            FINEWEB_CONFIG,
            ("train",),
            "fineweb",
            write_parquet_slice,
            "FineWeb, the first --fineweb-rows documents -> fineweb/<config>/*.parquet",
            streamed=True,
        ),
    )
}


def stage_command(hub_id: str, config: str | None) -> str | None:
    """The ``medlm-prepare stage`` line that stages Hub dataset ``hub_id`` (None: none does)."""
    for spec in DATASETS.values():
        if spec.hub_id == hub_id and (config is None or spec.streamed or spec.config == config):
            return f"medlm-prepare stage DIR --datasets {spec.name}"
    return None
