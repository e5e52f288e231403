"""The only module that touches files: local paths and ``s3://`` / ``gs://`` URIs alike.

Why: a dataset root, a plan and an output dir may live on a laptop disk or in a bucket; every
other module calls these few functions and never learns which.  Backed by pyarrow filesystems
(``FileSystem.from_uri``), which speak local, S3 and GCS with one API.

Writes are all-or-nothing per file (local: temp file + rename; object stores: one PUT), and a
unit of output is committed by writing its data first and a marker second.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

from instsynth.errors import StorageError, why  # noqa: F401 - StorageError: raised here, importable from here
from instsynth.io import s3
from instsynth.io.s3 import PARALLEL


def is_uri(path: str) -> bool:
    return "://" in str(path)


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it); the filesystem is made once per process and endpoint."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    if path.startswith("file://"):
        return pafs.LocalFileSystem(), path[len("file://"):]
    scheme, rest = path.split("://", 1)
    key = ("pyarrow", scheme, s3.endpoint() if scheme == "s3" else None, rest.split("/", 1)[0],
           os.environ.get("AWS_ACCESS_KEY_ID", ""))
    try:
        fs = s3.cached(key, lambda: _with_endpoint(pafs.FileSystem.from_uri(path)[0], path))
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with long texts
        raise StorageError(f"{path}: cannot open filesystem ({str(e).splitlines()[0]})") from None
    return fs, rest.rstrip("/")


def _with_endpoint(fs: pafs.FileSystem, path: str) -> pafs.FileSystem:
    """Honour ``AWS_ENDPOINT_URL`` for S3-compatible servers (MinIO, moto, Ceph, R2)."""
    endpoint = s3.endpoint()
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


def read_bytes(path: str) -> bytes:
    """The whole file; on S3 one GET (no HEAD, no ranged reads)."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        return s3.get(path, Bucket=bucket, Key=key)["Body"].read()
    fs, p = _resolve(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except Exception as e:
        raise StorageError(f"{path}: cannot read ({why(e)})") from None


def read_range(path: str, start: int, length: int) -> bytes:
    """``length`` bytes from ``start`` (a negative ``start``: the last ``-start`` bytes); one ranged GET."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        rng = f"bytes=-{-start}" if start < 0 else f"bytes={start}-{start + length - 1}"
        return s3.get(path, Bucket=bucket, Key=key, Range=rng)["Body"].read()
    fs, p = _resolve(path)
    try:
        with fs.open_input_file(p) as f:
            if start < 0:
                start = max(0, f.size() + start)
            return f.read_at(length, start)
    except Exception as e:
        raise StorageError(f"{path}: cannot read ({why(e)})") from None


def read_tail(path: str, n: int) -> tuple[bytes, int]:
    """(the last ``n`` bytes - the whole file if it is smaller -, the file's size): one request."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        r = s3.get(path, Bucket=bucket, Key=key, Range=f"bytes=-{n}")
        data = r["Body"].read()
        total = r.get("ContentRange", "").rpartition("/")[2]
        return data, int(total) if total.isdigit() else len(data)
    fs, p = _resolve(path)
    try:
        with fs.open_input_file(p) as f:
            total = f.size()
            return f.read_at(min(n, total), max(0, total - n)), total
    except Exception as e:
        raise StorageError(f"{path}: cannot read ({why(e)})") from None


def read_many(paths: list[str], workers: int = PARALLEL) -> list[bytes | None]:
    """Read many small files with ``workers`` requests in flight; None for a file that is gone
    (listed, then removed by another writer before it was read)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        try:
            return read_bytes(p)
        except StorageError as e:
            if "no such file" in str(e):
                return None
            raise
    if len(paths) <= 1 or not is_uri(paths[0]):  # local reads gain nothing from threads
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        return list(pool.map(one, paths))


@contextlib.contextmanager
def _local_temp(p: str):
    """A temporary name beside local path ``p`` (its folder made), removed on the way out whatever happens:
    every local write goes through one (then ``replace`` or ``link``), so a reader never sees half a file."""
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically (readers see the old file, nothing, or the new file); on S3 one PUT."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        try:
            s3.client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as e:
            raise StorageError(f"{path}: cannot write ({s3.error_code(e) or why(e)})") from None
        return
    fs, p = _resolve(path)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with _local_temp(p) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, p)
        else:
            with fs.open_output_stream(p) as f:
                f.write(data)
    except Exception as e:
        raise StorageError(f"{path}: cannot write ({why(e)})") from None


@contextlib.contextmanager
def open_output(path: str):
    """A writable binary stream for a large file, visible only once closed without error (local:
    temp file + rename; object stores: a multipart upload, completed on close)."""
    fs, p = _resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        with _local_temp(p) as tmp:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:
        yield f


def create_exclusive(path: str, data: bytes) -> bool:
    """Create ``path`` with ``data`` only if it does not exist; False when it already does.

    The one atomic create-if-absent every writer lease and work-id claim rests on.  Local: the full
    file is written under a temporary name and hard-linked into place (``link`` fails if the name
    exists, and a reader never sees a partial file).  S3: a PUT with ``If-None-Match: *`` (the server
    answers 412 when the key exists).  GCS: refused - pyarrow's client has no precondition."""
    if s3.is_s3(path):
        return s3.create_exclusive(str(path), data)
    fs, p = _resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            with _local_temp(p) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"{path}: cannot create ({why(e)})") from None
    raise StorageError(f"{path}: atomic create-if-absent is not supported on this filesystem "
                       "(local paths and s3:// only); write the output locally or to s3:// and copy it")


def size(path: str) -> int | None:
    """Bytes in ``path``; None when it does not exist."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        try:
            return int(s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception as e:
            if s3.is_missing(e):
                return None
            raise StorageError(f"{path}: cannot stat ({s3.error_code(e) or why(e)})") from None
    fs, p = _resolve(path)
    info = fs.get_file_info(p)
    return info.size if info.type == pafs.FileType.File else None


def exists(path: str) -> bool:
    if s3.is_s3(path):
        return size(path) is not None or is_dir(path)
    fs, p = _resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    """A directory (local), or a prefix with at least one object under it (object stores)."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        try:
            return s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0) > 0
        except Exception as e:
            if s3.error_code(e) == "NoSuchBucket":
                return False
            raise StorageError(f"{path}: cannot list ({s3.error_code(e) or why(e)})") from None
    fs, p = _resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def makedirs(path: str) -> None:
    if s3.is_s3(path):
        return  # prefixes need no folder objects
    fs, p = _resolve(path)
    fs.create_dir(p, recursive=True)


def list_sizes(path: str) -> dict[str, int | None]:
    """{name: bytes} of what lies directly under ``path`` (None for a sub-directory); {} when it does
    not exist.  On S3 one LIST per 1,000 names - the cheap way to check many files' sizes."""
    if s3.is_s3(path):
        return dict(sorted(s3.list_keys(path, delimiter=True)))
    fs, p = _resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            with os.scandir(p) as it:
                return dict(sorted((e.name, None if e.is_dir() else e.stat().st_size) for e in it))
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StorageError(f"{path}: cannot list ({why(e)})") from None
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except Exception as e:
        raise StorageError(f"{path}: cannot list ({why(e)})") from None
    return dict(sorted((posixpath.basename(i.path), i.size if i.type == pafs.FileType.File else None)
                       for i in infos))


def list_names(path: str) -> list[str]:
    """Names (not paths) directly under ``path``; [] when it does not exist."""
    return list(list_sizes(path))


def walk(path: str, suffix: str = "") -> Iterator[str]:
    """All files below ``path`` ending in ``suffix``, as paths/URIs in the same form as ``path``, sorted."""
    base = str(path).rstrip("/")
    if s3.is_s3(path):
        rels = sorted(k for k, n in s3.list_keys(path, delimiter=False) if n is not None and k.endswith(suffix))
        for rel in rels:
            yield f"{base}/{rel}"
        return
    fs, p = _resolve(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    except Exception as e:
        raise StorageError(f"{path}: cannot list ({why(e)})") from None
    root = p.rstrip("/")
    rels = sorted(i.path[len(root) + 1:] for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(suffix))
    for rel in rels:
        yield f"{base}/{rel}" if is_uri(base) else os.path.join(base, rel)


def remove(path: str) -> None:
    """Delete a file if it exists (local: a directory too).  On S3 one DELETE: no HEAD first and no
    folder object re-created behind it.  Directories on object stores: ``remove_tree``."""
    if s3.is_s3(path):
        bucket, key = s3.split(path)
        try:
            s3.client().delete_object(Bucket=bucket, Key=key)
        except Exception as e:
            if not s3.is_missing(e):
                raise StorageError(f"{path}: cannot remove ({s3.error_code(e) or why(e)})") from None
        return
    fs, p = _resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)


def remove_many(paths: list[str]) -> None:
    """Delete many files; on S3 one request per 1,000 keys of a bucket."""
    on_s3 = [p for p in paths if s3.is_s3(p)]
    for p in paths:
        if not s3.is_s3(p):
            remove(p)
    by_bucket: dict[str, list[str]] = {}
    for p in on_s3:
        b, k = s3.split(p)
        by_bucket.setdefault(b, []).append(k)
    for bucket, keys in by_bucket.items():
        for i in range(0, len(keys), 1000):
            try:
                s3.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                                   "Quiet": True})
            except Exception as e:
                raise StorageError(f"s3://{bucket}/{keys[i]}: cannot remove ({s3.error_code(e) or why(e)})") from None


def remove_tree(path: str) -> None:
    """Delete a file or everything under a directory / prefix."""
    if s3.is_s3(path):
        remove_many([str(path)] + [join(path, k) for k, n in s3.list_keys(path, delimiter=False) if n is not None])
        return
    fs, p = _resolve(path)
    if isinstance(fs, pafs.LocalFileSystem) and os.path.isdir(p):
        shutil.rmtree(p)
    else:
        remove(path)


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
    """Append to a text file: locally an append; on object stores (no append) read + rewrite, so keep
    those files small."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
        return
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
