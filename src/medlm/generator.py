"""Text in, text out, from any medlm causal LM: the ``Generator`` API in the shape of Meta's llama3
reference code, with text streamed as it is generated and stop strings.

    generator = Generator.build("Meta-Llama-3.1-8B/", "Meta-Llama-3.1-8B/tokenizer.model",
                                max_seq_len=512, max_batch_size=4)
    generator.text_completion(["The patient was diagnosed with"], max_gen_len=50, temperature=0.7,
    top_p=0.9)
    # -> [{"generation": " ..."}]

A source is a medlm training checkpoint, a Hugging Face directory or a Meta directory, and its
tokenizer is found beside it (:mod:`medlm.loading`). Decoding, sampling and the KV cache are
:func:`medlm.models.generation.generate`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError
from medlm.loading import load_model
from medlm.models.generation import generate

INFERENCE_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------
# Streaming text with stop strings


class _RowText:
    """One row's text as its tokens arrive: ended by a stop id or a stop string (neither is part of
    the text), streamed through ``on_text`` without ever taking back what was sent: the tail that
    could still begin a stop string, or be half of a UTF-8 character (U+FFFD), waits."""

    def __init__(
        self, tokenizer: Tokenizer, stops: Sequence[str], on_text: Callable[[str], None] | None
    ) -> None:
        self.tokenizer, self.stops, self.on_text = tokenizer, stops, on_text
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.done = False

    def add(self, token: int) -> None:
        if self.done:
            return
        if token in self.tokenizer.stop_ids:
            self.finish()
            return
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        cuts = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self.finish()
        else:
            self._send(self._safe_end())

    def finish(self) -> None:
        self.done = True
        self._send(len(self.text))

    def _safe_end(self) -> int:
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        for stop in self.stops:  # the longest tail that begins a stop string
            for n in range(min(len(stop) - 1, end - self.sent), 0, -1):
                if self.text.endswith(stop[:n], 0, end):
                    end -= n
                    break
        return end

    def _send(self, end: int) -> None:
        if self.on_text is not None and end > self.sent:
            self.on_text(self.text[self.sent : end])
        self.sent = max(self.sent, end)


class _AllRowsDone(Exception):
    """Raised from ``on_token`` to end a batch whose rows all met a stop string."""


# ----------------------------------------------------------------------------------------------
# Generator


class Generator:
    """A model and its tokenizer, with Meta's ``text_completion`` on top of medlm's ``generate``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        max_seq_len: int,
        max_batch_size: int,
        seed: int = 1,
        compile: bool = False,
    ) -> None:
        context = model.config.block_size
        for key, value in (("max_seq_len", max_seq_len), ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: {value!r} is not a positive integer")
        if max_seq_len > context:
            raise ConfigError(
                f"max_seq_len: {max_seq_len} exceeds the model's context of {context} tokens"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self._rng = torch.Generator().manual_seed(seed)  # one seed per call, drawn from here
        # decoding steps through torch.compile, on a static cache of max_seq_len slots: one
        # compiled step serves every call of the same batch size
        self.compile = compile

    @classmethod
    def build(
        cls,
        ckpt_dir: str | Path,
        tokenizer_path: str | Path | None,
        max_seq_len: int | None,
        max_batch_size: int,
        seed: int = 1,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        compile: bool = False,
    ) -> Generator:
        """Load ``ckpt_dir`` (a Meta or Hugging Face directory, or a medlm ``.ckpt``) and its
        tokenizer
        (``tokenizer_path``; None: the one beside the weights, or the checkpoint's own).

        ``max_seq_len`` bounds prompt plus generation (None: the model's context); ``seed`` makes
        the sequence of sampled completions reproducible. The model goes to ``device`` (default:
        CUDA
        when available) in ``dtype`` (default: bfloat16 on a GPU that has it, else float32;
        bfloat16 on a GPU without it is refused). ``compile``: see ``__init__``.
        """
        try:
            device = torch.device(device) if device is not None else default_device()
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"device: {device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {device} was asked for, but torch sees no CUDA GPU here")
        loaded = load_model(ckpt_dir, tokenizer_path, causal_lm=True)
        model, tokenizer = loaded.net, loaded.tokenizer
        if isinstance(dtype, str):
            if dtype not in INFERENCE_DTYPES:
                raise ConfigError(f"dtype: {dtype!r} is not one of {', '.join(INFERENCE_DTYPES)}")
            dtype = INFERENCE_DTYPES[dtype]
        bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
        if dtype is None:
            dtype = torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32
        elif dtype == torch.bfloat16 and not bf16:
            raise ConfigError(f"dtype: {device} has no bfloat16 support; use float16 or float32")
        model.to(device=device, dtype=dtype)
        return cls(
            model,
            tokenizer,
            model.config.block_size if max_seq_len is None else max_seq_len,
            max_batch_size,
            seed,
            compile=compile,
        )

    def text_completion(
        self,
        prompts: Sequence[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: int | None = None,
        echo: bool = False,
        *,
        top_k: int | None = None,
        stop: Sequence[str] = (),
        use_cache: bool = True,
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[dict[str, str]]:
        """Continue each prompt; ``[{"generation": text}]`` in prompt order, as Meta's reference.

        ``temperature`` 0 is greedy; ``top_p`` (and ``top_k``) filter what is sampled.
        ``max_gen_len`` None fills the rest of ``max_seq_len`` after the longest prompt. A row ends
        at
        the tokenizer's stop tokens or just before the first of the ``stop`` strings; neither is in
        its text. ``echo`` puts the prompt (as its tokens decode) before the generation.
        ``on_text(row, piece)`` receives each row's text as it is generated, for streaming.
        """
        prompts = list(prompts)
        self._check_settings(prompts, temperature, top_p, top_k, stop)
        ids, max_gen_len = self.encode_prompts(prompts, max_gen_len)
        rows = [
            _RowText(
                self.tokenizer,
                [s for s in stop if s],
                None if on_text is None else (lambda piece, b=b: on_text(b, piece)),
            )
            for b in range(len(ids))
        ]

        def on_token(row: int, token: int) -> None:
            rows[row].add(token)
            if all(r.done for r in rows):
                raise _AllRowsDone

        seed = int(torch.randint(0, 2**62, (1,), generator=self._rng))
        try:
            generate(
                self.model,
                ids,
                max_gen_len,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                stop_sequences=[[t] for t in self.tokenizer.stop_ids],
                seed=seed,
                use_cache=use_cache,
                on_token=on_token,
                compile=self.compile and use_cache,
                cache_len=self.max_seq_len if self.compile and use_cache else None,
            )
        except _AllRowsDone:
            pass
        for row in rows:
            row.finish()  # a row cut off by max_gen_len: send what it held back
        prefix = [self.tokenizer.decode(p) if echo else "" for p in ids]
        return [{"generation": pre + row.text} for pre, row in zip(prefix, rows)]

    def encode_prompts(
        self, prompts: Sequence[str], max_gen_len: int | None
    ) -> tuple[list[list[int]], int]:
        """The prompts' tokens and the number of tokens to generate (None: what max_seq_len leaves
        after
        the longest prompt); a prompt that does not fit with them is a ConfigError that names it.
        Checks any number of prompts, e.g. all the batches of a run before the first one starts."""
        if not prompts:
            raise ConfigError("prompts: none given")
        if not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompts: every prompt must be a string")
        ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        longest = max(range(len(ids)), key=lambda i: len(ids[i]))
        n = len(ids[longest])
        if max_gen_len is None:
            max_gen_len = self.max_seq_len - n
            if max_gen_len < 1:
                raise ConfigError(
                    f"prompt {longest} has {n} tokens, which leaves no room to generate within "
                    f"max_seq_len {self.max_seq_len}"
                )
        if isinstance(max_gen_len, bool) or not isinstance(max_gen_len, int) or max_gen_len < 0:
            raise ConfigError(f"max_gen_len: {max_gen_len!r} is not a non-negative integer")
        if n + max_gen_len > self.max_seq_len:
            raise ConfigError(
                f"prompt {longest} has {n} tokens; with max_gen_len {max_gen_len} that is "
                f"{n + max_gen_len} > max_seq_len {self.max_seq_len}"
            )
        return ids, max_gen_len

    def _check_settings(
        self,
        prompts: list[str],
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        stop: Sequence[str],
    ) -> None:
        if len(prompts) > self.max_batch_size:
            raise ConfigError(f"{len(prompts)} prompts > max_batch_size {self.max_batch_size}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or temperature < 0
        ):
            raise ConfigError(f"temperature: {temperature!r} is not a number >= 0 (0 is greedy)")
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
        ):
            raise ConfigError(f"top_p: {top_p!r} is not in (0, 1]")
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ConfigError(f"top_k: {top_k!r} is not a positive integer")
        if isinstance(stop, str) or not all(isinstance(s, str) for s in stop):
            raise ConfigError("stop: expected a list of strings")
