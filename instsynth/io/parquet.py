"""Parquet through ``storage``: whole small files in one read, and projected reads that fetch only a
file's footer and the column chunks asked for (a training sample's image from a large part costs two
ranged GETs, not the part).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from instsynth.errors import StorageError, why
from instsynth.io.storage import read_bytes, read_range, read_tail, write_bytes


class SparseFile(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only some ranges were fetched: what pyarrow reads
    a Parquet footer and a few column chunks from, so a projected read costs those bytes only."""

    def __init__(self, size: int, pieces: list[tuple[int, bytes]], name: str = ""):
        self.size_, self.pieces, self.name_, self.pos = size, sorted(pieces), name, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        self.pos = offset if whence == 0 else (self.pos + offset if whence == 1 else self.size_ + offset)
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        n = min(len(b), self.size_ - self.pos)
        for start, data in self.pieces:
            if start <= self.pos and self.pos + n <= start + len(data):
                b[:n] = data[self.pos - start:self.pos - start + n]
                self.pos += n
                return n
        raise OSError(f"{self.name_}: bytes {self.pos}-{self.pos + n} were not fetched")


#: bytes fetched with the footer of a Parquet file (most footers fit; a larger one costs one more GET)
TAIL_BYTES = 64 * 1024
#: two column chunks closer than this are fetched in one ranged GET
MERGE_GAP = 64 * 1024


def parquet_ranges(meta, columns: list[str] | None, row_groups: list[int] | None = None) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the column chunks of ``columns`` in ``row_groups``, merged."""
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    want = [i for i, n in enumerate(names) if columns is None or n in columns]
    spans = []
    for g in (range(meta.num_row_groups) if row_groups is None else row_groups):
        rg = meta.row_group(g)
        for i in want:
            c = rg.column(i)
            start = c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset
            spans.append((start, start + c.total_compressed_size))
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and s - merged[-1][1] <= MERGE_GAP:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def parquet_footer(path: str) -> tuple[object, int, list[tuple[int, bytes]]]:
    """(pyarrow FileMetaData, file size, fetched pieces) from one GET (two for a large footer)."""
    tail, total = read_tail(path, TAIL_BYTES)
    pieces = [(total - len(tail), tail)]
    flen = int.from_bytes(tail[-8:-4], "little") if len(tail) >= 8 else 0
    if len(tail) < total and flen + 8 > len(tail):
        pieces.append((total - flen - 8, read_range(path, total - flen - 8, flen + 8)))
    try:
        meta = pq.ParquetFile(SparseFile(total, pieces, str(path))).metadata
    except Exception as e:
        raise StorageError(f"{path}: not a readable Parquet file ({why(e)})") from None
    return meta, total, pieces


def read_parquet_columns(path: str, columns: list[str], row_groups: list[int] | None = None,
                         footer=None) -> pa.Table:
    """``columns`` (of ``row_groups``) of a Parquet file, fetching the footer and those column chunks
    only: one GET for the tail (the whole of a small file) plus one per merged range, no HEAD."""
    meta, total, pieces = footer or parquet_footer(path)
    if pieces[0][0] > 0:
        for s, e in parquet_ranges(meta, columns, row_groups):
            if not any(ps <= s and e <= ps + len(d) for ps, d in pieces):
                pieces = pieces + [(s, read_range(path, s, e - s))]
    try:
        pf = pq.ParquetFile(SparseFile(total, pieces, str(path)), metadata=meta)
        return pf.read_row_groups(row_groups, columns=columns) if row_groups is not None else pf.read(columns=columns)
    except Exception as e:
        raise StorageError(f"{path}: not a readable Parquet file ({why(e)})") from None


def write_parquet(table: pa.Table, path: str) -> None:
    """Serialise in memory, then one atomic write (so a reader never sees half a file)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(path, buf.getvalue())


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """A whole small Parquet file in one read; with ``columns``, only those column chunks are fetched
    (footer + ranged reads), for large files of which a few columns are needed."""
    if columns is not None:
        return read_parquet_columns(path, columns)
    try:
        return pq.read_table(io.BytesIO(read_bytes(path)))
    except StorageError:
        raise
    except Exception as e:
        raise StorageError(f"{path}: not a readable Parquet file ({why(e)})") from None


