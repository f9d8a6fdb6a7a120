"""HellaSwag scorer: known answers under a hand-built model, build-nanogpt's computation redone with
transformers, counts that add up over ranks (also over a real 2-process gloo group), and every bad
input line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlm.data.sources import RawRecord
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError, MedlmError
from medlm.eval.hellaswag import (
    HellaSwagCounts,
    HellaSwagItem,
    load_hellaswag,
    parse_item,
    predict_hellaswag,
    score_hellaswag,
    shard,
)
from medlm.models.gpt2 import GPT2, GPT2Config

TOK = load_tokenizer("gpt2")


def item(ctx: str, endings: list[str], label: int, ind: int = 0) -> HellaSwagItem:
    return parse_item(
        RawRecord(
            "test",
            f"item {ind}",
            None,
            {"ind": ind, "ctx": ctx, "endings": endings, "label": label, "activity_label": "Test"},
        )
    )


# ---------------------------------------------------------------------- known answers, by design


class Unigram(nn.Module):
    """A causal LM whose next-token distribution ignores the context: ``logits`` everywhere. Each
    ending's log-likelihood is then a sum of fixed per-token values, so the answers are known."""

    def __init__(self, boosts: dict[int, float]) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=TOK.vocab_size, block_size=64)
        logits = torch.zeros(TOK.vocab_size)
        for token, value in boosts.items():
            logits[token] = value
        self.register_buffer("logits", logits)

    def forward(self, idx, pos=None, mask=None, cache=None):
        return self.logits.expand(*idx.shape, -1)  # (B, T, vocab)


YES, NO, MAYBE = (TOK.encode(" " + w)[0] for w in ("yes", "no", "maybe"))
# With these boosts: " yes" has the highest sum (one likely token), " no no no" the highest mean per
# token (three very likely tokens), " maybe" the highest per byte (one token over five bytes).
BOOSTS = {YES: 8.0, NO: 9.0, MAYBE: 7.5}
S = ["yes", "no no no", "maybe", "unrelated words here"]
KNOWN = [  # (endings, label), and which of acc / acc_norm / acc_norm_bytes gets it right
    ((S, 0), (1, 0, 0)),
    ((S, 1), (0, 1, 0)),
    ((S, 2), (0, 0, 1)),
    ((S, 3), (0, 0, 0)),
    ((["maybe", "yes", "unrelated words here", "no no no"], 1), (1, 0, 0)),
    ((["no no no", "unrelated words here", "maybe", "yes"], 0), (0, 1, 0)),
]


def test_each_metric_ranks_by_what_it_is_named_for() -> None:
    model = Unigram(BOOSTS)
    items = [
        item("A man is sitting on a roof. he", e, label, i)
        for i, ((e, label), _) in enumerate(KNOWN)
    ]
    logp = torch.log_softmax(model.logits, -1)
    for it, (_, right) in zip(items, KNOWN):  # the design, computed independently
        toks = [TOK.encode(" " + e) for e in it.endings]
        sums = [sum(logp[t].item() for t in ts) for ts in toks]
        picks = (
            max(range(4), key=lambda i: sums[i]),
            max(range(4), key=lambda i: sums[i] / len(toks[i])),
            max(range(4), key=lambda i: sums[i] / len(it.endings[i].encode())),
        )
        assert tuple(int(p == it.label) for p in picks) == right
    counts = score_hellaswag(model, TOK, items, batch_size=4)
    assert counts == HellaSwagCounts(6, 2, 2, 1)
    assert counts.metrics() == {"acc": 2 / 6, "acc_norm": 2 / 6, "acc_norm_bytes": 1 / 6, "n": 6}
    predictions = predict_hellaswag(model, TOK, items[:1])
    first = predictions[0]
    assert (first.pred, first.pred_norm, first.pred_norm_bytes) == (0, 1, 2)
    assert predictions[0].n_tokens == (1, 3, 1, len(TOK.encode(" unrelated words here")))
    assert predictions[0].n_bytes == (3, 8, 5, 20)


# --------------------------------------------------------- build-nanogpt's way, with transformers

ITEMS = [
    (
        "A man is sitting on a roof. he",
        [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        3,
    ),
    (
        "A woman is outside with a bucket and a dog. The dog is running around trying to avoid a "
        "bath."
        " she",
        [
            "rinses the bucket off with soap and blow dry the dog's head.",
            "uses a hose to keep it from getting soapy.",
            "gets the dog wet, then it runs away again.",
            "gets into a bath tub with the dog.",
        ],
        2,
    ),
    (
        "Making a sandwich: The chef",
        [
            "slices.",
            "puts the bread on the counter and spreads butter "
            "over every slice before adding thin cuts of ham.",
            "eats",
            "café au lait, naïvely.",
        ],
        1,
    ),
    (
        "How to tie a tie. [title] Drape the tie",
        [
            "around your neck.",
            "in the oven at 400 degrees.",
            "over the river.",
            "gently, gently, gently.",
        ],
        0,
    ),
    (
        "Kids play soccer. A boy",
        [
            "kicks the ball into the goal.",
            "reads a book.",
            "sings.",
            "flies to the moon on a very large kite made of paper.",
        ],
        0,
    ),
]


def build_nanogpt_reference(
    hf_model, ctx: str, endings: list[str]
) -> tuple[list[float], int, int, int]:
    """build-nanogpt's render_example + evaluate, written out with transformers: (summed losses,
    pred by sum, pred by mean, pred by per-byte log-likelihood)."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    ctx_tokens = enc.encode(ctx)
    rows = [ctx_tokens + enc.encode(" " + e) for e in endings]
    masks = [[0] * len(ctx_tokens) + [1] * (len(r) - len(ctx_tokens)) for r in rows]
    T = max(len(r) for r in rows)
    tokens = torch.zeros(4, T, dtype=torch.long)
    mask = torch.zeros(4, T, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        tokens[i, : len(r)], mask[i, : len(m)] = torch.tensor(r), torch.tensor(m)
    with torch.no_grad():
        logits = hf_model(tokens).logits
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).double(),
        tokens[:, 1:].reshape(-1),
        reduction="none",
    ).view(4, -1)
    shift_mask = mask[:, 1:]
    sum_loss = (losses * shift_mask).sum(1)
    avg_loss = sum_loss / shift_mask.sum(1)
    per_byte = sum_loss / torch.tensor([len(e.encode("utf-8")) for e in endings])
    return sum_loss.tolist(), int(sum_loss.argmin()), int(avg_loss.argmin()), int(per_byte.argmin())


def test_scores_equal_build_nanogpt_computed_with_transformers(tiny_hf_gpt2: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_gpt2).eval()
    model = GPT2.from_pretrained(tiny_hf_gpt2).eval()
    items = [item(c, e, label, i) for i, (c, e, label) in enumerate(ITEMS)]
    predictions = predict_hellaswag(model, TOK, items, batch_size=2)
    want = HellaSwagCounts()
    for it, p in zip(items, predictions):
        sum_loss, pred, pred_norm, pred_bytes = build_nanogpt_reference(
            hf_model, it.ctx, list(it.endings)
        )
        assert [-x for x in p.logprobs] == pytest.approx(sum_loss, abs=1e-4)
        assert (p.pred, p.pred_norm, p.pred_norm_bytes) == (pred, pred_norm, pred_bytes)
        want += HellaSwagCounts(
            1, int(pred == it.label), int(pred_norm == it.label), int(pred_bytes == it.label)
        )
    assert score_hellaswag(model, TOK, items, batch_size=3) == want
    assert p.as_dict()["id"] == "4" and p.as_dict()["gold"] == 0


# --------------------------------------------------------------------------------------- ranks


def small_model() -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(block_size=128, n_layer=1, n_head=2, n_embd=16)).eval()


def many_items() -> list[HellaSwagItem]:
    return [
        item(c + f" {k}", e, (label + k) % 4, 10 * k + i)
        for k in range(2)
        for i, (c, e, label) in enumerate(ITEMS)
    ]


@pytest.mark.parametrize("world_size", [2, 3, 11])
def test_rank_counts_add_up_to_the_single_process_counts(world_size: int) -> None:
    model, items = small_model(), many_items()
    single = score_hellaswag(model, TOK, items, batch_size=4)
    per_rank = [
        score_hellaswag(model, TOK, items, 4, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert sum(per_rank, HellaSwagCounts()) == single and single.n == len(items)
    assert sorted(i.ind for r in range(world_size) for i in shard(items, r, world_size)) == sorted(
        i.ind for i in items
    )
    assert single.all_reduce() == single  # no process group: the counts as they are


def _gloo_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        counts = score_hellaswag(small_model(), TOK, many_items(), 4, rank, world_size)
        total = counts.all_reduce()
        Path(out_dir, f"{rank}.json").write_text(json.dumps([vars(counts), vars(total)]))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_counts_over_a_real_gloo_group(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(
        _gloo_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    single = score_hellaswag(small_model(), TOK, many_items(), 4)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert all(HellaSwagCounts(**total) == single for _, total in results)
    assert HellaSwagCounts(**results[0][0]) != single  # each rank scored only its half


def test_bad_rank_and_empty_counts() -> None:
    with pytest.raises(ConfigError, match="rank must be an integer in \\[0, 2\\)"):
        shard([], 2, 2)
    with pytest.raises(ConfigError, match="world_size"):
        shard([], 0, 0)
    assert (
        score_hellaswag(small_model(), TOK, many_items()[:1], rank=1, world_size=2)
        == HellaSwagCounts()
    )
    with pytest.raises(MedlmError, match="no items were scored"):
        HellaSwagCounts().metrics()


def test_a_model_whose_vocabulary_does_not_fit_the_tokenizer() -> None:
    model = GPT2(GPT2Config(block_size=64, vocab_size=1000, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ConfigError, match=r"vocabulary \(1,000 tokens\) does not fit the tok"):
        score_hellaswag(model, TOK, many_items())


# ---------------------------------------------------------------------------------------- files


def official_line(ind: int, **change) -> str:
    """A line as in hellaswag_val.jsonl (rowanz/hellaswag), optionally changed."""
    row = {
        "ind": ind,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    }
    row.update(change)
    return json.dumps(row)


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_local_file_limit_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path / "hellaswag_val.jsonl",
        [official_line(i, label=i % 4) for i in range(5)] + [official_line(9, label="2")],
    )
    items = load_hellaswag(path)
    assert [i.ind for i in items] == ["0", "1", "2", "3", "4", "9"]
    assert [i.label for i in items] == [0, 1, 2, 3, 0, 2]  # the Hub's string labels too
    assert items[0].ctx == "A man is sitting on a roof. he" and len(items[0].endings) == 4
    assert items[0].where == f"{path}: line 1"
    assert len(load_hellaswag(path, limit=2)) == 2
    monkeypatch.setenv("MEDLM_DATA_DIR", str(tmp_path / "data"))
    write(tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl", [official_line(7)])
    assert [i.ind for i in load_hellaswag()] == ["7"]
    with pytest.raises(ConfigError, match="benchmark.limit"):
        load_hellaswag(path, limit=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (official_line(1, endings=["a", "b", "c"]), "line 2: 3 endings; a HellaSwag item has 4"),
        (official_line(1, label=4), r"line 2: label 4 is not an ending's index \(0 to 3\)"),
        (official_line(1, label=""), "line 2: label '' is not an ending's index"),
        (official_line(1, label=True), "line 2: label True is not an ending's index"),
        ('{"ind": 1, "ctx": "A man', "line 2 column 19: malformed JSON"),
        (official_line(1, ctx=""), "line 2: field 'ctx' must be a non-empty string"),
        (official_line(1, endings="abcd"), "line 2: field 'endings' must be a list of 4 strings"),
        (official_line(1, endings=["a", " ", "c", "d"]), "line 2: ending 1 is empty"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
    ],
)
def test_each_bad_line_is_one_error_naming_file_and_line(
    tmp_path: Path, bad: str, message: str
) -> None:
    path = write(tmp_path / "val.jsonl", [official_line(0), bad, official_line(2)])
    with pytest.raises(DataError) as err:
        load_hellaswag(path)
    assert str(err.value).startswith(f"{path}: ")
    assert re.search(message, str(err.value))


def test_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no HellaSwag items"):
        load_hellaswag(write(tmp_path / "val.jsonl", [""]))
