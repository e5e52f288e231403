"""Output you can bet a GPU-week on: one writer per OUT, claims, damaged shards redone, bad inputs
recorded, nothing written before the checks pass (one test per case of issue 12's table)."""

import contextlib
import hashlib
import json
import os
import shutil
import threading

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.datasets.cityscapes import discover, gt_paths
from instsynth.errors import SynthError
from instsynth.generators import GeneratorError
from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output import lease
from instsynth.output.commits import claim, commit_unit
from instsynth.output.layout import CLAIMS, marker_path, part_path, plan_path
from instsynth.output.lease import LeaseError
from instsynth.output.ledger import committed_parts, committed_units
from instsynth.output.readers import iter_tables
from instsynth.plan.planner import read_plan
from instsynth.synth.driver import run_synth
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
QUIET = {"log": lambda *a: None}


def _cfg(*sets):
    return load_config(DEBUG, ["run.progress=false", "run.executor=local", *sets])


def _rows(out):
    return pa.concat_tables(list(iter_tables(out))).sort_by("work_id")


def tree(path):
    """{relative path: sha256} of every file under ``path`` (the before/after of a refused command)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@contextlib.contextmanager
def held_by(out, owner):
    """Another (live) run holds OUT's lease for the duration."""
    held = lease.acquire(out, owner)
    try:
        yield held
    finally:
        held.release()


def together(calls):
    """Run ``calls`` (zero-argument functions) at the same time in threads; wait for all."""
    threads = [threading.Thread(target=c) for c in calls]
    [t.start() for t in threads]
    [t.join() for t in threads]


def bypassing_writers(sample_root, out, rpus):
    """Writers that skip the lease (only the work-id claims stand between them)."""
    together([lambda r=r: run_synth(sample_root, out, _cfg(f"run.rows_per_unit={r}"), **QUIET, lease=False)
              for r in rpus])


@pytest.fixture(scope="module")
def reference(sample_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "out")
    run_synth(sample_root, out, _cfg(), **QUIET)
    return out


# -- one writer per output dir ---------------------------------------------------------------------
def test_second_writer_is_refused_naming_the_holder(sample_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    run_synth(sample_root, out, _cfg("run.limit=2"), **QUIET)
    with held_by(out, "first-run"):  # a live run holds OUT
        before = tree(out)
        with pytest.raises(LeaseError, match="being written by run first-run .*pid"):
            run_synth(sample_root, out, _cfg("run.rows_per_unit=3"), **QUIET)
        code = main(["synth", sample_root, "--out", out, "--config", DEBUG, "--set", "run.executor=local"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "first-run" in err and "--force-unlock" in err
        assert tree(out) == before  # refused: nothing written, the holder's lease untouched
    assert not storage.exists(lease.lease_path(out))
    s = run_synth(sample_root, out, _cfg(), **QUIET)  # released: the next run goes ahead
    assert s["pending_items"] == 0 and not storage.exists(lease.lease_path(out))


def test_lease_of_a_dead_owner_is_taken_over_and_force_unlock(tmp_path):
    out = str(tmp_path / "o")
    storage.write_bytes(lease.lease_path(out), json.dumps(
        {"owner": "gone", "host": __import__("socket").gethostname(), "pid": 2**22 + 7, "heartbeat": 0}).encode())
    held = lease.acquire(out, "me")
    assert "gone" in held.took_over and "not running" in held.took_over
    held.release()
    # a live-looking holder elsewhere: refused, unless forced
    storage.write_bytes(lease.lease_path(out), json.dumps(
        {"owner": "remote", "host": "other-host", "pid": 1, "heartbeat": __import__("time").time()}).encode())
    with pytest.raises(LeaseError, match="remote"):
        lease.acquire(out, "me")
    held = lease.acquire(out, "me", force=True)
    assert lease.read_lease(out)["owner"] == "me" and "--force-unlock" in held.took_over
    held.release()


def test_two_concurrent_runs_each_unit_once(sample_root, reference, tmp_path):
    """Same command twice at once: one runs, the other is refused or finds nothing left to do."""
    out = str(tmp_path / "out")
    results, errors = [], []

    def one(rpu):
        try:
            results.append(run_synth(sample_root, out, _cfg(f"run.rows_per_unit={rpu}"), **QUIET))
        except LeaseError as e:
            errors.append(str(e))

    together([lambda: one(2), lambda: one(3)])
    runs = [json.loads(storage.read_bytes(p)) for p in storage.walk(storage.join(out, "_runs"), ".json")]
    planned = read_plan(plan_path(out))[0].num_rows
    assert sum(sum(u["rows"] + u["failures"] for u in r["units"]) for r in runs) == planned  # no unit twice
    assert _rows(out).equals(_rows(reference))


@pytest.mark.parametrize("rpus", [(2, 2), (2, 3)])
def test_writers_bypassing_the_lease_never_commit_a_duplicate(sample_root, reference, tmp_path, rpus, monkeypatch):
    """Both writers plan every unit (neither sees the other's commits at start); the claims decide."""
    from instsynth.synth.executors import local

    out = str(tmp_path / "out")
    run_synth(sample_root, out, _cfg("run.limit=0"), **QUIET)  # plan only
    barrier = threading.Barrier(2)
    real = commit_unit

    def commit(*a, **kw):  # both writers reach their commits together
        try:
            barrier.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        return real(*a, **kw)

    monkeypatch.setattr(local, "commit_unit", commit)
    bypassing_writers(sample_root, out, rpus)
    rows = _rows(out)
    ids = rows.column("work_id").to_pylist()
    assert len(ids) == len(set(ids))  # never a duplicate
    assert rows.equals(_rows(reference))  # and nothing lost
    direct = pq.read_table(storage.join(out, "data")).column("work_id").to_pylist()  # what HF/Ray users read
    assert sorted(direct) == sorted(ids)


def test_lease_and_claims_on_s3(s3):
    out = "s3://bucket/out"
    held = lease.acquire(out, "a")
    with pytest.raises(LeaseError, match="run a"):
        lease.acquire(out, "b")
    held.release()
    assert not storage.exists(lease.lease_path(out))
    assert claim(out, "w1", "writer-a", "u0") and claim(out, "w1", "writer-a", "u0")  # own retry
    assert not claim(out, "w1", "writer-b", "u0")
    assert storage.create_exclusive(f"{out}/x", b"1") and not storage.create_exclusive(f"{out}/x", b"2")
    assert storage.read_bytes(f"{out}/x") == b"1"


def test_gcs_output_is_refused_in_one_line(tmp_path):
    with pytest.raises(storage.StorageError, match="atomic create-if-absent is not supported"):
        storage.create_exclusive("gs://bucket/out/_lease.json", b"{}")


# -- integrity -------------------------------------------------------------------------------------
def _copy(src, tmp_path, name="out"):
    out = str(tmp_path / name)
    shutil.copytree(src, out)
    return out


def test_truncated_shards_are_listed_and_redone(sample_root, reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    parts = sorted(os.listdir(os.path.join(out, "data")))
    for p in parts[:2]:
        path = os.path.join(out, "data", p)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    assert main(["status", out]) == 2
    text = capsys.readouterr().out
    assert all(p in text for p in parts[:2]) and "2 damaged files" in text  # every bad one, no stop at the first
    assert main(["status", out, "--verify"]) == 2
    s = run_synth(sample_root, out, _cfg(), **QUIET)
    assert s["pending_items"] == 0 and not s["damaged_units"]
    assert _rows(out).equals(_rows(reference))  # byte-identical to an uninterrupted run
    assert main(["status", out, "--verify"]) == 0


def test_same_size_corruption_needs_repair_and_repair_redoes_only_that(sample_root, reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    path = os.path.join(out, "data", sorted(os.listdir(os.path.join(out, "data")))[0])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the hash sees it
    open(path, "wb").write(bytes(data))
    assert main(["status", out, "--verify"]) == 2
    assert "SHA-256" in capsys.readouterr().out
    logs = []
    s = run_synth(sample_root, out, _cfg(), repair=True, log=logs.append)
    assert any("re-queued unit" in m for m in logs) and any("1 units to run" in m for m in logs)
    assert _rows(out).equals(_rows(reference)) and s["pending_items"] == 0


def test_uncommitted_part_files_are_removed(sample_root, reference, tmp_path):
    out = _copy(reference, tmp_path)
    unit = sorted(committed_units(out))[0]
    os.remove(marker_path(out, unit))  # crash between data and marker
    open(os.path.join(out, "data", "part-99999999.parquet.tmp-1234abcd"), "wb").write(b"half")
    run_synth(sample_root, out, _cfg("run.rows_per_unit=3"), **QUIET)
    direct = pq.read_table(os.path.join(out, "data")).column("work_id").to_pylist()
    assert len(direct) == len(set(direct)) == _rows(reference).num_rows  # reading data/*.parquet directly
    assert _rows(out).equals(_rows(reference))
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in os.listdir(os.path.join(out, "data")))


def test_summary_never_negative_and_card_from_verified_counts(sample_root, reference, tmp_path):
    from instsynth.synth.driver import summarize

    out = _copy(reference, tmp_path)
    plan = read_plan(plan_path(out))[0].to_pylist()
    part = part_path(out, sorted(committed_units(out))[0])
    os.remove(part)
    s = summarize(out, plan, None, _cfg())
    assert s["pending_items"] > 0 and s["damaged_units"] and not s["ok"]
    assert s["committed_rows"] == _rows(reference).num_rows - s["pending_items"]


# -- inputs ----------------------------------------------------------------------------------------
def test_eight_bit_map_and_orphans_are_recorded(sample_root, tmp_path):
    root = str(tmp_path / "root")
    shutil.copytree(sample_root, root)
    recs = list(discover(root, "train"))
    eight, no_map, no_image = recs[0], recs[1], recs[2]
    ids = cv2.imread(storage.join(root, eight.labels), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(storage.join(root, eight.labels), (ids % 256).astype(np.uint8))
    os.remove(storage.join(root, no_map.labels))
    os.remove(storage.join(root, no_image.image))
    out = str(tmp_path / "out")
    run_synth(root, out, _cfg(), **QUIET)
    fails = {f["image_id"]: f for f in read_parquet(storage.join(out, "plan.failures.parquet")).to_pylist()}
    assert set(fails) == {eight.image_id, no_map.image_id, no_image.image_id}
    assert "8-bit" in fails[eight.image_id]["reason"] and eight.labels in fails[eight.image_id]["reason"]
    assert "without its gtFine instance map" in fails[no_map.image_id]["reason"]
    assert "without its image" in fails[no_image.image_id]["reason"]
    assert fails[no_image.image_id]["file"] == gt_paths("train", no_image.group, no_image.image_id)["instance_ids"]
    meta = json.loads(read_plan(plan_path(out))[0].schema.metadata[b"instsynth.summary"])
    assert meta["images_without_map"] == 1 and meta["maps_without_image"] == 1 and meta["failures"] == 3


# -- checks before writes --------------------------------------------------------------------------
def test_out_inside_the_input_tree_writes_nothing(sample_root, tmp_path, capsys):
    root = str(tmp_path / "root")
    shutil.copytree(sample_root, root)
    before = tree(root)
    with pytest.raises(SynthError, match="inside the input tree"):
        run_synth(root, os.path.join(root, "gen", "out"), _cfg(), **QUIET)
    assert main(["synth", root, "--out", os.path.join(root, "out"), "--config", DEBUG]) == 2
    assert tree(root) == before and not os.path.exists(os.path.join(root, "gen"))


def test_bad_generator_params_write_nothing(sample_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    with pytest.raises(GeneratorError, match="bogus"):
        run_synth(sample_root, out, _cfg("generator.name=sdxl-inpaint", "generator.params.model=/nonexistent",
                                         "generator.params.bogus=1"), **QUIET)
    assert not os.path.exists(out)
    assert main(["synth", sample_root, "--out", out, "--config", DEBUG, "--generator", "recolor",
                 "--set", "generator.params.bogus=1", "--set", "run.executor=local"]) == 2
    assert "bogus" in capsys.readouterr().err and not os.path.exists(out)
    # the corrected command is not refused for a config it never wrote
    assert main(["synth", sample_root, "--out", out, "--config", DEBUG, "--generator", "recolor",
                 "--set", "run.executor=local", "--set", "run.progress=false"]) == 0
    existing = tree(out)
    assert main(["synth", sample_root, "--out", out, "--config", DEBUG, "--generator", "recolor",
                 "--set", "generator.params.bogus=1"]) == 2
    assert tree(out) == existing


def test_compare_with_an_unreachable_root_writes_nothing(sample_root, tmp_path, capsys):
    root = str(tmp_path / "root")
    shutil.copytree(sample_root, root)
    out = str(tmp_path / "out")
    run_synth(root, out, _cfg("run.limit=2"), **QUIET)
    shutil.rmtree(root)
    before = tree(out)
    assert main(["preview", out, "--compare"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and root in err and "not reachable" in err
    assert tree(out) == before


def test_on_s3_refused_writer_bypassing_writers_and_repair(s3, sample_root, reference, capsys):
    """The same guarantees on the S3 server: lease by conditional PUT, claims, verify, repair."""
    out = "s3://bucket/integrity"
    run_synth(sample_root, out, _cfg("run.limit=0"), **QUIET)  # plan only
    bypassing_writers(sample_root, out, (2, 3))
    ids = _rows(out).column("work_id").to_pylist()
    assert len(ids) == len(set(ids)) and _rows(out).equals(_rows(reference))
    with held_by(out, "other-run"), pytest.raises(LeaseError, match="other-run"):
        run_synth(sample_root, out, _cfg(), **QUIET)
    part = committed_parts(out)[0]
    data = storage.read_bytes(part)
    storage.write_bytes(part, data[: len(data) // 3])
    assert main(["status", out]) == 2 and part in capsys.readouterr().out
    s = run_synth(sample_root, out, _cfg(), **QUIET)
    assert s["pending_items"] == 0 and _rows(out).equals(_rows(reference))
    assert main(["status", out, "--verify"]) == 0


def test_originals_share_the_lease_and_claims(sample_root, tmp_path):
    from instsynth.synth.originals import write_originals

    out = str(tmp_path / "orig")
    with held_by(out, "synth-run"), pytest.raises(LeaseError, match="synth-run"):
        write_originals(sample_root, out, _cfg(), **QUIET)
    s = write_originals(sample_root, out, _cfg("run.rows_per_unit=2"), **QUIET)
    again = write_originals(sample_root, out, _cfg("run.rows_per_unit=3"), **QUIET)
    assert s == again and s["rows"] == len(os.listdir(os.path.join(out, CLAIMS)))
    import datasets  # the originals dir opens in one line too

    ds = datasets.load_dataset(out, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == s["rows"] and set(ds["generator"]) == {"original"} and ds[0]["image"].size[0] > 0
    with pytest.raises(SynthError, match="inside the input tree"):
        write_originals(sample_root, os.path.join(sample_root, "orig"), _cfg(), **QUIET)
    assert not os.path.exists(os.path.join(sample_root, "orig"))
