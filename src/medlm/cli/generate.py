"""medlm-generate: continue prompts with a trained or pretrained model, streaming the tokens.

    medlm-generate logs/llama_medical/runs/<run>/checkpoints/last.ckpt --prompt "The patient was
    diagnosed with"
    medlm-generate /models/gpt2-hf --prompt-file prompts.txt --temperature 0 --max-new-tokens 64
    medlm-generate /models/Meta-Llama-3.1-8B --tokenizer /models/Meta-Llama-3.1-8B/tokenizer.model
    --prompt ...

The model is a medlm ``.ckpt`` (its tokenizer is the one it was trained with), a Hugging Face
directory (GPT-2 or Llama) or Meta's layout (params.json, consolidated.NN.pth). One prompt streams
to stdout as it is generated; several are generated in batches and printed in order, separated
by a line of dashes. A user error prints one ``error: ...`` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medlm.errors import ConfigError, DataError
from medlm.generator import Generator
from medlm.utils.cli import OneLineErrorParser, user_errors

SEPARATOR = "-" * 40


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="medlm-generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", help="a medlm .ckpt, a Hugging Face model directory or a Meta checkpoint directory"
    )
    p.add_argument(
        "--tokenizer",
        help="Llama 3 tokenizer.model, or a tiktoken encoding name (gpt2); "
        "default: the one beside the weights, or the checkpoint's own",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument(
        "--prompt-file",
        type=Path,
        help="a UTF-8 text file, one prompt per line (blank lines skipped)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)"
    )
    p.add_argument("--temperature", type=float, default=0.6, help="0 is greedy (default 0.6)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument(
        "--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9; 1 is off)"
    )
    p.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    p.add_argument(
        "--stop", action="append", default=[], help="end a generation before this text (repeatable)"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every position at every step (no KV cache)",
    )
    p.add_argument(
        "--no-echo", action="store_true", help="print only the generated text, not the prompt"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts generated at once (default 8)"
    )
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="prompt + generation limit (default: the model's context)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)"
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weights for inference (default auto: bfloat16 on a GPU that has it, else float32)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with a static KV cache through torch.compile, whose CUDA graphs are meant "
        "for GPUs (the first batch pays the compilation)",
    )
    return p


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; a missing, unreadable or empty file is a user error that names it."""
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the prompt file ({err.strerror})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts (every line is blank)")
    return prompts


def run(args: argparse.Namespace) -> None:
    prompts = args.prompt if args.prompt is not None else read_prompts(args.prompt_file)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: {args.batch_size} is not a positive integer")
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens: {args.max_new_tokens} is negative")
    if args.compile and args.no_cache:
        raise ConfigError("--compile decodes with a static KV cache; it cannot go with --no-cache")
    generator = Generator.build(
        args.model,
        args.tokenizer,
        args.max_seq_len,
        min(args.batch_size, len(prompts)),
        seed=args.seed,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        compile=args.compile,
    )
    generator.encode_prompts(prompts, args.max_new_tokens)  # every prompt fits, before any output
    settings = dict(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_gen_len=args.max_new_tokens,
        stop=args.stop,
        use_cache=not args.no_cache,
    )
    out = sys.stdout
    if len(prompts) == 1:  # stream it; the prompt goes out once the settings proved valid
        pending = ["" if args.no_echo else prompts[0]]

        def on_text(row: int, piece: str) -> None:
            out.write(pending.pop() + piece if pending else piece)
            out.flush()

        generator.text_completion(prompts, on_text=on_text, **settings)
        out.write((pending.pop() if pending else "") + "\n")
        out.flush()
        return
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        results = generator.text_completion(batch, **settings)
        for i, (prompt, result) in enumerate(zip(batch, results)):
            if start + i:
                out.write(SEPARATOR + "\n")
            out.write(("" if args.no_echo else prompt) + result["generation"] + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with user_errors():
        try:
            run(args)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.exit(130)


if __name__ == "__main__":
    main()
