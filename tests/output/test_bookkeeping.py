"""Bookkeeping that scales (issue 17), on the local S3 server that counts every request: the driver
never re-reads data, each marker is fetched once, ``--verify`` reads each part once, old markers
still work, and the consolidated export holds exactly the committed rows."""

import json
import os

import pyarrow as pa
import pytest

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.io import storage
from instsynth.output.card import write_card
from instsynth.output.layout import LEDGER, LEDGER_MAX_FILES, marker_path
from instsynth.output.ledger import Ledger, committed_parts, committed_units
from instsynth.output.readers import iter_tables
from instsynth.output.verify import verify
from instsynth.synth.driver import run_synth
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
QUIET = {"log": lambda *a: None}


def _cfg(*sets):
    return load_config(DEBUG, ["run.progress=false", "run.executor=local", *sets])


def _rows(out, columns=None):
    return pa.concat_tables(list(iter_tables(out, columns))).sort_by("work_id")


def _card(out):
    import yaml

    text = storage.read_bytes(storage.join(out, "README.md")).decode()
    return yaml.safe_load(text.split("---\n")[1]), text


def _classes_from_parts(out):
    from collections import Counter

    return Counter(_rows(out, ["work_id", "class_name"]).column("class_name").to_pylist())


def _card_matches(out):
    """The card's data_files resolve to exactly the committed parts, and its class table is right."""
    meta, text = _card(out)
    files = meta["configs"][0]["data_files"][0]["path"]
    listed = set(storage.list_names(storage.join(out, "data")))
    committed = {os.path.basename(p) for p in committed_parts(out)}
    if files == ["data/part-*.parquet"]:
        assert listed == committed
    else:
        assert {f.split("/", 1)[1] for f in files} == committed
    for c, n in _classes_from_parts(out).items():
        assert f"| {c} | {n} |" in text


@pytest.fixture
def s3_out(s3_server, sample_root):
    out = "s3://bucket/book"
    run_synth(sample_root, out, _cfg(), **QUIET)
    s3_server.reset()
    return out


def test_fresh_run_requests_grow_with_the_work(s3_server, sample_root):
    out = "s3://bucket/fresh"
    s = run_synth(sample_root, out, _cfg(), **QUIET)
    n, units = s["committed_rows"] + s["failed_items"], s["units"]
    got = s3_server.snapshot()
    assert s3_server.count("GET", "data") == 0  # nothing written is read back
    assert len(got) <= n + 4 * units + 60, s3_server.table()
    assert s3_server.count("POST multipart") == 0  # small writes are one PUT each
    assert s3_server.count("HEAD", "_claims") == 0 and s3_server.count("HEAD", "data") == 0
    _card_matches(out)


def test_noop_resume_reads_no_data_and_starts_no_ray(s3_server, s3_out, sample_root, monkeypatch):
    import instsynth.synth.executors.ray as ray_exec

    def no_ray(*a, **k):
        raise AssertionError("a no-op resume must not start Ray")
    monkeypatch.setattr(ray_exec, "init_ray", no_ray)
    assert committed_units(s3_out)
    s3_server.reset()
    s = run_synth(sample_root, s3_out, _cfg("run.executor=ray"), **QUIET)
    assert s["pending_items"] == 0
    assert s3_server.count(None, "data") == s3_server.count("LIST", "data")  # listed, never read
    assert s3_server.bytes_sent("data") == 0
    assert s3_server.count("GET", "_commits") == 0  # the ledger index holds every marker
    assert 1 <= s3_server.count("GET", "_ledger") <= LEDGER_MAX_FILES + 1
    assert len(s3_server.snapshot()) <= 60, s3_server.table()  # no request per unit at all
    _card_matches(s3_out)


def test_ledger_index_never_vouches_for_a_marker_it_does_not_match(s3_server, s3_out, sample_root):
    """The LIST of ``_commits/`` is the truth: index entries count only for listed markers of the same
    size; without the index every marker is fetched once (and indexed again); a repair that replaces
    markers drops the index first."""
    ref = _rows(s3_out)
    markers = committed_units(s3_out)
    index = storage.list_names(storage.join(s3_out, LEDGER))
    assert index and all(n.endswith(".parquet") for n in index)
    storage.remove_tree(storage.join(s3_out, LEDGER))  # lost index: fall back to GETs, then re-index
    s3_server.reset()
    s = run_synth(sample_root, s3_out, _cfg(), **QUIET)
    assert s["pending_items"] == 0 and s3_server.count("GET", "_commits") == len(markers)
    assert storage.list_names(storage.join(s3_out, LEDGER))
    s3_server.reset()
    ledger = Ledger(s3_out)
    ledger.scan()
    assert ledger.fetched == 0 and ledger.markers == markers
    # a damaged index file is only a missed shortcut
    name = storage.list_names(storage.join(s3_out, LEDGER))[0]
    storage.write_bytes(storage.join(s3_out, LEDGER, name), b"not parquet")
    ledger = Ledger(s3_out)
    ledger.scan()
    assert ledger.markers == markers and ledger.fetched == len(markers)
    # repair replaces a marker: the stale index copy must never be served afterwards
    part = committed_parts(s3_out)[0]
    data = bytearray(storage.read_bytes(part))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(part, bytes(data))
    before = set(storage.list_names(storage.join(s3_out, LEDGER)))
    run_synth(sample_root, s3_out, _cfg(), repair=True, **QUIET)
    after = set(storage.list_names(storage.join(s3_out, LEDGER)))
    assert after and not before & after  # every index file that held the old marker is gone
    assert committed_units(s3_out) == markers  # the redo is byte-identical, markers too
    assert _rows(s3_out).equals(ref)
    assert not verify(s3_out)


def test_card_from_markers_only_after_damage_and_repair(s3_server, s3_out, sample_root, capsys):
    ref = _rows(s3_out)
    part = committed_parts(s3_out)[0]
    storage.write_bytes(part, storage.read_bytes(part)[:100])  # truncated
    s3_server.reset()
    summary = {"committed_rows": 0, "planned": 0, "failed_items": 0, "pending_items": 0,
               "damaged_units": sorted(verify(s3_out, full=False))}
    write_card(s3_out, _cfg(), summary)
    assert s3_server.count("GET", "data") == 0
    meta, _ = _card(s3_out)
    assert f"data/{os.path.basename(part)}" not in meta["configs"][0]["data_files"][0]["path"]
    s3_server.reset()
    s = run_synth(sample_root, s3_out, _cfg(), **QUIET)  # re-queues the damaged unit by its size
    assert s["pending_items"] == 0 and not s["damaged_units"] and s3_server.count("GET", "data") == 0
    assert _rows(s3_out).equals(ref)
    _card_matches(s3_out)
    # same-size damage: only --repair (one read of each part) finds it
    part = committed_parts(s3_out)[1]
    data = bytearray(storage.read_bytes(part))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(part, bytes(data))
    parts = len(committed_parts(s3_out))
    s3_server.reset()
    s = run_synth(sample_root, s3_out, _cfg(), repair=True, **QUIET)
    assert s3_server.count("GET", "data") == parts  # hashed once each, never scanned again
    assert _rows(s3_out).equals(ref)
    _card_matches(s3_out)


def test_verify_reads_each_part_once(s3_server, s3_out, capsys):
    parts = committed_parts(s3_out)
    total = sum(storage.size(p) for p in parts)
    s3_server.reset()
    assert main(["status", s3_out, "--verify"]) == 0
    assert "0 bad rows" in capsys.readouterr().out
    assert s3_server.count("GET", "data") == len(parts)
    assert s3_server.count("HEAD", "data") == 0
    assert total <= s3_server.bytes_sent("data") <= 1.05 * total


def test_old_format_markers_still_work_and_are_not_rewritten(s3_server, s3_out, sample_root):
    ref_classes = _classes_from_parts(s3_out)
    old = {}
    for u, m in committed_units(s3_out).items():
        m = {k: v for k, v in m.items() if k not in ("stats", "v")}  # what markers held before issue 17
        old[u] = json.dumps(m).encode()
        storage.write_bytes(marker_path(s3_out, u), old[u])
    s3_server.reset()
    s = run_synth(sample_root, s3_out, _cfg(), **QUIET)
    assert s["pending_items"] == 0 and s["committed_rows"] == sum(ref_classes.values())
    with_rows = sum(1 for m in committed_units(s3_out).values() if m["rows"])
    assert s3_server.count("GET", "data") <= 3 * with_rows  # each old part once: footer + column chunks
    assert s3_server.count("HEAD", "data") == 0
    assert {u: storage.read_bytes(marker_path(s3_out, u)) for u in old} == old
    _card_matches(s3_out)


def test_lease_bypassing_writers_leave_a_correct_card(s3_server, sample_root):
    from tests.output.test_integrity import bypassing_writers

    out = "s3://bucket/bypass"
    run_synth(sample_root, out, _cfg("run.limit=0"), **QUIET)
    bypassing_writers(sample_root, out, (2, 3))
    _card_matches(out)
    ids = _rows(out, ["work_id"]).column("work_id").to_pylist()
    assert len(ids) == len(set(ids))


def test_consolidated_export_loads_with_exactly_the_committed_rows(sample_root, tmp_path, capsys):
    import datasets

    out = str(tmp_path / "out")
    run_synth(sample_root, out, _cfg(), **QUIET)
    dest = str(tmp_path / "pub")
    assert main(["export", out, "--format", "parquet", "--out", dest, "--shard-size", "200kB"]) == 0
    files = sorted(os.listdir(os.path.join(dest, "data")))
    assert 1 < len(files) < len(committed_parts(out))
    ds = datasets.load_dataset(dest, split="train", cache_dir=str(tmp_path / "hf"))
    ref = _rows(out)
    assert sorted(ds["work_id"]) == ref.column("work_id").to_pylist()
    first = ref.slice(0, 1).to_pylist()[0]
    row = ds[ds["work_id"].index(first["work_id"])]
    import numpy as np

    from instsynth.datasets import decode_index
    assert (np.array(row["labels"]) == decode_index(first["labels"], "ref")).all() and row["regions"] == first["regions"]
    meta, text = _card(dest)
    assert meta["configs"][0]["data_files"][0]["path"] == ["data/train-*.parquet"]
    assert main(["export", out, "--format", "parquet", "--out", dest]) == 2  # refused: writes nothing
    assert sorted(os.listdir(os.path.join(dest, "data"))) == files
    assert main(["export", out, "--format", "parquet", "--out", str(tmp_path / "x"), "--shard-size", "lots"]) == 2
    assert "--shard-size" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")
