"""A unit's commit: claims on its work ids, its Parquet file, then its marker (data first, marker last);
and the tidy-up that removes what no marker covers.

Why here: this is the only code that writes rows, so the bookkeeping a commit knows (rows, bytes,
hashes, class counts) is computed once here and travels with the marker (``unit_stats``).
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from instsynth.datasets import things_of
from instsynth.io import storage
from instsynth.output.layout import (
    CLAIMS,
    FAILURE_SCHEMA,
    LEDGER,
    claim_path,
    failures_path,
    marker_path,
    part_path,
)
from instsynth.output.ledger import Ledger, unit_stats
from instsynth.output.schema import RAW_COLUMNS, ROW_SCHEMA


def claim(out: str, work_id: str, writer: str, unit: str) -> bool:
    """Claim ``work_id`` for ``writer`` (atomic create-if-absent); True when it is this writer's."""
    if storage.create_exclusive(claim_path(out, work_id), json.dumps({"writer": writer, "unit": unit}).encode()):
        return True
    try:
        held = json.loads(storage.read_bytes(claim_path(out, work_id)))
    except (storage.StorageError, ValueError):
        return False
    return held.get("writer") == writer  # a retried commit of this writer's own unit


def _claim_all(out: str, ids: list[str], writer: str, unit: str) -> list[bool]:
    """``claim`` each id; on object stores in parallel (one conditional PUT each, ~20 ms apiece)."""
    if not storage.is_uri(out) or len(ids) < 2:
        return [claim(out, w, writer, unit) for w in ids]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(ids), storage.PARALLEL)) as pool:
        return list(pool.map(lambda w: claim(out, w, writer, unit), ids))


def _file_entry(name: str, data: bytes, rows: int) -> dict:
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    raw = [c for c in RAW_COLUMNS if c in schema.names]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf,
                   compression={c: "NONE" if c in raw else "zstd" for c in schema.names},
                   use_dictionary=[c for c in schema.names if c not in raw])
    return buf.getvalue()


def row_locations(data: bytes, rows: list[dict]) -> list[list[int]] | None:
    """[[image offset, image bytes, ids offset, ids bytes], ...] of each row's PNGs inside the part's
    bytes ``data`` (values of an uncompressed, dictionary-free column lie in the file verbatim and in row
    order); None when a value is not found as such (then readers read the whole part)."""
    out, pos = [], {c: 0 for c in RAW_COLUMNS}
    for r in rows:
        loc = []
        for c in RAW_COLUMNS:
            v = r[c]
            at = data.find(v, pos[c])
            if at < 0:
                return None
            pos[c] = at + len(v)
            loc += [at, len(v)]
        out.append(loc)
    return out


def row_things(rows: list[dict]) -> list[list[list[int]]]:
    """Per row, its instance regions as ``[index, class_id, crowd]``: what a trainer needs beside the two
    PNGs, carried in the marker so that training reads no region table from the parts."""
    return [things_of(row["regions"]) for row in rows]


#: Marker format: 2 carries ``stats`` (below), so nothing downstream re-reads a unit's files; 3 marks
#: parts of row format 2 (``schema.py``) and carries each row's instance regions (``data.things``).
MARKER_VERSION = 3




def commit_unit(out: str, name: str, rows: list[dict], failures: list[dict], writer: str | None = None) -> dict:
    """Claim the unit's work ids, write its rows, then its failures, then the marker (the commit point).

    With ``writer``, each work id is first claimed (``_claims/<work_id>``, create-if-absent); ids another
    writer holds are left out, so two writers can never commit one item twice.  A unit that lost
    some ids is committed under ``<name>-<writer>`` (its file name cannot collide with the holder's).
    The marker records each file's row count, size and SHA-256, which ``verify`` checks, and the unit's
    ``unit_stats``; it is returned whole, so the driver learns all of it with the commit result."""
    if writer is not None:
        ids = [r["work_id"] for r in rows] + [f["work_id"] for f in failures]
        mine = {w for w, ok in zip(ids, _claim_all(out, ids, writer, name)) if ok}
        if len(mine) < len(ids):
            rows = [r for r in rows if r["work_id"] in mine]
            failures = [f for f in failures if f["work_id"] in mine]
            name = f"{name}-{writer}"
            if not rows and not failures:
                return {"unit": name, "rows": 0, "failures": 0, "work_ids": [], "failed": [], "lost": len(ids),
                        "committed": False}
    marker = {"unit": name, "v": MARKER_VERSION, "rows": len(rows), "failures": len(failures),
              "work_ids": [r["work_id"] for r in rows], "failed": [f["work_id"] for f in failures],
              "stats": unit_stats(rows, failures)}
    if rows:
        data = _parquet_bytes(rows, ROW_SCHEMA)
        storage.write_bytes(part_path(out, name), data)
        marker["data"] = _file_entry(f"part-{name}.parquet", data, len(rows))
        locations = row_locations(data, rows)
        if locations is not None:
            marker["data"]["rows_at"] = locations
        marker["data"]["things"] = row_things(rows)
    if failures:
        data = _parquet_bytes(failures, FAILURE_SCHEMA)
        storage.write_bytes(failures_path(out, name), data)
        marker["failures_file"] = _file_entry(f"{name}.parquet", data, len(failures))
    storage.write_bytes(marker_path(out, name), json.dumps(marker).encode())
    return marker


def uncommit(out: str, unit: str, marker: dict) -> None:
    """Take a damaged unit back: marker first (so a crash here leaves only uncommitted files,
    which ``remove_uncommitted`` clears), then its files and claims; its work ids become pending."""
    storage.remove(marker_path(out, unit))
    storage.remove_many([part_path(out, unit), failures_path(out, unit)] +
                        [claim_path(out, w) for w in marker["work_ids"] + marker["failed"]])


def remove_uncommitted(out: str, ledger: Ledger | None = None, claims: bool = True) -> dict[str, int]:
    """Delete what no marker vouches for: data and failure files of uncommitted units (a crash
    between data and marker), temp files, and (``claims``) claims of uncommitted work ids.  Only
    under the writer lease: they are never committed data, but a live writer's would be in flight.
    With ``ledger``, it is re-scanned (names, plus only new markers) and reused.  Claims are the
    largest folder (one object per item) and matter only to a run about to commit, so a writer
    session lists them once, before its first commit, and never on a run with nothing to do."""
    ledger = ledger or Ledger(out)
    ledger.scan(("_commits", "data", "_failures") + ((CLAIMS,) if claims else ()))
    markers = ledger.markers
    keep = {"data": {f"part-{u}.parquet" for u, m in markers.items() if m["rows"]},
            "_failures": {f"{u}.parquet" for u, m in markers.items() if m["failures"]},
            CLAIMS: ledger.covered_ids()}
    removed = {"data": 0, "failures": 0, "claims": 0, "markers": 0}
    doomed = []
    for sub, key in (("data", "data"), ("_failures", "failures"), (CLAIMS, "claims"))[:3 if claims else 2]:
        gone = [n for n in ledger.listing.get(sub, {}) if n not in keep[sub]]
        doomed += [storage.join(out, sub, n) for n in gone]
        removed[key] += len(gone)
        ledger.listing[sub] = {n: v for n, v in ledger.listing.get(sub, {}).items() if n in keep[sub]}
    tmp = [("_commits", n) for n in ledger.listing.get("_commits", {}) if ".tmp-" in n]
    tmp += [(LEDGER, n) for n in ledger.listing.get(LEDGER, {}) if ".tmp-" in n]
    doomed += [storage.join(out, sub, n) for sub, n in tmp]
    removed["markers"] += len(tmp)
    storage.remove_many(doomed)
    ledger.listing.pop(CLAIMS, None)  # large and needed only here
    return removed
