"""One writer per output dir: a lease file in OUT, created atomically, kept alive, released.

Why: two ``synth`` runs on one OUT would each run every pending unit (a GPU-week done twice) and,
with different ``rows_per_unit``, commit overlapping units.  The lease makes the second run refuse
in one line naming the holder.  It is created with ``storage.create_exclusive`` (local: hard link;
S3: ``If-None-Match: *``), so two runs racing for it cannot both win.

A lease whose owner is provably gone is taken over without asking: same host and the pid is not
running (a ``kill -9``-ed driver), or no heartbeat for ``ttl`` seconds (a lost cluster head).
``--force-unlock`` removes any lease, for when the owner is gone but that cannot be seen from here.
Work-id claims (``commits.claim``) are the second, independent line: even writers that bypass the
lease cannot commit one work item twice.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from instsynth.io import storage

LEASE = "_lease.json"
TTL_S = 300.0


class LeaseError(RuntimeError):
    """The output dir is held by another writer (the message names it)."""


def lease_path(out: str) -> str:
    return storage.join(out, LEASE)


def read_lease(out: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(lease_path(out)))
    except (storage.StorageError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(holder: dict, now: float | None = None) -> str | None:
    """Why the holder of a lease is certainly gone (None: it may be alive)."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"pid {holder.get('pid')} is not running on {holder.get('host')}"
    age = now - float(holder.get("heartbeat", 0))
    if age > float(holder.get("ttl", TTL_S)):
        return f"no heartbeat for {age:.0f} s"
    return None


def describe(holder: dict) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"run {holder.get('owner')} (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"heartbeat {age:.0f} s ago)")


class Lease:
    """The lease on ``out`` held by this process; a thread renews its heartbeat every ttl/4."""

    def __init__(self, out: str, owner: str, ttl: float = TTL_S, took_over: str | None = None):
        self.out, self.owner, self.ttl, self.took_over = out, owner, ttl, took_over
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> dict:
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                "heartbeat": time.time(), "ttl": self.ttl}

    def start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.ttl / 4):
                held = read_lease(self.out)
                if held is None or held.get("owner") != self.owner:
                    return  # force-unlocked or taken over: stop touching it
                storage.write_bytes(lease_path(self.out), json.dumps(self.record()).encode())

        self._thread = threading.Thread(target=beat, name="instsynth-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        held = read_lease(self.out)
        if held is not None and held.get("owner") == self.owner:
            storage.remove(lease_path(self.out))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(out: str, owner: str | None = None, ttl: float = TTL_S, force: bool = False) -> Lease:
    """Take the lease on ``out`` or raise LeaseError naming the holder."""
    owner = owner or uuid.uuid4().hex[:12]
    lease = Lease(out, owner, ttl)
    path = lease_path(out)
    for _ in range(3):
        if storage.create_exclusive(path, json.dumps(lease.record()).encode()):
            lease.start_heartbeat()
            return lease
        holder = read_lease(out)
        if holder is None:  # released between our create and read, or unreadable: look again
            if storage.exists(path) and not force:
                raise LeaseError(f"{path}: unreadable writer lease; if no run writes to {out}, "
                                 "re-run with --force-unlock")
            storage.remove(path)
            continue
        gone = owner_gone(holder)
        if not (force or gone):
            raise LeaseError(f"{out} is being written by {describe(holder)}; wait for it to finish, or if "
                             "that run is gone, re-run with --force-unlock")
        lease.took_over = f"{describe(holder)}: " + ("--force-unlock" if force else gone)
        again = read_lease(out)
        if again is not None and again.get("owner") == holder.get("owner"):  # not retaken meanwhile
            storage.remove(path)
    raise LeaseError(f"{out}: could not take the writer lease (another run keeps taking it)")
