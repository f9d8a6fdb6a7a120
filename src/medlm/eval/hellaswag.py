"""HellaSwag, completion style, as karpathy/build-nanogpt's ``hellaswag.py`` scores it.

Each item is a context and four endings, one right (``label``). The model reads the context, then
each ending with a leading space (``encode(ctx)``, ``encode(" " + ending)``); only the ending's
tokens are scored. Three metrics, each named for what it ranks by:

- ``acc``: the ending with the highest summed log-likelihood (lowest summed loss). build-nanogpt
  computes this as ``acc`` too (its ``pred = sum_loss.argmin()``).
- ``acc_norm``: the highest mean log-likelihood per ending token (lowest mean loss), build-nanogpt's
  ``acc_norm`` (``avg_loss.argmin()``); its reference for OpenAI GPT-2 124M on all 10,042
  validation items: acc 0.2859, acc_norm 0.2955.
- ``acc_norm_bytes``: the highest log-likelihood divided by the ending's length in UTF-8 bytes, the
  normalisation of the EleutherAI harness's ``acc_norm`` (its ``completion_len`` is the length of
  the ending string without the leading space, in characters, the same as bytes for the ASCII
  text of HellaSwag). The harness reports for GPT-2 124M: acc 0.2892, acc_norm 0.3114.

What differs from the harness, on purpose (build-nanogpt's input is kept for all three metrics):
the harness's query is ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``
and its choices ``preprocess(ending)``, where ``preprocess`` strips, turns " [title]" into ". ",
removes other WikiHow ``[...]`` markers and collapses double spaces; here the context is the raw
``ctx`` and the endings are raw. So ``acc_norm_bytes`` ranks the way the harness ranks, on
build-nanogpt's text, and is not expected to reproduce 0.3114 exactly.

Scoring is batched (:mod:`medlm.eval.likelihood`: the context once per item, the four endings as
segments of the same row) and sharded across DDP ranks: rank ``r`` of ``w`` takes items
``r, r + w, ...``, as build-nanogpt's ``train_gpt2.py`` does; :class:`HellaSwagCounts` sum
across ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from typing import Any

import torch
from torch import nn

from medlm.data.sources import HubSource, RawRecord, Source, resolve_source
from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, DataError, MedlmError
from medlm.eval.likelihood import check_vocab, continuation_logprobs

HUB_ID = "Rowan/hellaswag"
SUBDIR = "hellaswag"
# the authors' file name first (rowanz/hellaswag data/), then exports of the Hub's split
FILE_PATTERNS = (
    "hellaswag_val.jsonl",
    "validation.jsonl",
    "validation.parquet",
    "validation/*.parquet",
    "data/validation-*.parquet",
)
N_ENDINGS = 4


@dataclass(frozen=True)
class HellaSwagItem:
    """One validation item; ``where`` is its file and line (or hub row) for messages."""

    ind: str
    ctx: str
    endings: tuple[str, ...]
    label: int
    activity_label: str = ""
    where: str = ""


def parse_item(raw: RawRecord) -> HellaSwagItem:
    """Decode and check one record: a context, exactly four non-empty endings, a label 0-3."""
    data, where = raw.data, raw.location()
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    ctx = data.get("ctx")
    if not isinstance(ctx, str) or not ctx.strip():
        raise DataError(f"{where}: field 'ctx' must be a non-empty string, got {ctx!r:.80}")
    endings = data.get("endings")
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise DataError(
            f"{where}: field 'endings' must be a list of {N_ENDINGS} strings, got {endings!r:.80}"
        )
    if len(endings) != N_ENDINGS:
        raise DataError(f"{where}: {len(endings)} endings; a HellaSwag item has {N_ENDINGS}")
    for i, e in enumerate(endings):
        if not e.strip():
            raise DataError(f"{where}: ending {i} is empty")
    label = data.get("label")
    if isinstance(label, str) and label.strip().isdigit():  # the Hub stores labels as strings
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < N_ENDINGS:
        raise DataError(
            f"{where}: label {data.get('label')!r} is not an ending's index "
            f"(0 to {N_ENDINGS - 1}); only labelled items (the validation split) "
            "can be scored"
        )
    ind = data.get("ind")
    activity = data.get("activity_label")
    return HellaSwagItem(
        str(ind) if ind is not None else where,
        ctx,
        tuple(endings),
        label,
        activity if isinstance(activity, str) else "",
        where,
    )


def hellaswag_source(path: str | os.PathLike | None = None, hub_id: str = HUB_ID) -> Source:
    """A local ``.jsonl``/``.parquet`` file or directory, ``$MEDLM_DATA_DIR/hellaswag``, or the
    Hub's validation split (``datasets.load_dataset("Rowan/hellaswag", split="validation")``)."""
    hub = HubSource(hub_id, None, "validation", hint_subdir=SUBDIR, hint_file=FILE_PATTERNS[0])
    return resolve_source(path, subdir=SUBDIR, patterns=FILE_PATTERNS, hub=hub)


def iter_items(source: Source) -> Iterator[HellaSwagItem]:
    for raw in source.records():
        yield parse_item(raw)


def load_hellaswag(
    path: str | os.PathLike | None = None, limit: int | None = None, hub_id: str = HUB_ID
) -> list[HellaSwagItem]:
    """The first ``limit`` (default all) validated items of the validation split; a bad line is
    one DataError naming its file and line."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"benchmark.limit must be a positive integer or null, got {limit!r}")
    source = hellaswag_source(path, hub_id)
    items: list[HellaSwagItem] = []
    for item in iter_items(source):
        if limit is not None and len(items) >= limit:
            break
        items.append(item)
    if not items:
        raise DataError(f"{source.describe()}: no HellaSwag items")
    return items


# ----------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class HellaSwagPrediction:
    """One item: each ending's summed log-likelihood, its token and byte counts, and the ending
    each metric picks."""

    id: str
    gold: int
    logprobs: tuple[float, ...]
    n_tokens: tuple[int, ...]
    n_bytes: tuple[int, ...]

    @property
    def pred(self) -> int:  # acc: highest sum
        return _first_max(self.logprobs)

    @property
    def pred_norm(self) -> int:  # acc_norm: highest mean per token
        return _first_max([s / n for s, n in zip(self.logprobs, self.n_tokens)])

    @property
    def pred_norm_bytes(self) -> int:  # acc_norm_bytes: highest per byte
        return _first_max([s / n for s, n in zip(self.logprobs, self.n_bytes)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gold": self.gold,
            "prediction": self.pred,
            "prediction_norm": self.pred_norm,
            "prediction_norm_bytes": self.pred_norm_bytes,
            "scores": {
                "logprob": list(self.logprobs),
                "tokens": list(self.n_tokens),
                "bytes": list(self.n_bytes),
            },
        }


def _first_max(values: Sequence[float]) -> int:
    """Index of the largest value, the first on a tie (as ``argmin`` of the losses picks)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass
class HellaSwagCounts:
    """Items scored and how many each metric got right: plain sums, so ranks' counts add up."""

    n: int = 0
    n_correct: int = 0  # acc
    n_correct_norm: int = 0  # acc_norm
    n_correct_norm_bytes: int = 0  # acc_norm_bytes

    @classmethod
    def of(cls, predictions: Sequence[HellaSwagPrediction]) -> HellaSwagCounts:
        return cls(
            len(predictions),
            sum(p.pred == p.gold for p in predictions),
            sum(p.pred_norm == p.gold for p in predictions),
            sum(p.pred_norm_bytes == p.gold for p in predictions),
        )

    def __add__(self, other: HellaSwagCounts) -> HellaSwagCounts:
        return HellaSwagCounts(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def all_reduce(self, device: torch.device | str | None = None) -> HellaSwagCounts:
        """The sum over every rank when ``torch.distributed`` is initialised (every rank must
        call it), else these counts. ``device``: where the counts travel; default the current
        CUDA device under NCCL, else the CPU."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if device is None:
            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu"
        t = torch.tensor(astuple(self), dtype=torch.long, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return HellaSwagCounts(*(int(v) for v in t.tolist()))

    def metrics(self) -> dict[str, float]:
        """``acc``, ``acc_norm``, ``acc_norm_bytes`` and ``n``."""
        if self.n == 0:
            raise MedlmError("hellaswag: no items were scored")
        return {
            "acc": self.n_correct / self.n,
            "acc_norm": self.n_correct_norm / self.n,
            "acc_norm_bytes": self.n_correct_norm_bytes / self.n,
            "n": self.n,
        }


def shard(
    items: Sequence[HellaSwagItem], rank: int = 0, world_size: int = 1
) -> list[HellaSwagItem]:
    """Rank ``rank``'s items: every ``world_size``-th, starting at ``rank``."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    return list(items[rank::world_size])


def predict_hellaswag(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[HellaSwagItem],
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[HellaSwagPrediction]:
    """Every item's ending log-likelihoods under a causal LM (an in-memory model; its mode is
    restored afterwards, so a training callback may call it)."""
    check_vocab(model, tokenizer)
    requests, ending_tokens = [], []
    for item in items:
        endings = [tokenizer.encode(" " + e) for e in item.endings]
        ending_tokens.append(endings)
        requests.append((tokenizer.encode_prompt(item.ctx), endings))
    result = continuation_logprobs(model, requests, batch_size, device)
    return [
        HellaSwagPrediction(
            item.ind,
            item.label,
            tuple(lp),
            tuple(len(t) for t in toks),
            tuple(len(e.encode("utf-8")) for e in item.endings),
        )
        for item, lp, toks in zip(items, result.logprobs, ending_tokens)
    ]


def score_hellaswag(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[HellaSwagItem],
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
) -> HellaSwagCounts:
    """This rank's counts over its shard of ``items``; ``.all_reduce()`` sums them over ranks and
    ``.metrics()`` turns them into acc, acc_norm, acc_norm_bytes."""
    mine = shard(items, rank, world_size)
    if not mine:
        return HellaSwagCounts()
    return HellaSwagCounts.of(predict_hellaswag(model, tokenizer, mine, batch_size, device))
