"""Per-work-item randomness that never depends on processing order.

Every random choice for a work item comes from ``numpy.random.default_rng([seed, crc32(work_id)])``
(retry ``t`` uses ``[seed, crc32(work_id), t]``).  Independent purposes (prompt, window,
generator noise) take separate child streams spawned from that one seed sequence, so adding a
draw to one purpose never shifts another.
"""

from __future__ import annotations

import zlib

import numpy as np

STREAMS = {"prompt": 0, "window": 1, "generator": 2}


def seed_sequence(seed: int, work_id: str, attempt: int = 0) -> np.random.SeedSequence:
    entropy = [int(seed), zlib.crc32(work_id.encode())]
    if attempt:
        entropy.append(int(attempt))
    return np.random.SeedSequence(entropy)


def item_rng(seed: int, work_id: str, purpose: str, attempt: int = 0) -> np.random.Generator:
    """The generator for one purpose of one work item (and retry ``attempt``)."""
    children = seed_sequence(seed, work_id, attempt).spawn(len(STREAMS))
    return np.random.default_rng(children[STREAMS[purpose]])


def item_seed(seed: int, work_id: str, attempt: int = 0) -> int:
    """A 63-bit integer seed for torch generators, from the item's 'generator' stream."""
    return int(item_rng(seed, work_id, "generator", attempt).integers(0, 2**63 - 1))
