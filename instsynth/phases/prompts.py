"""Category-driven prompts (paper section III.B.2): "A photo of a red car", "A photo of a woman".

A template per class; every ``{slot}`` in it is filled with a word drawn from ``vocab[slot]``
using the work item's own 'prompt' random stream, so prompts do not depend on processing order.
"""

from __future__ import annotations

import string

import numpy as np


class PromptError(ValueError):
    pass


def slots(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def make_prompt(class_name: str, templates: dict[str, str], vocab: dict[str, list[str]],
                rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """(prompt, {slot: word}) for ``class_name``; raises PromptError naming a missing template/slot."""
    if class_name not in templates:
        raise PromptError(f"prompts.templates: no template for class {class_name!r}")
    template = templates[class_name]
    words = {}
    for s in slots(template):
        if not vocab.get(s):
            raise PromptError(f"prompts.vocab: template for {class_name!r} uses {{{s}}} but vocab.{s} is empty or missing")
        words[s] = vocab[s][int(rng.integers(len(vocab[s])))]
    return template.format(**words), words


def prompt_object(prompt: str) -> str:
    """The object phrase of a prompt ("A photo of a red car" -> "a red car"), e.g. for GLIGEN phrases."""
    low = prompt.strip()
    for lead in ("A photo of ", "a photo of "):
        if low.startswith(lead):
            return low[len(lead):]
    return low
