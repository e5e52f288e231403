"""The per-sample scorer the generator stage holds (region CLIP needs a model loaded once per actor)."""

from __future__ import annotations

from instsynth.quality.metrics import ClipScorer


def build_scorer(q):
    """A ClipScorer when ``quality.clip_model`` names one, else None (the other numbers need no model)."""
    if q is None or not q.per_sample or not q.clip_model:
        return None

    return ClipScorer(q.clip_model)
