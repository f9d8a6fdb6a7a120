"""medlm-export: a medlm training checkpoint -> a Hugging Face model directory.

    medlm-export logs/llama_medical/runs/<run>/checkpoints/last.ckpt exports/llama_medical
    medlm-export <LoRA classifier>.ckpt exports/classifier [--merged]

A causal LM (GPT-2 or Llama) becomes config.json + model.safetensors that
``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same logits, plus
generation_config.json and the tokenizer's Hugging Face files (GPT-2's vocab.json, merges.txt,
tokenizer_config.json) when the model was trained on GPT-2 tokens. A LoRA sequence-classifier
checkpoint is exported by
``medlm.models.convert_classifier.export_classifier``: a PEFT adapter, or with ``--merged`` the
merged model. A user error prints one ``error: ...`` line and exits 2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from medlm.data.tokenizer import Tokenizer, hf_tokenizer_files
from medlm.errors import ConfigError, MedlmError
from medlm.loading import checkpoint_tokenizer
from medlm.models.checkpoint import network_from_checkpoint, read_checkpoint, write_hf_checkpoint
from medlm.models.classifier import SequenceClassifier
from medlm.models.convert_classifier import export_classifier
from medlm.utils.cli import OneLineErrorParser, user_errors
from medlm.utils.io import atomic_path


def export(
    src: str | Path, out_dir: str | Path, merged: bool = False, force: bool = False
) -> list[Path]:
    """Write the Hugging Face form of checkpoint ``src`` into ``out_dir``; return the files
    written."""
    src, out_dir = Path(src), Path(out_dir)
    ckpt = read_checkpoint(src)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedlmError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise MedlmError(f"{out_dir}: directory is not empty (pass --force to write into it)")
    net = network_from_checkpoint(ckpt, str(src))
    if isinstance(net, SequenceClassifier):
        return list(export_classifier(net, out_dir, merged, str(src)))
    if merged:
        raise ConfigError(
            f"--merged: {src} is a causal-LM checkpoint, not a LoRA classifier; there is "
            "nothing to merge"
        )
    return export_causal_lm(net, src, out_dir, checkpoint_tokenizer(ckpt))


def export_causal_lm(net: nn.Module, src: Path, out_dir: Path, tokenizer: Tokenizer) -> list[Path]:
    """Write ``net`` (read from ``src``) as a HF causal LM with ``tokenizer``'s special ids, and the
    tokenizer's own Hugging Face files when it has them (GPT-2's)."""
    if not hasattr(net, "to_hf"):
        raise MedlmError(
            f"{src}: {type(net).__name__} has no Hugging Face form (GPT2 and Llama have)"
        )
    config, state = net.to_hf()
    # a model smaller than the tokenizer's vocabulary was not trained on it: its ids mean nothing
    # there
    fits = net.config.vocab_size >= tokenizer.vocab_size
    eot = tokenizer.eot_id if fits else None
    bos = eot if tokenizer.bos_id is None or not fits else tokenizer.bos_id
    # HF's Llama defaults (bos 1, eos 2) would be other tokens of this vocabulary: say which they
    # are
    config["bos_token_id"], config["eos_token_id"] = bos, eot
    # read before anything is written, so that a missing tokenizer file leaves no half export
    files = hf_tokenizer_files(tokenizer, net.config.block_size) if fits else {}
    write_hf_checkpoint(out_dir, config, state)
    written = [out_dir / "config.json", out_dir / "model.safetensors"]
    if files:
        files["generation_config.json"] = json.dumps(
            {"bos_token_id": bos, "eos_token_id": eot, "pad_token_id": eot}, indent=2
        ).encode()
    for name, data in files.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(data)
        written.append(out_dir / name)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    p = OneLineErrorParser(prog="medlm-export", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="a medlm training checkpoint (.ckpt)")
    p.add_argument("out_dir", type=Path, help="the Hugging Face directory to write")
    p.add_argument(
        "--merged",
        action="store_true",
        help="LoRA classifier: merge the adapter into the base weights (default: a PEFT adapter)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    args = p.parse_args(argv)
    with user_errors():
        written = export(args.src, args.out_dir, merged=args.merged, force=args.force)
        print(f"wrote {args.out_dir}: {', '.join(sorted(path.name for path in written))}")


if __name__ == "__main__":
    main()
