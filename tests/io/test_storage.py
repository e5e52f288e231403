"""``instsynth.io``: the same calls on a local disk and on S3 (the local moto server), atomic writes and
creates, and projected Parquet reads that fetch only what they read."""

import os

import pyarrow as pa
import pytest

from instsynth.io import s3, storage
from instsynth.io.parquet import parquet_footer, read_parquet, read_parquet_columns, write_parquet


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("s3_server")
    return "s3://bucket/root"


def test_write_read_list_remove_on_both(root):
    a, b = storage.join(root, "d", "a.bin"), storage.join(root, "d", "b.bin")
    storage.write_bytes(a, b"hello world")
    storage.write_bytes(b, b"x" * 5)
    assert storage.read_bytes(a) == b"hello world" and storage.read_range(a, 6, 5) == b"world"
    assert storage.read_tail(a, 5) == (b"world", 11) and storage.read_range(a, -5, 5) == b"world"
    assert storage.list_sizes(storage.join(root, "d")) == {"a.bin": 11, "b.bin": 5}
    assert storage.is_dir(storage.join(root, "d")) and storage.exists(a) and storage.size(b) == 5
    assert list(storage.walk(root, ".bin")) == [a, b]
    assert storage.create_exclusive(storage.join(root, "lock"), b"1") is True
    assert storage.create_exclusive(storage.join(root, "lock"), b"2") is False  # the first create wins
    assert storage.read_bytes(storage.join(root, "lock")) == b"1"
    storage.remove_tree(storage.join(root, "d"))
    assert storage.list_sizes(storage.join(root, "d")) == {} and not storage.exists(a)
    with pytest.raises(storage.StorageError, match=r"a\.bin: cannot read \(no such file\)"):
        storage.read_bytes(a)


def test_local_writes_leave_no_temp_files(tmp_path):
    p = str(tmp_path / "x" / "f.bin")
    storage.write_bytes(p, b"1")
    with storage.open_output(str(tmp_path / "x" / "big.bin")) as f:
        f.write(b"2" * 10)
    assert storage.create_exclusive(p, b"3") is False
    with pytest.raises(RuntimeError), storage.open_output(str(tmp_path / "x" / "bad.bin")) as f:
        f.write(b"half")
        raise RuntimeError("the writer died")
    assert sorted(os.listdir(tmp_path / "x")) == ["big.bin", "f.bin"]  # no temp file, no half file


def test_projected_parquet_reads_fetch_only_their_columns(s3_server):
    path = "s3://bucket/t.parquet"
    big = pa.table({"k": list(range(200)), "blob": [os.urandom(2000) for _ in range(200)]})
    write_parquet(big, path)
    assert read_parquet(path).equals(big)
    s3_server.reset()
    meta, total, pieces = parquet_footer(path)
    got = read_parquet_columns(path, ["k"], footer=(meta, total, pieces))
    assert got.column("k").to_pylist() == list(range(200))
    fetched = sum(r[2] for r in s3_server.snapshot())
    assert fetched < total / 4  # the footer and one small column, not the 400 KB of blobs
    assert s3.is_s3(path) and s3.split(path) == ("bucket", "t.parquet")
