"""Where everything lives in an output dir: the paths every other module asks for (never built by hand).

Layout of an output dir (fixed, so every tool can rely on it)::

    plan.parquet  plan.failures.parquet  config.yaml  README.md (dataset card)
    dataset.json                  the source dataset (spec) and its label space (sources.py)
    plan.labels.parquet           COCO sources: each planned image's annotations, read by prepare tasks
    data/part-<unit>.parquet      committed rows of one unit
    _failures/<unit>.parquet      run-time failures of one unit
    _commits/<unit>               the commit marker (JSON: work ids done and failed; each file's
                                  rows, bytes and SHA-256)
    _claims/<work_id>             who committed a work id (created atomically before the data)
    _lease.json                   the writer lease while a run writes (lease.py)
    _ledger/<run>-<k>.parquet     copies of committed markers, written by the writer in batches (an
                                  index: a resume GETs one file instead of one marker per unit)
    _runs/<run>.json              per-run record (hosts, stage placement, throughput)
    stats/                        tables and charts

Why a marker: object stores have no atomic rename, so a unit is committed by writing its data
first and the marker last; readers only read units with a marker, and a re-run redoes only
units without one.  Rows hold no run id, host or time, so a resumed run's rows are byte-identical
to an uninterrupted run's.
"""

from __future__ import annotations

import pyarrow as pa

from instsynth.io import storage

CLAIMS = "_claims"


LEDGER = "_ledger"


#: A writer copies its markers into a ledger file every this many commits (and at the end of a run).
LEDGER_BATCH = 128


#: More ledger files than this at the end of a run, and they are compacted into one.
LEDGER_MAX_FILES = 16


FAILURE_SCHEMA = pa.schema([("work_id", pa.string()), ("image_id", pa.string()), ("stage", pa.string()),
                            ("reason", pa.string()), ("details", pa.string())])


def plan_path(out: str) -> str:
    return storage.join(out, "plan.parquet")


def part_path(out: str, unit: str) -> str:
    return storage.join(out, "data", f"part-{unit}.parquet")


def failures_path(out: str, unit: str) -> str:
    return storage.join(out, "_failures", f"{unit}.parquet")


def marker_path(out: str, unit: str) -> str:
    return storage.join(out, "_commits", unit)


def unit_name(first_index: int) -> str:
    """Units are named by the plan index of their first row, so names never collide across resumes."""
    return f"{first_index:08d}"


def claim_path(out: str, work_id: str) -> str:
    return storage.join(out, CLAIMS, work_id)


def is_marker_name(n: str) -> bool:
    return not n.startswith(".") and ".tmp-" not in n
