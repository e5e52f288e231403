"""Executors: the same stages (``stages.prepare -> generate -> compose`` + ``shards.commit_unit``) run
by a plain loop (``local``) or by Ray Data (``ray``), side by side (datatrove's ``executor/local.py``
beside ``executor/ray.py``).  The driver (``synth``) decides what to run; an executor only runs it.

Both call ``on_commit(marker, placement)`` once per committed unit, in the driver, with the whole
marker the worker wrote: the driver's bookkeeping (``shards.Ledger``) learns every commit without
reading anything back.
"""

from __future__ import annotations

import time


def setup_generator(gen_cfg, quality_cfg):
    """(generator, batch size, CLIP scorer or None): what every place that runs Phase 2 builds once
    (the local loop, each Ray generator actor, the dry run's timing)."""
    from instsynth.generators import build_generator, resolve_batch_size
    from instsynth.quality.filter import build_scorer

    gen = build_generator(gen_cfg)
    return gen, resolve_batch_size(gen, gen_cfg.batch_size), build_scorer(quality_cfg)


class Progress:
    """'unit n/N committed' lines with a running rows/s (a running sum: O(1) per unit)."""

    def __init__(self, total: int, log, enabled: bool):
        self.total, self.log, self.enabled = total, log, enabled
        self.n = self.rows = 0
        self.t0 = time.time()

    def __call__(self, marker: dict) -> None:
        self.n += 1
        self.rows += marker["rows"]
        if self.enabled:
            rate = self.rows / max(time.time() - self.t0, 1e-9)
            self.log(f"  unit {self.n}/{self.total} committed ({marker['rows']} rows, {marker['failures']} failures, "
                     f"{rate:.2f} rows/s)")


def run_units(units, root: str, out: str, cfg, log, writer: str | None, on_commit) -> dict:
    """Run ``units`` with the configured executor; returns the executor's record (hosts, nodes)."""
    if cfg.run.executor == "local":
        from instsynth.executors.local import run_local

        return run_local(units, root, out, cfg, log, writer, on_commit)
    from instsynth.executors.ray import run_ray

    return run_ray(units, root, out, cfg, log, writer, on_commit)
