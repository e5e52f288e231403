"""Category-driven prompts (paper section III.B.2): "A photo of a red car", "A photo of a woman".

A template per class name, else the default template (any dataset's classes get a prompt); ``{name}``
is the class's noun from the label space ("traffic light"), and every other ``{slot}`` is filled with a
word drawn from ``vocab[slot]`` using the work item's own 'prompt' random stream, so prompts do not
depend on processing order.
"""

from __future__ import annotations

import re
import string

import numpy as np

_ARTICLE = re.compile(r"\b([Aa])n? (?=([A-Za-z]+))")
# words whose spelling misleads the vowel rule: "a uniform", "a one-way", "an hour", "an honest"
_CONSONANT_SOUND = ("uni", "use", "one", "eu", "ur")
_VOWEL_SOUND = ("hour", "honest", "honour", "honor", "heir")


def article_for(word: str) -> str:
    """'a' or 'an' by how ``word`` sounds ("an orange car", "a uniformed rider", "an hour")."""
    w = word.lower()
    if w.startswith(_VOWEL_SOUND):
        return "an"
    if w.startswith(_CONSONANT_SOUND):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


def with_articles(text: str) -> str:
    """Fix every indefinite article in ``text`` to its following word ("a orange" -> "an orange")."""
    def fix(m: re.Match) -> str:
        art = article_for(m.group(2))
        return (art.capitalize() if m.group(1) == "A" else art) + " "
    return _ARTICLE.sub(fix, text)


class PromptError(ValueError):
    pass


def slots(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


NAME_SLOT = "name"


def make_prompt(class_name: str, templates: dict[str, str], vocab: dict[str, list[str]],
                rng: np.random.Generator, noun: str | None = None,
                default: str | None = None) -> tuple[str, dict[str, str]]:
    """(prompt, {slot: word}) for ``class_name``; raises PromptError naming a missing template/slot.
    Articles follow the drawn word in every template: "A photo of an orange car"."""
    template = templates.get(class_name, default)
    if template is None:
        raise PromptError(f"prompts.templates: no template for class {class_name!r}")
    words = {}
    for s in slots(template):
        if s == NAME_SLOT:
            words[s] = noun or class_name
            continue
        if not vocab.get(s):
            raise PromptError(f"prompts.vocab: template for {class_name!r} uses {{{s}}} but vocab.{s} is empty or missing")
        words[s] = vocab[s][int(rng.integers(len(vocab[s])))]
    return with_articles(template.format(**words)), words


def prompt_object(prompt: str) -> str:
    """The object phrase of a prompt ("A photo of a red car" -> "a red car"), e.g. for GLIGEN phrases."""
    low = prompt.strip()
    for lead in ("A photo of ", "a photo of "):  # the article stays: "an orange car"
        if low.startswith(lead):
            return low[len(lead):]
    return low
