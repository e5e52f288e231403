"""The tests' local S3 server: moto's S3 over real HTTP on 127.0.0.1, wrapped to count requests.

Why a wrapper: the bookkeeping's cost is a number of requests (issue 17), so tests assert on counts
("a no-op resume reads no ``data/`` object") and ``scripts/bench_scale.py`` measures requests per
item and per unit, and adds a per-request latency to stand in for a real object store.  Loopback
only: it binds 127.0.0.1 and nothing here talks to any other address.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

#: directory names of an output dir (output/layout.py) a request's key is classified by
PREFIXES = ("data", "_commits", "_ledger", "_claims", "_failures", "_runs", "stats", "report")


def prefix_of(key: str) -> str:
    """The output-dir part a key belongs to: a layout folder, or a top-level file's name."""
    parts = [p for p in key.split("/") if p]
    for p in parts[:-1]:
        if p in PREFIXES:
            return p
    if key.endswith("/") and parts and parts[-1] in PREFIXES:
        return parts[-1]
    return parts[-1] if len(parts) > 1 else "(bucket)"


def kind_of(method: str, query: str, headers) -> str:
    q = query or ""
    if method == "GET" and ("list-type" in q or q.startswith("prefix") or "delimiter" in q):
        return "LIST"
    if method == "GET":
        return "GET range" if headers.get("HTTP_RANGE") else "GET"
    if method == "PUT" and "partNumber" in q:
        return "PUT part"
    if method == "PUT":
        return "PUT if-absent" if headers.get("HTTP_IF_NONE_MATCH") else "PUT"
    if method == "POST" and "delete" in q:
        return "DELETE many"
    if method == "POST":
        return "POST multipart"
    return method


class CountingS3:
    """Start with ``start()``; ``requests`` holds (kind, prefix, bytes sent back, seconds the server spent
    on it, latency excluded, when it ended: time.time()) per request."""

    def __init__(self, port: int = 0, latency_s: float = 0.0):
        self.port, self.latency_s = port, latency_s
        self.requests: list[tuple] = []
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _app(self):
        from moto.server import DomainDispatcherApplication, create_backend_app

        inner = DomainDispatcherApplication(create_backend_app)

        def app(environ, start_response):
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
            if path.startswith("/__counts"):  # control endpoint for a server in another process
                import json

                body = json.dumps(self.snapshot()).encode()
                if "reset" in environ.get("QUERY_STRING", ""):
                    self.reset()
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
            query = environ.get("QUERY_STRING", "")
            kind = kind_of(method, query, environ)
            key = path.lstrip("/").split("/", 1)[1] if path.count("/") > 1 else ""
            if kind == "LIST":
                from urllib.parse import parse_qs

                key = parse_qs(query).get("prefix", [""])[0]
            if self.latency_s:
                time.sleep(self.latency_s)
            t0 = time.perf_counter()
            body = inner(environ, start_response)
            sent = 0
            chunks = []
            for c in body:
                sent += len(c)
                chunks.append(c)
            if hasattr(body, "close"):
                body.close()
            with self._lock:
                self.requests.append((kind, prefix_of(key) if key else "(bucket)", sent,
                                      time.perf_counter() - t0, time.time()))
            return chunks
        return app

    def start(self) -> CountingS3:
        import logging

        from moto.server import MotoRequestHandler
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        self._server = make_server("127.0.0.1", self.port, self._app(), threaded=True,
                                   request_handler=MotoRequestHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join()

    def reset(self) -> None:
        with self._lock:
            self.requests = []

    def snapshot(self) -> list[tuple]:
        with self._lock:
            return list(self.requests)

    def count(self, kind: str | None = None, prefix: str | None = None) -> int:
        return sum(1 for k, p, *_ in self.snapshot() if (kind is None or k.startswith(kind))
                   and (prefix is None or p == prefix))

    def bytes_sent(self, prefix: str | None = None) -> int:
        return sum(b for k, p, b, *_ in self.snapshot() if k.startswith("GET") and (prefix is None or p == prefix))

    def table(self) -> dict[str, int]:
        """{"KIND prefix": count} over every request so far."""
        return dict(sorted(Counter(f"{k} {p}" for k, p, *_ in self.snapshot()).items()))


class RemoteCounts:
    """The counts of a ``CountingS3`` running in another process (``python tests/s3server.py``)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def snapshot(self, reset: bool = False) -> list[tuple]:
        import json
        import urllib.request

        with urllib.request.urlopen(self.endpoint + "/__counts" + ("?reset=1" if reset else ""), timeout=60) as r:
            return [tuple(x) for x in json.loads(r.read())]

    def reset(self) -> None:
        self.snapshot(reset=True)


def main() -> None:
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="local counting S3 server (moto) on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # before the server threads
    server = CountingS3(args.port, args.latency_ms / 1000).start()
    print(server.endpoint, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()


if __name__ == "__main__":
    main()
