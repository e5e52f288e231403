"""IS-Cityscapes output: the output-dir layout, unit commits and readers (the row schema: ``schema.py``).

Layout of an output dir (fixed, so every tool can rely on it)::

    plan.parquet  plan.failures.parquet  config.yaml  README.md (dataset card)
    dataset.json                  the source dataset (spec) and its label space (outputs.py)
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

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from instsynth import storage
from instsynth.schema import RAW_COLUMNS, ROW_SCHEMA, read_columns  # noqa: E402 - the row lives in schema.py

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


#: The PNG columns (``schema.RAW_COLUMNS``) are stored as they are (PNG is compressed already; zstd gains
#: ~nothing) and without a dictionary, so each value lies in the file verbatim: a trainer reads one row's
#: image with one ranged read at an offset the marker records, instead of the whole part (``row_locations``).


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
    return [[[r["index"], r["class_id"], int(r["crowd"])] for r in row["regions"] if r["thing"]] for row in rows]


#: Marker format: 2 carries ``stats`` (below), so nothing downstream re-reads a unit's files; 3 marks
#: parts of row format 2 (``schema.py``) and carries each row's instance regions (``data.things``).
MARKER_VERSION = 3


def unit_stats(rows: list[dict], failures: list[dict]) -> dict:
    """What the card, summary and run record need of a unit, computed once at commit time:
    class counts, (generator, model, revision) triples, failures by stage and the failed images."""
    return {"classes": dict(sorted(Counter(r["class_name"] for r in rows).items())),
            "models": sorted([list(m) for m in {(r["generator"], r["model_id"], r["model_revision"]) for r in rows}]),
            "failure_stages": dict(sorted(Counter(f["stage"] for f in failures).items())),
            "failed_images": sorted({f["image_id"] for f in failures})}


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


def _is_marker_name(n: str) -> bool:
    return not n.startswith(".") and ".tmp-" not in n


def _parse_marker(out: str, unit: str, raw: bytes) -> dict:
    try:
        return json.loads(raw)
    except ValueError:
        raise storage.StorageError(f"{marker_path(out, unit)}: not a readable commit marker") from None


def _index_bytes(markers: dict[str, bytes]) -> bytes:
    units = sorted(markers)
    t = pa.table({"unit": pa.array(units, pa.string()), "marker": pa.array([markers[u] for u in units], pa.binary())})
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


def _list_all(paths: list[str]) -> list[dict[str, int | None]]:
    """``storage.list_sizes`` of several folders, side by side on object stores (each LIST is a
    round trip, and their pages are sequential within a folder only)."""
    if len(paths) < 2 or not storage.is_uri(paths[0]):
        return [storage.list_sizes(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(storage.list_sizes, paths))


class Ledger:
    """Every commit marker of one output dir, fetched at most once per run and handed to everything
    that needs it (resume, tidy-up, size checks, summary, card).

    Why: at 100k items an output has 12.5k units; re-reading ``_commits/`` for each of those readers
    cost seven full marker scans per run.  ``scan`` LISTs the layout folders (names and sizes: one
    request per 1,000 files) and fetches only markers it has not seen, in parallel; commits made by
    this run are ``add``-ed from their commit results.  Because a writer that bypasses the lease may
    commit during a run, callers ``scan`` again before tidy-up and before the card: only its new
    markers are fetched.  Markers written before format 2 lack ``stats``: their files are read once,
    column-projected, when ``stats`` is first asked for (the markers are never rewritten).

    The ledger index (``_ledger/``): even one GET per marker is U requests per resume (1,000 units took
    8.6 s on the test server).  So a writer also ``flush``-es the markers it committed or had to fetch
    into ``_ledger/<run>-<k>.parquet`` files (unit, marker bytes), every ``LEDGER_BATCH`` commits and at
    the end of the run; ``scan`` reads those few files and GETs only the markers they lack.  The LIST
    of ``_commits/`` stays the truth: an index entry counts only for a listed marker of the same size,
    entries of unlisted markers are ignored, and the one operation that replaces a marker (``uncommit``
    before a redo) deletes the index first.  Index files hold copies of immutable markers, so two files
    naming one unit agree, and a crash between writing and deleting them loses nothing."""

    def __init__(self, out: str):
        self.out = out
        self.markers: dict[str, dict] = {}
        self.listing: dict[str, dict[str, int | None]] = {}
        self._stats: dict[str, dict] = {}
        self._index: dict[str, bytes] = {}      # unit -> marker bytes, from index files not used yet
        self._index_files: set[str] = set()     # index files already read (or written) by this ledger
        self._unindexed: dict[str, bytes] = {}  # markers known here that no index file holds yet
        self._flushes = 0
        self.fetched = 0                        # markers fetched one by one (the index lacked them)

    # -- reading --------------------------------------------------------------------------------------
    def scan(self, folders: tuple[str, ...] = ("_commits", "data", "_failures")) -> list[str]:
        """LIST ``folders``; take markers not yet known from the index or else fetch them, drop those
        gone; returns the new unit names."""
        lists = folders + ((LEDGER,) if "_commits" in folders else ())
        for sub, names in zip(lists, _list_all([storage.join(self.out, sub) for sub in lists])):
            self.listing[sub] = names
        if "_commits" not in folders:
            return []
        names = {n: s for n, s in self.listing["_commits"].items() if _is_marker_name(n)}
        for gone in set(self.markers) - set(names):
            self.drop(gone)
        new = sorted(set(names) - set(self.markers))
        if new:
            self._read_index()
        fetch = []
        for n in new:
            raw = self._index.pop(n, None)
            if raw is not None and len(raw) == names[n]:
                self.markers[n] = _parse_marker(self.out, n, raw)
            else:
                fetch.append(n)
        self.fetched += len(fetch)
        for n, raw in zip(fetch, storage.read_many([marker_path(self.out, n) for n in fetch])):
            if raw is not None:
                self.markers[n] = _parse_marker(self.out, n, raw)
                self._unindexed[n] = raw
        return new

    def _read_index(self) -> None:
        files = sorted(n for n in self.listing.get(LEDGER, {}) if n.endswith(".parquet") and ".tmp-" not in n)
        todo = [n for n in files if n not in self._index_files]
        for n, raw in zip(todo, storage.read_many([storage.join(self.out, LEDGER, n) for n in todo])):
            self._index_files.add(n)
            if raw is None:
                continue
            try:
                t = pq.read_table(io.BytesIO(raw), columns=["unit", "marker"])
            except Exception:  # noqa: BLE001 - a damaged index file is only a missed shortcut
                continue
            for u, m in zip(t.column("unit").to_pylist(), t.column("marker").to_pylist()):
                if u not in self.markers:
                    self._index[u] = m

    # -- the index --------------------------------------------------------------------------------------
    @property
    def unindexed(self) -> int:
        return len(self._unindexed)

    def flush(self, writer: str) -> str | None:
        """Copy the markers no index file holds into a new ``_ledger/`` file; returns its name."""
        if not self._unindexed:
            return None
        name = f"{writer}-{self._flushes:05d}.parquet"
        self._flushes += 1
        storage.write_bytes(storage.join(self.out, LEDGER, name), _index_bytes(self._unindexed))
        self._index_files.add(name)
        self._unindexed = {}
        return name

    def compact(self, writer: str) -> None:
        """With more than ``LEDGER_MAX_FILES`` index files, write every known marker into one and
        delete the others (new file first: a crash in between leaves copies, never a gap)."""
        # the last scan's listing plus what this ledger wrote since: no LIST of its own
        files = sorted({n for n in self.listing.get(LEDGER, {}) if n.endswith(".parquet") and ".tmp-" not in n}
                       | {n for n in self._index_files if n.startswith(f"{writer}-")})
        if len(files) <= LEDGER_MAX_FILES:
            return
        name = f"{writer}-all.parquet"
        storage.write_bytes(storage.join(self.out, LEDGER, name),
                            _index_bytes({u: json.dumps(m).encode() for u, m in self.markers.items()}))
        storage.remove_many([storage.join(self.out, LEDGER, n) for n in files if n != name])
        self._index_files = {name}

    def drop_index(self) -> None:
        """Delete every index file (before a marker is replaced): what they held is re-indexed at the
        next ``flush`` from the markers in memory."""
        files = storage.list_names(storage.join(self.out, LEDGER))
        storage.remove_many([storage.join(self.out, LEDGER, n) for n in files])
        self._index, self._index_files = {}, set()
        self._unindexed = {u: json.dumps(m).encode() for u, m in self.markers.items()}

    def add(self, marker: dict) -> None:
        """A unit this process just committed (the marker came back with the commit result)."""
        if marker.get("committed", True):
            self.markers[marker["unit"]] = marker
            self._unindexed[marker["unit"]] = json.dumps(marker).encode()
            for sub, key, name in (("data", "data", f"part-{marker['unit']}.parquet"),
                                   ("_failures", "failures_file", f"{marker['unit']}.parquet")):
                if key in marker and sub in self.listing:
                    self.listing[sub][name] = marker[key]["bytes"]

    def drop(self, unit: str) -> None:
        self.markers.pop(unit, None)
        self._stats.pop(unit, None)
        self._unindexed.pop(unit, None)

    def covered_ids(self, units=None) -> set[str]:
        return covered_ids(self.markers if units is None else {u: self.markers[u] for u in units})

    def verify_sizes(self) -> dict[str, list[str]]:
        """{unit: problems} from the listing's sizes (no request per file)."""
        bad: dict[str, list[str]] = {}
        for u, m in sorted(self.markers.items()):
            problems = []
            for sub, key, name, n in (("data", "data", f"part-{u}.parquet", m["rows"]),
                                      ("_failures", "failures_file", f"{u}.parquet", m["failures"])):
                if not n:
                    continue
                got = self.listing.get(sub, {}).get(name)
                path = storage.join(self.out, sub, name)
                if got is None:
                    problems.append(f"{path}: missing")
                elif key in m and got != m[key]["bytes"]:
                    problems.append(f"{path}: {got} bytes, the marker says {m[key]['bytes']} (truncated or replaced)")
            if problems:
                bad[u] = problems
        return bad

    def stats(self, unit: str) -> dict:
        """``unit_stats`` of a unit: from its marker, or (old markers) from its files, read once."""
        m = self.markers[unit]
        if "stats" in m:
            return m["stats"]
        if unit not in self._stats:
            rows = storage.read_parquet(part_path(self.out, unit), columns=[
                "class_name", "generator", "model_id", "model_revision"]).to_pylist() if m["rows"] else []
            fails = storage.read_parquet(failures_path(self.out, unit), columns=[
                "image_id", "stage"]).to_pylist() if m["failures"] else []
            self._stats[unit] = unit_stats(rows, fails)
        return self._stats[unit]

    def totals(self, units) -> dict:
        """Summed stats of ``units``: rows, failures, classes, models, failures by stage, failed images."""
        classes: Counter = Counter()
        stages: Counter = Counter()
        models, images = set(), set()
        rows = fails = 0
        for u in units:
            m, st = self.markers[u], self.stats(u)
            rows += m["rows"]
            fails += m["failures"]
            classes.update(st["classes"])
            stages.update(st["failure_stages"])
            models.update(tuple(x) for x in st["models"])
            images.update(st["failed_images"])
        return {"rows": rows, "failures": fails, "classes": dict(sorted(classes.items())),
                "models": sorted(models), "failure_stages": dict(sorted(stages.items())),
                "failed_images": images}


def committed_units(out: str) -> dict[str, dict]:
    """{unit: marker} for every committed unit of ``out`` (one LIST + parallel GETs)."""
    ledger = Ledger(out)
    ledger.scan(("_commits",))
    return ledger.markers


def committed_work_ids(out: str) -> set[str]:
    return covered_ids(committed_units(out))


def committed_parts(out: str) -> list[str]:
    """Paths of the data files of committed units (never a half-written or uncommitted file)."""
    return [part_path(out, u) for u, m in sorted(committed_units(out).items()) if m["rows"]]


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
    from instsynth.datasets import DataError, decode_image
    from instsynth.schema import labels_of

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
    ledger = Ledger(out)
    ledger.scan()
    bad = verify_full(out, ledger.markers)[0] if full else ledger.verify_sizes()
    return {u: m for u, m in ledger.markers.items() if u not in bad}, bad


def covered_ids(markers: dict[str, dict]) -> set[str]:
    """Work ids the given units account for (committed rows and recorded failures)."""
    return {w for m in markers.values() for w in m["work_ids"] + m["failed"]}


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


def iter_tables(out: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream committed rows one unit at a time (memory stays flat as the dataset grows).  ``columns``
    are today's names; a part written in the first row format yields the columns that stand in for
    them (``schema.read_columns``): pass its rows through ``schema.normalize``."""
    for p in committed_parts(out):
        yield read_part(p, columns)


def read_part(path: str, columns: list[str] | None = None) -> pa.Table:
    """One part file, ``columns`` in today's names (see ``iter_tables``)."""
    if columns is None:
        return storage.read_parquet(path)
    footer = storage.parquet_footer(path)  # one read: the schema and, for a small part, all of it
    return storage.read_parquet_columns(path, read_columns(footer[0].schema.to_arrow_schema(), columns),
                                        footer=footer)


def iter_rows(out: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Committed rows as dicts in today's format (older rows normalized)."""
    from instsynth.schema import normalize

    for t in iter_tables(out, columns):
        for r in t.to_pylist():
            yield normalize(r)


def read_failures(out: str) -> pa.Table:
    tables = [storage.read_parquet(failures_path(out, u))
              for u, m in sorted(committed_units(out).items()) if m["failures"]]
    return pa.concat_tables(tables) if tables else FAILURE_SCHEMA.empty_table()
