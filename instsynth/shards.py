"""IS-Cityscapes output: row schema, the output-dir layout, unit commits and readers.

Layout of an output dir (fixed, so every tool can rely on it)::

    plan.parquet  plan.failures.parquet  config.yaml  README.md (dataset card)
    data/part-<unit>.parquet      committed rows of one unit
    _failures/<unit>.parquet      run-time failures of one unit
    _commits/<unit>               the commit marker (JSON: work ids done and failed; each file's
                                  rows, bytes and SHA-256)
    _claims/<work_id>             who committed a work id (created atomically before the data)
    _lease.json                   the writer lease while a run writes (lease.py)
    _runs/<run>.json              per-run record (hosts, stage placement, throughput)
    stats/                        tables and charts

Why a marker: object stores have no atomic rename, so a unit is committed by writing its data
first and the marker last; readers only read units with a marker, and a re-run redoes only
units without one.  Rows hold no run id, host or time, so a resumed run's rows are byte-identical
to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

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

CLAIMS = "_claims"

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


def claim(out: str, work_id: str, writer: str, unit: str) -> bool:
    """Claim ``work_id`` for ``writer`` (atomic create-if-absent); True when it is this writer's."""
    if storage.create_exclusive(claim_path(out, work_id), json.dumps({"writer": writer, "unit": unit}).encode()):
        return True
    try:
        held = json.loads(storage.read_bytes(claim_path(out, work_id)))
    except (storage.StorageError, ValueError):
        return False
    return held.get("writer") == writer  # a retried commit of this writer's own unit


def _file_entry(name: str, data: bytes, rows: int) -> dict:
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def commit_unit(out: str, name: str, rows: list[dict], failures: list[dict], writer: str | None = None) -> dict:
    """Claim the unit's work ids, write its rows, then its failures, then the marker (the commit point).

    With ``writer``, each work id is first claimed (``_claims/<work_id>``, create-if-absent); ids another
    writer holds are left out, so two writers can never commit one item twice.  A unit that lost
    some ids is committed under ``<name>-<writer>`` (its file name cannot collide with the holder's).
    The marker records each file's row count, size and SHA-256, which ``verify`` checks."""
    if writer is not None:
        ids = [r["work_id"] for r in rows] + [f["work_id"] for f in failures]
        mine = {w for w in ids if claim(out, w, writer, name)}
        if len(mine) < len(ids):
            rows = [r for r in rows if r["work_id"] in mine]
            failures = [f for f in failures if f["work_id"] in mine]
            name = f"{name}-{writer}"
            if not rows and not failures:
                return {"unit": name, "rows": 0, "failures": 0, "work_ids": [], "failed": [], "lost": len(ids)}
    marker = {"unit": name, "rows": len(rows), "failures": len(failures),
              "work_ids": [r["work_id"] for r in rows], "failed": [f["work_id"] for f in failures]}
    if rows:
        data = _parquet_bytes(rows, ROW_SCHEMA)
        storage.write_bytes(part_path(out, name), data)
        marker["data"] = _file_entry(f"part-{name}.parquet", data, len(rows))
    if failures:
        data = _parquet_bytes(failures, FAILURE_SCHEMA)
        storage.write_bytes(failures_path(out, name), data)
        marker["failures_file"] = _file_entry(f"{name}.parquet", data, len(failures))
    storage.write_bytes(marker_path(out, name), json.dumps(marker).encode())
    return marker


def committed_units(out: str) -> dict[str, dict]:
    """{unit: marker} for every committed unit of ``out``."""
    base = storage.join(out, "_commits")
    return {n: json.loads(storage.read_bytes(storage.join(base, n))) for n in storage.list_names(base)
            if not n.startswith(".") and ".tmp-" not in n}


def committed_work_ids(out: str) -> set[str]:
    return covered_ids(committed_units(out))


def committed_parts(out: str) -> list[str]:
    """Paths of the data files of committed units (never a half-written or uncommitted file)."""
    return [part_path(out, u) for u, m in sorted(committed_units(out).items()) if m["rows"]]


def _check_file(path: str, entry: dict | None, rows: int, full: bool) -> str | None:
    """Why ``path`` does not match its marker entry (None: it does)."""
    got = storage.size(path)
    if got is None:
        return f"{path}: missing"
    if entry is not None and got != entry["bytes"]:
        return f"{path}: {got} bytes, the marker says {entry['bytes']} (truncated or replaced)"
    if not full:
        return None
    data = storage.read_bytes(path)
    if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return f"{path}: content does not match the marker's SHA-256"
    try:
        n = pq.read_metadata(io.BytesIO(data)).num_rows
    except Exception as e:  # noqa: BLE001 - any parse error means a damaged shard
        return f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})"
    if n != rows:
        return f"{path}: {n} rows, the marker says {rows}"
    return None


def verify(out: str, full: bool = True, markers: dict | None = None) -> dict[str, list[str]]:
    """{unit: problems} for every committed unit whose files do not match its marker.

    ``full``: read every file (SHA-256, Parquet footer, row count); otherwise sizes only (what a
    resumed run checks at start: one metadata request per file)."""
    bad: dict[str, list[str]] = {}
    for u, m in sorted((markers if markers is not None else committed_units(out)).items()):
        problems = []
        if m["rows"]:
            problems.append(_check_file(part_path(out, u), m.get("data"), m["rows"], full))
        if m["failures"]:
            problems.append(_check_file(failures_path(out, u), m.get("failures_file"), m["failures"], full))
        problems = [p for p in problems if p]
        if problems:
            bad[u] = problems
    return bad


def verified(out: str, full: bool = False) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """({unit: marker} of units whose files match, {unit: problems} of those that do not): what
    every count (status, run summary, dataset card) is made from."""
    markers = committed_units(out)
    bad = verify(out, full=full, markers=markers)
    return {u: m for u, m in markers.items() if u not in bad}, bad


def covered_ids(markers: dict[str, dict]) -> set[str]:
    """Work ids the given units account for (committed rows and recorded failures)."""
    return {w for m in markers.values() for w in m["work_ids"] + m["failed"]}


def uncommit(out: str, unit: str, marker: dict) -> None:
    """Take a damaged unit back: marker first (so a crash here leaves only uncommitted files,
    which ``remove_uncommitted`` clears), then its files and claims; its work ids become pending."""
    storage.remove(marker_path(out, unit))
    storage.remove(part_path(out, unit))
    storage.remove(failures_path(out, unit))
    for w in marker["work_ids"] + marker["failed"]:
        storage.remove(claim_path(out, w))


def remove_uncommitted(out: str) -> dict[str, int]:
    """Delete what no marker vouches for: data and failure files of uncommitted units (a crash
    between data and marker), temp files, and claims of uncommitted work ids.  Only under the
    writer lease: they are never committed data, but a live writer's would be in flight."""
    markers = committed_units(out)
    keep_data = {f"part-{u}.parquet" for u, m in markers.items() if m["rows"]}
    keep_fail = {f"{u}.parquet" for u, m in markers.items() if m["failures"]}
    done = covered_ids(markers)
    removed = {"data": 0, "failures": 0, "claims": 0, "markers": 0}
    for sub, keep, key in (("data", keep_data, "data"), ("_failures", keep_fail, "failures"),
                           (CLAIMS, done, "claims")):
        for n in storage.list_names(storage.join(out, sub)):
            if n not in keep:
                storage.remove(storage.join(out, sub, n))
                removed[key] += 1
    for n in storage.list_names(storage.join(out, "_commits")):
        if ".tmp-" in n:
            storage.remove(storage.join(out, "_commits", n))
            removed["markers"] += 1
    return removed


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
