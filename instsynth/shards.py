"""IS-Cityscapes output: row schema, the output-dir layout, unit commits and readers.

Layout of an output dir (fixed, so every tool can rely on it)::

    plan.parquet  plan.failures.parquet  config.yaml  README.md (dataset card)
    data/part-<unit>.parquet      committed rows of one unit
    _failures/<unit>.parquet      run-time failures of one unit
    _commits/<unit>               the commit marker (JSON: work ids done and failed)
    _runs/<run>.json              per-run record (hosts, stage placement, throughput)
    stats/                        tables and charts

Why a marker: object stores have no atomic rename, so a unit is committed by writing its data
first and the marker last; readers only read units with a marker, and a re-run redoes only
units without one.  Rows hold no run id, host or time, so a resumed run's rows are byte-identical
to an uninterrupted run's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from instsynth import storage

ROW_SCHEMA = pa.schema([
    ("work_id", pa.string()),
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("city", pa.string()),
    ("instance_id", pa.int32()),
    ("class_name", pa.string()),
    ("image", pa.binary()),
    ("instance_ids", pa.binary()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("bbox", pa.list_(pa.int32(), 4)),
    ("crop_box", pa.list_(pa.int32(), 4)),
    ("square_box", pa.list_(pa.int32(), 4)),
    ("lam", pa.float64()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("generator", pa.string()),
    ("model_id", pa.string()),
    ("model_revision", pa.string()),
    ("seed", pa.int64()),
    ("gen_seed", pa.int64()),
    ("variant", pa.int32()),
    ("source_image", pa.string()),
    ("gen_stats", pa.string()),
])

ROW_DOCS = {
    "work_id": "deterministic id of the work item: {image_id}_{instance_id}_v{variant}",
    "image_id": "Cityscapes stem of the source image ({city}_{seq:06d}_{frame:06d})",
    "split": "source split", "city": "source city",
    "instance_id": "instanceIds value of the synthesized instance (classId*1000+k)",
    "class_name": "its class",
    "image": "the focused crop, PNG bytes (RGB)",
    "instance_ids": "instanceIds map of the crop, 16-bit PNG bytes; every instance in view keeps its id",
    "width": "crop width in pixels", "height": "crop height in pixels",
    "bbox": "box of the synthesized instance in the crop [x0, y0, x1, y1), exclusive ends",
    "crop_box": "the focused window in the source image [x0, y0, x1, y1)",
    "square_box": "Phase 1's square crop in the source image (may extend outside for huge instances)",
    "lam": "lambda drawn for Eq. 2 (S_N = lambda * A_ins)",
    "prompt": "the category-driven prompt", "negative_prompt": "negative prompt ('' if none)",
    "generator": "generator name (original for unmodified training images)",
    "model_id": "model path or hub id", "model_revision": "model revision ('' if unpinned)",
    "seed": "the run seed", "gen_seed": "the per-item generator seed derived from (seed, work_id)",
    "variant": "variant index of this instance", "source_image": "source image path relative to the root",
    "gen_stats": "JSON: the generator's own per-sample numbers",
}

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


def commit_unit(out: str, name: str, rows: list[dict], failures: list[dict]) -> dict:
    """Write the unit's rows, then its failures, then the marker (the commit point)."""
    if rows:
        storage.write_parquet(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), part_path(out, name))
    if failures:
        storage.write_parquet(pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA), failures_path(out, name))
    marker = {"unit": name, "rows": len(rows), "failures": len(failures),
              "work_ids": [r["work_id"] for r in rows], "failed": [f["work_id"] for f in failures]}
    storage.write_bytes(marker_path(out, name), json.dumps(marker).encode())
    return marker


def committed_units(out: str) -> dict[str, dict]:
    """{unit: marker} for every committed unit of ``out``."""
    base = storage.join(out, "_commits")
    return {n: json.loads(storage.read_bytes(storage.join(base, n))) for n in storage.list_names(base)
            if not n.startswith(".") and ".tmp-" not in n}


def committed_work_ids(out: str) -> set[str]:
    done = set()
    for m in committed_units(out).values():
        done.update(m["work_ids"])
        done.update(m["failed"])
    return done


def committed_parts(out: str) -> list[str]:
    """Paths of the data files of committed units (never a half-written or uncommitted file)."""
    return [part_path(out, u) for u, m in sorted(committed_units(out).items()) if m["rows"]]


def iter_tables(out: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream committed rows one unit at a time (memory stays flat as the dataset grows)."""
    for p in committed_parts(out):
        t = storage.read_parquet(p)
        yield t.select(columns) if columns else t


def iter_rows(out: str, columns: list[str] | None = None) -> Iterator[dict]:
    for t in iter_tables(out, columns):
        yield from t.to_pylist()


def read_failures(out: str) -> pa.Table:
    tables = [storage.read_parquet(failures_path(out, u))
              for u, m in sorted(committed_units(out).items()) if m["failures"]]
    return pa.concat_tables(tables) if tables else FAILURE_SCHEMA.empty_table()
