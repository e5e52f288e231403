"""Executors: the same stages (``stages.prepare -> generate -> compose`` + ``output.commits.commit_unit``) run
by a plain loop (``local``) or by Ray Data (``ray``), side by side (datatrove's ``executor/local.py``
beside ``executor/ray.py``).  The driver (``synth``) decides what to run; an executor only runs it.

Both call ``on_commit(marker, placement)`` once per committed unit, in the driver, with the whole
marker the worker wrote: the driver's bookkeeping (``output.ledger.Ledger``) learns every commit without
reading anything back.
"""

from __future__ import annotations

from instsynth.synth.executors.local import run_local
from instsynth.synth.executors.ray import run_ray


def run_units(units, root: str, out: str, cfg, log, writer: str | None, on_commit) -> dict:
    """Run ``units`` with the configured executor; returns the executor's record (hosts, nodes)."""
    if cfg.run.executor == "local":
        return run_local(units, root, out, cfg, log, writer, on_commit)
    return run_ray(units, root, out, cfg, log, writer, on_commit)
