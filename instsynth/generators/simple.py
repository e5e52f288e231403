"""CPU generators: ``identity`` (plumbing) and ``recolor`` (an honest stand-in that follows the prompt)."""

from __future__ import annotations


class Identity:
    """Returns the crop unchanged: exercises every stage and the commit path without a model."""

    name = "identity"
    model_id = ""
    model_revision = ""

    def __call__(self, batch: list[dict]) -> list[dict]:
        return [{"image": item["crop"].copy(), "stats": {}} for item in batch]
