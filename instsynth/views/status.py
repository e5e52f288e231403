"""``instsynth status``: what a run has committed, what is pending or damaged, and how its stages kept up.
"""

from __future__ import annotations

import numpy as np

from instsynth.datasets import DataError
from instsynth.io import storage
from instsynth.output.layout import plan_path
from instsynth.output.ledger import Ledger, covered_ids
from instsynth.output.verify import verify_full
from instsynth.plan.planner import read_plan
from instsynth.views.figures import figure_png


class NotAnOutput(DataError):
    """A path given to a read-only command is missing or is not an InstSynth output dir."""


def check_output_dir(out: str) -> None:
    """One line naming ``out`` when it is missing or holds neither a plan nor commits."""
    if not storage.exists(out):
        raise NotAnOutput(f"{out}: no such output dir")
    names = set(storage.list_names(out))
    if not names & {"plan.parquet", "_commits", "data", "config.yaml"}:
        raise NotAnOutput(f"{out}: not an InstSynth output dir (no plan.parquet, _commits/ or data/)")


def status(out: str, verify: bool = False) -> dict:
    """Committed vs planned items; shards that do not match their markers (sizes, from one LIST per
    folder; ``verify``: every file read once - SHA-256, Parquet footer, row count and every PNG of
    every shard decoded from the same bytes, units in parallel).  Every bad shard is listed."""
    check_output_dir(out)
    planned_ids = None
    if storage.exists(plan_path(out)):
        planned_ids = read_plan(plan_path(out))[0].column("work_id").to_pylist()
    ledger = Ledger.open(out)
    bad, bad_rows = verify_full(out, ledger.markers, decode=True) if verify else (ledger.verify_sizes(), [])
    good = {u: m for u, m in ledger.markers.items() if u not in bad}
    done = covered_ids(good)
    st = {"out": out, "units": len(good), "rows": sum(m["rows"] for m in good.values()),
          "failed": sum(m["failures"] for m in good.values()),
          "planned": None if planned_ids is None else len(planned_ids),
          "pending": None if planned_ids is None else sum(1 for w in planned_ids if w not in done),
          "bad_shards": [p for u in sorted(bad) for p in bad[u]], "bad_rows": bad_rows}
    if verify:
        st["verified"] = True
    return st


def format_status(st: dict) -> str:
    lines = [f"{st['out']}: {st['units']} committed units, {st['rows']} rows, {st['failed']} failed items"]
    if st["planned"] is not None:
        lines.append(f"planned {st['planned']} items: {st['pending']} pending")
    if st["bad_shards"]:
        lines.append(f"{len(st['bad_shards'])} damaged files (their units are re-queued by the next synth run "
                     "or synth --repair):" + "".join(f"\n  {b}" for b in st["bad_shards"]))
    if st.get("verified"):
        lines.append(f"verified every shard's SHA-256 and every PNG: {len(st['bad_rows'])} bad rows" +
                     "".join(f"\n  {b}" for b in st["bad_rows"][:20]))
    return "\n".join(lines)


#: the waits between the Ray executor's stages, as (name, stage it follows, stage it waits for)
QUEUES = (("to generate", "prepare", "generate"), ("to commit", "generate", "commit"))


def stage_queues(units: list[dict], step: float = 0.5) -> dict:
    """Queue depths over time from a run record's units (``_runs/<run>.json``, each with its stages'
    wall-clock ``[start, end]``): at each time, the units whose previous stage has ended and whose next
    has not begun (waiting in Ray Data's queues or in transit), and the units inside each stage.  Times
    are seconds from the first stage start; clocks of different nodes are taken as they are."""
    timed = [u["stages"] for u in units if u.get("stages")]
    if not timed:
        return {"t": [], "queued": {}, "running": {}}
    t0 = min(iv[0] for st in timed for iv in st.values())
    t1 = max(iv[1] for st in timed for iv in st.values())
    t = np.arange(0.0, t1 - t0 + step, step)
    queued = {name: np.zeros(len(t), np.int64) for name, _, _ in QUEUES}
    running = {stage: np.zeros(len(t), np.int64) for stage in sorted({k for st in timed for k in st})}
    for st in timed:
        for stage, (a, b) in st.items():
            running[stage] += (t >= a - t0) & (t < b - t0)
        for name, before, after in QUEUES:
            if before in st and after in st:
                queued[name] += (t >= st[before][1] - t0) & (t < st[after][0] - t0)
    return {"t": t.tolist(), "queued": {k: v.tolist() for k, v in queued.items()},
            "running": {k: v.tolist() for k, v in running.items()}}


def queues_chart(units: list[dict], title: str, window: tuple[float, float] | None = None) -> bytes | None:
    """Queue depths and stage occupancy over a run (PNG, from ``stage_queues``); None without stage
    intervals (the local executor records none).  ``window``: a span (seconds) to shade, e.g. a steady state."""
    q = stage_queues(units, step=0.25)
    if not q["t"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    for k, v in q["queued"].items():
        ax.plot(q["t"], v, label=f"queued {k}", lw=1.4)
    for k, v in q["running"].items():
        ax.plot(q["t"], v, label=f"in {k}", lw=1.0, ls="--")
    if window:
        ax.axvspan(*window, color="grey", alpha=0.12, label="steady state")
    ax.set_xlabel("seconds since the first stage started")
    ax.set_ylabel("units")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    return figure_png(fig)
