"""Are the shards what their markers say?  Sizes (cheap, from a listing) or a full read with hashes
(``--repair``), and optionally every PNG decoded.  ``verified`` is the one way to get the good markers.
"""

from __future__ import annotations

import hashlib
import io

import pyarrow.parquet as pq

from instsynth.datasets import DataError, decode_image
from instsynth.io import storage
from instsynth.output.layout import failures_path, part_path
from instsynth.output.ledger import Ledger
from instsynth.output.schema import (
    labels_of,
    read_columns,  # noqa: E402 - the row lives in schema.py
)


def _check_bytes(path: str, data: bytes | None, entry: dict | None, rows: int) -> str | None:
    if data is None:
        return f"{path}: missing"
    if entry is not None and len(data) != entry["bytes"]:
        return f"{path}: {len(data)} bytes, the marker says {entry['bytes']} (truncated or replaced)"
    if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return f"{path}: content does not match the marker's SHA-256"
    try:
        n = pq.read_metadata(io.BytesIO(data)).num_rows
    except Exception as e:  # noqa: BLE001 - any parse error means a damaged shard
        return f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})"
    if n != rows:
        return f"{path}: {n} rows, the marker says {rows}"
    return None


def _bad_pngs(data: bytes) -> list[str]:
    """Rows of a part whose PNGs do not decode or disagree with the row's size."""
    bad = []
    f = pq.ParquetFile(io.BytesIO(data))
    t = f.read(columns=read_columns(f.schema_arrow, ["work_id", "image", "labels", "regions", "width", "height"]))
    for r in t.to_pylist():
        try:
            img = decode_image(r["image"], r["work_id"] + ":image")
            ids = labels_of(r).index
            if img.shape[:2] != ids.shape or ids.shape != (r["height"], r["width"]):
                raise DataError(f"{r['work_id']}: image {img.shape[:2]}, ids {ids.shape}, "
                                f"row says {r['height']}x{r['width']}")
        except DataError as e:
            bad.append(str(e))
    return bad


def _read_or_none(path: str) -> bytes | None:
    try:
        return storage.read_bytes(path)
    except storage.StorageError as e:
        if "no such file" in str(e):
            return None
        raise


def scan_unit(out: str, unit: str, marker: dict, decode: bool = False) -> tuple[list[str], list[str]]:
    """(problems, bad rows) of one unit from one read of each file: SHA-256, Parquet footer, row
    count and (``decode``) every PNG, all from the same bytes."""
    problems, bad_rows = [], []
    if marker["rows"]:
        path = part_path(out, unit)
        data = _read_or_none(path)
        why = _check_bytes(path, data, marker.get("data"), marker["rows"])
        if why:
            problems.append(why)
        elif decode:
            bad_rows = _bad_pngs(data)
    if marker["failures"]:
        path = failures_path(out, unit)
        why = _check_bytes(path, _read_or_none(path), marker.get("failures_file"), marker["failures"])
        if why:
            problems.append(why)
    return problems, bad_rows


def verify_full(out: str, markers: dict[str, dict], decode: bool = False,
                workers: int = 8) -> tuple[dict[str, list[str]], list[str]]:
    """({unit: problems}, bad rows) over ``markers``: every file read once, units checked in parallel
    (hashing and PNG decoding release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    units = sorted(markers)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(units) or 1))) as pool:
        results = list(pool.map(lambda u: scan_unit(out, u, markers[u], decode), units))
    bad = {u: p for u, (p, _) in zip(units, results) if p}
    return bad, [r for _, rows in results for r in rows]


def verify(out: str, full: bool = True, markers: dict | None = None) -> dict[str, list[str]]:
    """{unit: problems} for every committed unit whose files do not match its marker.

    ``full``: read every file once (SHA-256, Parquet footer, row count); otherwise sizes only, from
    one LIST per folder."""
    ledger = Ledger(out)
    if markers is not None:
        ledger.scan(("data", "_failures"))  # the listing only: the markers are given
        ledger.markers = dict(markers)
    else:
        ledger.scan()
    if full:
        return verify_full(out, ledger.markers)[0]
    return ledger.verify_sizes()


def verified(out: str, full: bool = False) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """({unit: marker} of units whose files match, {unit: problems} of those that do not): what
    every count (status, run summary, dataset card) is made from."""
    ledger = Ledger.open(out)
    if not full:
        return ledger.verified()
    bad = verify_full(out, ledger.markers)[0]
    return {u: m for u, m in ledger.markers.items() if u not in bad}, bad
