"""One writer session: what every command that writes an output dir shares (``synth``, ``originals``).

    checks (no writes) -> writer lease -> config check again under it -> tidy-up -> commits
    -> run record -> tidy-up again -> (the caller's summary and card) -> lease released

Why one module: the order is what makes a refused command write nothing and a crashed one resumable,
and the bookkeeping it carries (``Ledger``: every marker fetched once, commits added from
their results) is what keeps a run's cost O(units it runs) plus one scan of the markers.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import yaml

from instsynth import __version__
from instsynth.config import Config, ConfigError, result_differences, to_dict
from instsynth.io import storage
from instsynth.output.commits import remove_uncommitted, uncommit
from instsynth.output.layout import LEDGER_BATCH
from instsynth.output.lease import acquire
from instsynth.output.ledger import Ledger
from instsynth.output.verify import verify_full


def path_inside(child: str, parent: str) -> bool:
    if storage.is_uri(child) != storage.is_uri(parent):
        return False
    c = child if storage.is_uri(child) else os.path.realpath(child)
    p = parent if storage.is_uri(parent) else os.path.realpath(parent)
    return c.rstrip("/") == p.rstrip("/") or c.startswith(p.rstrip("/") + "/")


def check_config(out: str, cfg: Config, overwrite: bool) -> None:
    """Refuse to mix configs in one output dir (execution-only keys aside)."""
    path = storage.join(out, "config.yaml")
    try:
        raw = storage.read_bytes(path)
    except storage.StorageError as e:
        if "no such file" in str(e):
            return
        raise
    old = yaml.safe_load(raw.decode()) or {}
    if "dataset" not in old and not overwrite and storage.list_names(storage.join(out, "_commits")):
        # rows of the first format (instance_ids, city) are read everywhere but never mixed with new ones
        raise ConfigError(f"{out} holds rows of the first row format (written before datasets other than Cityscapes "
                          "were read); it stays readable as it is - write new rows to a new --out")
    diffs = result_differences(old, to_dict(cfg))
    if diffs and not overwrite:
        raise ConfigError(
            f"{out} was made with a different config (differing keys: {', '.join(diffs)}); "
            "use a new --out, or --overwrite to discard it")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class WriterSession:
    """The lease on ``out`` and the run's bookkeeping; use as a context manager.

    ``lease=False`` skips the lease (tests of the work-id claims, the second line of defence)."""

    def __init__(self, out: str, cfg: Config, log=print, lease: bool = True, force_unlock: bool = False,
                 overwrite: bool = False, run_id: str | None = None):
        self.out, self.cfg, self.log = out, cfg, log
        self.leased, self.force_unlock, self.overwrite = lease, force_unlock, overwrite
        self.run_id = run_id or new_run_id()
        self.held = None
        self.ledger = Ledger(out)
        self.units: list[dict] = []
        self.started = time.time()

    def __enter__(self) -> WriterSession:
        existed = storage.exists(self.out)
        if self.leased:
            self.held = acquire(self.out, self.run_id, force=self.force_unlock)
            if self.held.took_over:
                self.log(f"took over the writer lease of {self.held.took_over}")
        try:
            check_config(self.out, self.cfg, self.overwrite)  # again: another run may have finished meanwhile
        except ConfigError:
            self.release()
            if not existed:
                storage.remove_tree(self.out)
            raise
        if self.leased and existed:
            self.tidy()
        else:
            self.ledger.scan()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None

    # -- bookkeeping ----------------------------------------------------------------------------------
    def tidy(self, claims: bool = False) -> None:
        """Remove what no marker vouches for (re-LISTs; fetches only markers not seen yet); claims of
        uncommitted ids only with ``claims`` (``before_commits``)."""
        removed = remove_uncommitted(self.out, self.ledger, claims=claims)
        if any(removed.values()):
            self.log("removed uncommitted files: " + ", ".join(f"{k}={v}" for k, v in removed.items() if v))

    def before_commits(self) -> None:
        """Called once before the run's first commit: clear claims a crashed writer left on ids it
        never committed (they would make this writer skip those ids)."""
        if self.leased:
            self.tidy(claims=True)

    def requeue_damaged(self, full: bool) -> set[str]:
        """Uncommit every unit whose files do not match its marker (``full``: each file read once and
        hashed, in parallel; else sizes from the listing); returns their work ids."""
        bad = verify_full(self.out, self.ledger.markers)[0] if full else self.ledger.verify_sizes()
        ids: set[str] = set()
        if bad:
            self.ledger.drop_index()  # markers are about to be replaced: no index may vouch for them
        for unit, problems in sorted(bad.items()):
            self.log(f"re-queued unit {unit}: " + "; ".join(problems))
            marker = self.ledger.markers[unit]
            uncommit(self.out, unit, marker)
            self.ledger.drop(unit)
            ids.update(marker["work_ids"] + marker["failed"])
        return ids

    def on_commit(self, marker: dict, placement: dict | None = None) -> None:
        """A unit committed by this run (the marker came back with the commit result)."""
        self.ledger.add(marker)
        if self.ledger.unindexed >= LEDGER_BATCH:
            self.ledger.flush(self.run_id)
        self.units.append({"unit": marker["unit"], "rows": marker["rows"], "failures": marker["failures"],
                           "committed_at": round(time.time(), 3),
                           "nodes": {s: w.get("node", "") for s, w in (placement or {}).items()},
                           "stages": {s: [round(w["end"] - w["seconds"], 3), round(w["end"], 3)]
                                      for s, w in (placement or {}).items() if "end" in w}})

    def verified(self) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """(good markers, {damaged unit: problems}) from the ledger's last listing (no request)."""
        return self.ledger.verified()

    def finish(self, record: dict) -> None:
        """Write the run record (``_runs/<run>.json``, with each unit's ``committed_at``), then
        tidy up again, which also picks up markers a lease-bypassing writer committed meanwhile, then
        index the markers not yet in ``_ledger/`` (so the next run GETs a few files, not U markers)."""
        ended = time.time()
        rows = sum(u["rows"] for u in self.units)
        record = {**record, "run": self.run_id, "start": self.started, "end": ended, "units": self.units,
                  "rows_committed": rows, "rows_per_s": rows / max(ended - self.started, 1e-9),
                  "version": __version__, "argv": sys.argv}
        storage.write_bytes(storage.join(self.out, "_runs", f"{self.run_id}.json"),
                            json.dumps(record, indent=1).encode())
        if self.leased:
            self.tidy()
        else:
            self.ledger.scan()
        self.ledger.flush(self.run_id)  # this run's commits, and markers the index lacked
        self.ledger.compact(self.run_id)
