"""S3 for ``storage``: one boto3 client per process and endpoint, and the requests that pyarrow's
filesystem does not offer (a conditional PUT for atomic creates, a LIST with sizes, ranged GETs).

Why apart from ``storage.py``: the dispatch (local, ``s3://``, ``gs://``) reads in one place while the
S3 specifics - endpoints for S3-compatible servers, error codes, pagination - live here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from instsynth.errors import StorageError, why

# One client per process and endpoint: a filesystem or boto3 client made per call pays a new
# connection (TLS on real S3) per request; cached ones reuse their pool.  Keyed by pid too, so a
# forked child never shares its parent's sockets.
_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()
#: requests in flight for the parallel helpers (``read_many``): object stores answer in ~20 ms each,
#: so serial fetches of 10k markers would take minutes.
PARALLEL = 32


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None


def cached(key: tuple, make):
    key = (os.getpid(), *key)
    with _CACHE_LOCK:
        obj = _CACHE.get(key)
        if obj is None:
            obj = _CACHE[key] = make()
        return obj


def client():
    """The process's boto3 S3 client for the current endpoint (thread-safe; one connection pool)."""
    import boto3
    from botocore.config import Config as BotoConfig

    url = endpoint()
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    creds = os.environ.get("AWS_ACCESS_KEY_ID", "")

    def make():
        return boto3.session.Session().client(
            "s3", endpoint_url=url, region_name=region,
            config=BotoConfig(max_pool_connections=2 * PARALLEL, retries={"max_attempts": 5, "mode": "standard"}))
    return cached(("boto3", url, region, creds), make)


def split(path: str) -> tuple[str, str]:
    bucket, _, key = str(path)[len("s3://"):].partition("/")
    return bucket, key


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def error_code(e: BaseException) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")) or str(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def is_missing(e: BaseException) -> bool:
    return error_code(e) in ("NoSuchKey", "404", "NotFound", "NoSuchBucket")


def get(path: str, **kw) -> dict:
    """One GET; a missing key or any other error becomes a StorageError naming ``path``."""
    try:
        return client().get_object(**kw)
    except Exception as e:
        reason = "no such file" if is_missing(e) else error_code(e) or why(e)
        raise StorageError(f"{path}: cannot read ({reason})") from None


def create_exclusive(path: str, data: bytes) -> bool:
    bucket, key = split(path)
    try:
        client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except Exception as e:
        code = error_code(e)
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        raise StorageError(f"{path}: cannot create ({code or e})") from None


def list_keys(path: str, delimiter: bool) -> Iterator[tuple[str, int | None]]:
    """(key relative to ``path``, size; None for a common prefix) under ``path``, one LIST per 1,000."""
    bucket, key = split(path)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    kw = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": "/"} if delimiter else {})}
    try:
        for page in client().get_paginator("list_objects_v2").paginate(**kw):
            for c in page.get("CommonPrefixes", []):
                yield c["Prefix"][len(prefix):].rstrip("/"), None
            for o in page.get("Contents", []):
                yield o["Key"][len(prefix):], o["Size"]
    except Exception as e:
        if error_code(e) == "NoSuchBucket":
            raise StorageError(f"{path}: cannot list (no such bucket)") from None
        raise StorageError(f"{path}: cannot list ({error_code(e) or why(e)})") from None


