"""``medlm-prepare``: turn published datasets and Hub files into what training reads.

One subcommand per job. A subcommand is a pair of functions: ``add_<name>(subparsers)`` declares
its arguments and sets ``func`` to ``run_<name>(args) -> int``; list it in ``SUBCOMMANDS``.
Every user error is a ``MedlmError``: ``main`` prints ``error: <message>`` on one line and returns 2
(``medlm.utils.cli.user_errors``, shared by every entry point).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from medlm.utils.cli import USER_ERROR_EXIT, user_errors


def add_medquad(subparsers: argparse._SubParsersAction) -> None:
    from medlm.data.medquad import DEFAULT_MAX_TOKENS, FORMATS

    p = subparsers.add_parser(
        "medquad",
        help="MedQuAD XML/CSV -> Alpaca train/val/test JSONL",
        description="Convert MedQuAD (a root of source folders of XML files, one XML file, or the "
        "question,answer,source,focus_area CSV export) into Alpaca records "
        "{instruction, input, output} in OUT_DIR/{train,val,test}.jsonl.",
    )
    p.add_argument(
        "src", metavar="SRC", help="MedQuAD root folder, an XML file, or a CSV file/folder"
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="where train.jsonl, val.jsonl, test.jsonl go")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default="auto",
        help="input format (default: from the suffix / the files in SRC)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help="drop records whose Alpaca prompt + answer exceed N GPT-2 tokens; 0 keeps all "
        "(default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    p.add_argument(
        "--val-frac", type=float, default=0.05, metavar="F", help="(default: %(default)s)"
    )
    p.add_argument(
        "--test-frac", type=float, default=0.05, metavar="F", help="(default: %(default)s)"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip malformed files/rows and count them, instead of stopping at the first",
    )
    p.set_defaults(func=run_medquad)


def run_medquad(args: argparse.Namespace) -> int:
    from medlm.data.medquad import convert, format_summary

    summary = convert(
        args.src,
        args.out_dir,
        fmt=args.fmt,
        max_tokens=args.max_tokens or None,
        seed=args.seed,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        skip_bad=args.skip_bad,
    )
    for problem in summary.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(format_summary(summary))
    print(f"wrote {', '.join(str(p) for p in summary.outputs.values())}")
    return 0


def add_shards(subparsers: argparse._SubParsersAction) -> None:
    from medlm.data.shard_writer import DEFAULT_SHARD_TOKENS

    p = subparsers.add_parser(
        "shards",
        help="documents (Hub dataset, JSONL/parquet/txt, PubMedQA, MedQuAD) -> token shards",
        description="Tokenise documents into token shards for pre-training (medlm.data.shards): "
        "each document is end-of-text + its tokens; the first shard (or --val-tokens) is the "
        "validation split. A SOURCE is a Hub dataset id (HuggingFaceFW/fineweb-edu --hub-config "
        "sample-10BT, streamed), a file, folder or glob of .jsonl/.parquet/.txt, pubmedqa:PATH or "
        "medquad:PATH. Run it again on the same OUT_DIR to continue an interrupted preparation.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="one or more, read in order")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the shards and manifest.json go")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default) or llama3:<tokenizer.model>")
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=DEFAULT_SHARD_TOKENS,
        metavar="N",
        help="tokens per shard (default: %(default)s)",
    )
    p.add_argument(
        "--val-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens of the validation split (default: the first shard)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="tokenising processes (default: the cores)",
    )
    p.add_argument("--text-field", default="text", help="text field of JSONL/parquet/Hub rows")
    p.add_argument("--hub-config", default=None, metavar="NAME", help="Hub config: sample-10BT")
    p.add_argument("--hub-split", default="train", metavar="NAME", help="Hub split (train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_shards)


def run_shards(args: argparse.Namespace) -> int:
    from medlm.data.shard_writer import prepare_shards

    summary = prepare_shards(
        args.sources,
        args.out_dir,
        tokenizer=args.tokenizer,
        shard_tokens=args.shard_tokens,
        val_tokens=args.val_tokens,
        workers=args.workers,
        text_field=args.text_field,
        hub_config=args.hub_config,
        hub_split=args.hub_split,
        progress=not args.no_progress,
    )
    print(summary.format())
    return 0


STAGE_DESCRIPTION = """\
On a machine with internet (a login node), write into DIR what runs on compute nodes
without internet need:
  DIR/data/              datasets in the published formats the DataModules read (MEDLM_DATA_DIR)
  DIR/tiktoken-cache/    tiktoken's cache files (TIKTOKEN_CACHE_DIR)
  DIR/models/<name>/     pretrained weights as safetensors + config.json (model.pretrained)
  DIR/tokenizers/llama3/ Llama 3's tokenizer.model (data.tokenizer=llama3:...)
Hub revisions are pinned to commits and recorded, with every file's size and sha256, in
DIR/manifest.json. What is staged already is skipped. Prints the lines that make a run use DIR.

datasets:
"""


def add_stage(subparsers: argparse._SubParsersAction) -> None:
    from medlm.staging.data_files import DATASETS, FINEWEB_CONFIG, FINEWEB_ROWS

    names = "\n".join(f"  {s.name:<20} {s.about}" for s in DATASETS.values())
    p = subparsers.add_parser(
        "stage",
        help="fetch datasets, tokenizer files and pretrained weights into DIR for offline nodes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=STAGE_DESCRIPTION + names,
    )
    p.add_argument(
        "out_dir", metavar="DIR", help="the staging directory (on the shared filesystem)"
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=[],
        metavar="NAME",
        help="datasets to stage (listed above), each optionally NAME@<hub revision>",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=[],
        metavar="ID",
        help="Hub model ids (gpt2, meta-llama/Llama-3.2-1B), optionally ID@<revision>; "
        "staged to DIR/models/<last part of the id>",
    )
    p.add_argument(
        "--tokenizers",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="gpt2 (or another tiktoken encoding) and/or llama3:<path to tokenizer.model>",
    )
    p.add_argument(
        "--fineweb-rows",
        type=int,
        default=FINEWEB_ROWS,
        metavar="N",
        help="documents of a fineweb/fineweb_edu slice (default: %(default)s)",
    )
    p.add_argument(
        "--fineweb-config",
        default=FINEWEB_CONFIG,
        metavar="NAME",
        help="the FineWeb config streamed (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="stage again what is staged already")
    p.set_defaults(func=run_stage)


def run_stage(args: argparse.Namespace) -> int:
    from medlm.staging.stage import stage

    result = stage(
        args.out_dir,
        datasets=args.datasets,
        models=args.models,
        tokenizers=args.tokenizers,
        fineweb_rows=args.fineweb_rows,
        fineweb_config=args.fineweb_config,
        force=args.force,
    )
    print(result.format())
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_medquad,
    add_shards,
    add_stage,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlm-prepare",
        description="Prepare datasets and files for medlm runs, including offline nodes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a usage error: argparse prints it, SystemExit(2)
        if args.command is None:
            parser.print_help(sys.stderr)
            return USER_ERROR_EXIT
        with user_errors():  # a MedlmError: "error: <message>" on stderr, SystemExit(2)
            return args.func(args)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
