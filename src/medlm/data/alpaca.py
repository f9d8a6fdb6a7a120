"""The Alpaca prompt template, the one copy every instruction-data path uses (the MedQuAD
conversion,
the instruction DataModule and its configs).

A record with a non-empty input is asked with ``prompt_input``, one without with
``prompt_no_input``;
the model's answer follows the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medlm.errors import ConfigError
from medlm.utils.checks import template_fields

# The Stanford Alpaca prompts (tatsu-lab/stanford_alpaca), in alpaca-lora's two-variant shape.
ALPACA_TEMPLATE: Mapping[str, str] = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    ),
}

# the fields each prompt must use
TEMPLATE_KEYS = {"prompt_input": ("instruction", "input"), "prompt_no_input": ("instruction",)}


def format_prompt(
    instruction: str, input: str = "", template: Mapping[str, str] = ALPACA_TEMPLATE
) -> str:
    """The prompt text a model sees before the response, Alpaca style."""
    key = "prompt_input" if input else "prompt_no_input"
    return template[key].format(instruction=instruction, input=input)


def check_template(template: Any) -> dict[str, str]:
    """The two Alpaca prompts, checked: each a string that formats with instruction (and input)."""
    if not isinstance(template, Mapping) or set(template) != set(TEMPLATE_KEYS):
        raise ConfigError(
            f"data.template must map exactly {', '.join(TEMPLATE_KEYS)} to prompts, got "
            f"{template!r:.200}"
        )
    for key, needed in TEMPLATE_KEYS.items():
        text = template[key]
        if not isinstance(text, str) or not text:
            raise ConfigError(f"data.template.{key} must be a non-empty string, got {text!r}")
        names = template_fields(text, f"data.template.{key}")
        unknown = sorted(names - {"instruction", "input"})
        missing = [n for n in needed if n not in names]
        if unknown or missing:
            raise ConfigError(
                f"data.template.{key} must use {{{'}, {'.join(needed)}}} and nothing else; "
                f"unknown {unknown}, missing {missing} in {text!r}"
            )
    return {k: str(template[k]) for k in TEMPLATE_KEYS}
