"""The only module that touches files: local paths and ``s3://`` / ``gs://`` URIs alike.

Why: a dataset root, a plan and an output dir may live on a laptop disk or in a bucket; every
other module calls these few functions and never learns which.  Backed by pyarrow filesystems
(``FileSystem.from_uri``), which speak local, S3 and GCS with one API.

Writes are all-or-nothing per file (local: temp file + rename; object stores: one PUT), and a
unit of output is committed by writing its data first and a marker second.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class StorageError(OSError):
    """A file could not be read or written; the message names it and says why."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    path = str(path)
    if is_uri(path):
        if path.startswith("file://"):
            return pafs.LocalFileSystem(), path[len("file://"):]
        try:
            fs, p = pafs.FileSystem.from_uri(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError with long texts
            raise StorageError(f"{path}: cannot open filesystem ({str(e).splitlines()[0]})") from None
        return _with_endpoint(fs, path), p
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _with_endpoint(fs: pafs.FileSystem, path: str) -> pafs.FileSystem:
    """Honour ``AWS_ENDPOINT_URL`` for S3-compatible servers (MinIO, moto, Ceph, R2)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if path.startswith("s3://") and endpoint:
        scheme = "https" if endpoint.startswith("https") else "http"
        host = endpoint.split("://", 1)[-1]
        return pafs.S3FileSystem(endpoint_override=host, scheme=scheme,
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                                 allow_bucket_creation=True)
    return fs


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URIs alike."""
    base = str(base)
    if is_uri(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def relpath(path: str, root: str) -> str:
    path, root = str(path), str(root).rstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return os.path.relpath(path, root)


def _why(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return str(e).splitlines()[0] if str(e) else e.__class__.__name__


def read_bytes(path: str) -> bytes:
    fs, p = _resolve(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except Exception as e:
        raise StorageError(f"{path}: cannot read ({_why(e)})") from None


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically (readers see the old file, nothing, or the new file)."""
    fs, p = _resolve(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(parent, exist_ok=True)
            tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        else:
            with fs.open_output_stream(p) as f:
                f.write(data)
    except Exception as e:
        raise StorageError(f"{path}: cannot write ({_why(e)})") from None


def create_exclusive(path: str, data: bytes) -> bool:
    """Create ``path`` with ``data`` only if it does not exist; False when it already does.

    The one atomic create-if-absent every writer lease and work-id claim rests on.  Local: the full
    file is written under a temporary name and hard-linked into place (``link`` fails if the name
    exists, and a reader never sees a partial file).  S3: a PUT with ``If-None-Match: *`` (the server
    answers 412 when the key exists).  GCS: refused - pyarrow's client has no precondition."""
    fs, p = _resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"{path}: cannot create ({_why(e)})") from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    if str(path).startswith("s3://"):
        return _s3_create_exclusive(str(path), data)
    raise StorageError(f"{path}: atomic create-if-absent is not supported on this filesystem "
                       "(local paths and s3:// only); write the output locally or to s3:// and copy it")


def _s3_create_exclusive(path: str, data: bytes) -> bool:
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, key = path[len("s3://"):].partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    client = boto3.client("s3", endpoint_url=endpoint or None)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        raise StorageError(f"{path}: cannot create ({code or e})") from None


def size(path: str) -> int | None:
    """Bytes in ``path``; None when it does not exist."""
    fs, p = _resolve(path)
    info = fs.get_file_info(p)
    return info.size if info.type == pafs.FileType.File else None


def exists(path: str) -> bool:
    fs, p = _resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = _resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def makedirs(path: str) -> None:
    fs, p = _resolve(path)
    fs.create_dir(p, recursive=True)


def list_names(path: str) -> list[str]:
    """Names (not paths) directly under ``path``; [] when it does not exist."""
    fs, p = _resolve(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except Exception as e:
        raise StorageError(f"{path}: cannot list ({_why(e)})") from None
    return sorted(posixpath.basename(i.path) for i in infos)


def walk(path: str, suffix: str = "") -> Iterator[str]:
    """All files below ``path`` ending in ``suffix``, as paths/URIs in the same form as ``path``, sorted."""
    fs, p = _resolve(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    except Exception as e:
        raise StorageError(f"{path}: cannot list ({_why(e)})") from None
    base = str(path).rstrip("/")
    root = p.rstrip("/")
    rels = sorted(i.path[len(root) + 1:] for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(suffix))
    for rel in rels:
        yield f"{base}/{rel}" if is_uri(base) else os.path.join(base, rel)


def remove(path: str) -> None:
    fs, p = _resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)


def write_parquet(table: pa.Table, path: str) -> None:
    """Serialise in memory, then one atomic write (so a reader never sees half a file)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(path, buf.getvalue())


def read_parquet(path: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(read_bytes(path)))
    except StorageError:
        raise
    except Exception as e:
        raise StorageError(f"{path}: not a readable Parquet file ({_why(e)})") from None


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for libraries that take a filesystem object."""
    return _resolve(path)


def absolute(path: str | None) -> str | None:
    """A local path made absolute against the current directory (URIs unchanged): resolve on the
    driver, since Ray workers run in directories of their own."""
    if path is None or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


def append_text(path: str, text: str) -> None:
    """Append to a small text file (read + rewrite: object stores have no append)."""
    old = read_bytes(path) if exists(path) else b""
    write_bytes(path, old + text.encode())


def upload_dir(local_dir: str, dest: str) -> None:
    """Copy every file under a local directory to ``dest`` (a local path or URI), keeping names."""
    for dirpath, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(dest, *rel.split("/")), f.read())
