"""Seed statistics of a paired experiment: is a gain larger than what another seed would give?

Both arms of seed k share init, sample order and per-row crops (``train.seed + k``), so the per-seed
difference augmented - baseline cancels what the seed does to both; its mean gets a Student-t
interval over the K seeds (the paired t-test's).  Plain functions over lists of numbers, so they are
tested on fixed numbers.
"""

from __future__ import annotations

import math


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with K-1 in the denominator; None for one value)."""
    n = len(values)
    if not n:
        raise ValueError("no values")
    m = sum(values) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def paired_interval(base: list[float], aug: list[float], level: float = 0.95) -> dict:
    """Mean of the per-seed differences ``aug - base`` with its two-sided ``level`` t-interval
    (None bounds with one seed), the differences themselves and a verdict in words."""
    if len(base) != len(aug) or not base:
        raise ValueError(f"paired lists of equal, non-zero length needed (got {len(base)} and {len(aug)})")
    diffs = [a - b for b, a in zip(base, aug)]
    m, sd = mean_std(diffs)
    n = len(diffs)
    lo = hi = None
    if sd is not None:
        from scipy.stats import t

        half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        lo, hi = m - half, m + half
    return {"n": n, "diffs": diffs, "mean": m, "std": sd, "lo": lo, "hi": hi, "level": level,
            "verdict": verdict(m, lo, hi, n, level)}


def verdict(mean: float, lo: float | None, hi: float | None, n: int, level: float = 0.95) -> str:
    pct = f"{100 * level:.0f}%"
    if lo is None:
        return "one seed: no interval, so seed noise cannot be told apart from a gain (run --seeds 3 or more)"
    if lo > 0:
        return f"the gain exceeds seed noise: the {pct} interval over {n} seeds lies above 0"
    if hi < 0:
        return f"augmentation hurts beyond seed noise: the {pct} interval over {n} seeds lies below 0"
    return f"no difference beyond seed noise: the {pct} interval over {n} seeds contains 0"
