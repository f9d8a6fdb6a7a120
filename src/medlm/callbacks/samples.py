"""Answers generated for a fixed set of validation questions at every validation, logged as
artifacts.

The DataModule supplies the prompts (``sample_prompts(n)``, the same questions every epoch), its
tokenizer and, optionally, the reference answers (``sample_references(n)``); this callback's config
(``callbacks.samples``) holds the sampling settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as L

from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, NonFiniteLogits
from medlm.models.generation import generate
from medlm.utils.checks import check_number
from medlm.utils.io import atomic_write
from medlm.utils.tracking import log_artifact

log = logging.getLogger(__name__)

# characters of a prompt or a reference shown; a longer one (by more than a quarter: cutting a few
# lines out helps no one) keeps its start (the question) and its end (where the answer goes on),
# and says how much of its middle was left out
SHOWN_CHARACTERS = 1600


def trim_middle(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    if len(text) <= limit * 5 // 4:
        return text
    head = limit * 5 // 8
    tail = limit - head
    left_out = len(text) - head - tail
    return f"{text[:head]}\n[... {left_out} characters left out ...]\n{text[-tail:]}"


class SampleGenerations(L.Callback):
    def __init__(
        self,
        num_prompts: int = 3,
        max_new_tokens: int = 48,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = 0.95,
        seed: int = 1234,
    ) -> None:
        key = "callbacks.samples"
        check_number(num_prompts, f"{key}.num_prompts", int, 0)
        check_number(max_new_tokens, f"{key}.max_new_tokens", int, 1)
        check_number(temperature, f"{key}.temperature", (int, float), 0)
        if top_k is not None:
            check_number(top_k, f"{key}.top_k", int, 1)
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
        ):
            raise ConfigError(f"{key}.top_p must be a number in (0, 1], got {top_p!r}")
        self.num_prompts, self.seed = num_prompts, seed
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = (
            max_new_tokens,
            temperature,
            top_k,
            top_p,
        )
        self.history: list[tuple[int, list[str]]] = []  # (epoch, answers), for tests and summaries

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or not hasattr(dm, "sample_prompts")
        ):
            return
        prompts = dm.sample_prompts(self.num_prompts)
        if not prompts:
            return
        refs = (
            dm.sample_references(self.num_prompts)
            if hasattr(dm, "sample_references")
            else [None] * len(prompts)
        )
        try:
            answers = self.answer(pl_module, dm.tokenizer, prompts)
        except NonFiniteLogits as err:  # a diverged model (the divergence guard may be off)
            log.warning("samples: none at step %d: %s", trainer.global_step, err)
            return
        self.history.append((trainer.current_epoch, answers))
        path = (
            Path(trainer.default_root_dir)
            / "samples"
            / f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:06d}.md"
        )
        budget = self.prompt_budget(pl_module)
        with atomic_write(path) as f:
            f.write(
                f"# Samples after epoch {trainer.current_epoch}, step {trainer.global_step}\n\n"
            )
            for i, (prompt, answer, ref) in enumerate(zip(prompts, answers, refs)):
                n_tokens = len(dm.tokenizer.encode_prompt(prompt))
                seen = (
                    f"; the model saw its last {budget} of {n_tokens} tokens"
                    if n_tokens > budget
                    else ""
                )
                f.write(
                    f"## {i}\n\n**Prompt** ({len(prompt)} characters{seen})\n\n"
                    f"```\n{trim_middle(prompt)}\n```\n\n**Generated**\n\n```\n{answer}\n```\n\n"
                )
                if ref is not None:
                    f.write(f"**Reference**\n\n```\n{trim_middle(ref)}\n```\n\n")
        log_artifact(trainer.loggers, path, "samples")

    def prompt_budget(self, pl_module: L.LightningModule) -> int:
        """How many of a prompt's last tokens fit the context beside the answer."""
        return pl_module.net.config.block_size - self.max_new_tokens

    def answer(
        self, pl_module: L.LightningModule, tokenizer: Tokenizer, prompts: list[str]
    ) -> list[str]:
        """Generate a continuation for each prompt, its start cut so that prompt and answer fit the
        context."""
        budget = self.prompt_budget(pl_module)
        ids = [tokenizer.encode_prompt(p)[-budget:] for p in prompts]
        out = generate(
            pl_module.net,
            ids,
            self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_sequences=[[t] for t in tokenizer.stop_ids],
            seed=self.seed,
        )
        return [
            tokenizer.decode([t for t in toks if t not in tokenizer.stop_ids]).strip()
            for toks in out
        ]
