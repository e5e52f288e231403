"""The committed units of an output dir, from their markers: listed once, indexed in ``_ledger/``.

Why an index: on an object store, one GET per marker makes a resume cost grow with the data already
written; the writer copies its markers into a few ledger files, so a scan reads those plus the markers
no file holds yet, and every count (rows, failures, classes) comes from markers, not from shards.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output.layout import (
    LEDGER,
    LEDGER_MAX_FILES,
    failures_path,
    is_marker_name,
    marker_path,
    part_path,
)


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

def unit_stats(rows: list[dict], failures: list[dict]) -> dict:
    """What the card, summary and run record need of a unit, computed once at commit time:
    class counts, (generator, model, revision) triples, failures by stage and the failed images."""
    return {"classes": dict(sorted(Counter(r["class_name"] for r in rows).items())),
            "models": sorted([list(m) for m in {(r["generator"], r["model_id"], r["model_revision"]) for r in rows}]),
            "failure_stages": dict(sorted(Counter(f["stage"] for f in failures).items())),
            "failed_images": sorted({f["image_id"] for f in failures})}


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

    @classmethod
    def open(cls, out: str) -> Ledger:
        """A ledger of ``out`` with its markers scanned (what every reader starts with)."""
        ledger = cls(out)
        ledger.scan()
        return ledger

    def verified(self) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """({unit: marker} whose files match the listing's sizes, {damaged unit: problems}): the one way
        a count (status, summary, card, export, site) picks its units (no request: the last listing)."""
        bad = self.verify_sizes()
        return {u: m for u, m in self.markers.items() if u not in bad}, bad

    # -- reading --------------------------------------------------------------------------------------
    def scan(self, folders: tuple[str, ...] = ("_commits", "data", "_failures")) -> list[str]:
        """LIST ``folders``; take markers not yet known from the index or else fetch them, drop those
        gone; returns the new unit names."""
        lists = folders + ((LEDGER,) if "_commits" in folders else ())
        for sub, names in zip(lists, _list_all([storage.join(self.out, sub) for sub in lists])):
            self.listing[sub] = names
        if "_commits" not in folders:
            return []
        names = {n: s for n, s in self.listing["_commits"].items() if is_marker_name(n)}
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
            rows = read_parquet(part_path(self.out, unit), columns=[
                "class_name", "generator", "model_id", "model_revision"]).to_pylist() if m["rows"] else []
            fails = read_parquet(failures_path(self.out, unit), columns=[
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


def covered_ids(markers: dict[str, dict]) -> set[str]:
    """Work ids the given units account for (committed rows and recorded failures)."""
    return {w for m in markers.values() for w in m["work_ids"] + m["failed"]}
