"""The main job on a local Ray over the sample: counts, schema, provenance, resume, damage, readers."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from instsynth.cli import main
from instsynth.config import ConfigError, load_config
from instsynth.datasets import DatasetSpec, decode_image, decode_index
from instsynth.datasets.cityscapes import discover
from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output.layout import plan_path
from instsynth.output.ledger import committed_parts, committed_units
from instsynth.output.readers import iter_tables, read_failures
from instsynth.output.schema import ROW_SCHEMA
from instsynth.plan.planner import read_plan
from instsynth.synth.driver import run_synth
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")


def _cfg(*sets):
    return load_config(DEBUG, ["run.progress=false", *sets])


def _rows(out):
    t = pa.concat_tables(list(iter_tables(out)))
    return t.sort_by("work_id")


@pytest.fixture(scope="module")
def recolor_out(ray_local, sample_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth") / "recolor")
    summary = run_synth(sample_root, out, _cfg("generator.name=recolor"), log=lambda *a: None)
    return out, summary


def test_rows_schema_provenance(recolor_out, sample_root):
    out, summary = recolor_out
    plan, root = read_plan(plan_path(out))
    rows = _rows(out)
    assert root == sample_root
    assert rows.schema.equals(ROW_SCHEMA, check_metadata=False)
    assert rows.num_rows + summary["failed_items"] == plan.num_rows > 0  # committed = plan - failed
    assert summary["failed_items"] == 0 and summary["ok"]
    assert sorted(rows.column("work_id").to_pylist()) == sorted(plan.column("work_id").to_pylist())
    for r in rows.to_pylist():
        img = decode_image(r["image"], "image")
        ids = decode_index(r["labels"], "ids")
        assert img.shape[:2] == ids.shape == (r["height"], r["width"])
        assert abs(r["width"] - 2 * r["height"]) <= 1
        x0, y0, x1, y1 = r["bbox"]
        k = r["instance_index"]
        assert k and (ids[y0:y1, x0:x1] == k).any() and r["regions"][k - 1]["source_id"] == r["instance_id"]
        assert [g["index"] for g in r["regions"]] == list(range(1, len(r["regions"]) + 1))
        assert set(np.unique(ids).tolist()) - {0} == {g["index"] for g in r["regions"]}  # every region in view
        assert r["regions"][k - 1]["class_name"] == r["class_name"] and r["dataset"] == "cityscapes"
        assert r["generator"] == "recolor" and r["model_id"] and r["prompt"].startswith("A photo of")
        assert r["source_image"].startswith("leftImg8bit/train/") and r["seed"] == 0 and r["gen_seed"] != 0
    layout = set(storage.list_names(out))
    assert {"plan.parquet", "plan.failures.parquet", "config.yaml", "data", "_commits", "_runs", "README.md"} <= layout
    card = storage.read_bytes(storage.join(out, "README.md")).decode()
    assert "Cityscapes terms" in card and "recolor" in card


def test_same_seed_same_bytes_across_executors(recolor_out, sample_root, tmp_path):
    out, _ = recolor_out
    local = str(tmp_path / "local")
    run_synth(sample_root, local, _cfg("generator.name=recolor", "run.executor=local", "run.rows_per_unit=3"),
              log=lambda *a: None)
    assert _rows(local).equals(_rows(out))
    other = str(tmp_path / "seed1")
    run_synth(sample_root, other, _cfg("generator.name=recolor", "run.executor=local", "plan.seed=1"),
              log=lambda *a: None)
    assert not _rows(other).column("image").equals(_rows(out).column("image"))


def test_readable_by_pyarrow_ray_and_hf_datasets(recolor_out, ray_local):
    out, _ = recolor_out
    parts = committed_parts(out)
    n = _rows(out).num_rows
    assert pads.dataset(parts, format="parquet").count_rows() == n
    import ray.data

    assert ray.data.read_parquet(parts).count() == n
    import datasets

    ds = datasets.load_dataset("parquet", data_files=parts, split="train")
    assert len(ds) == n and "image" in ds.column_names


def test_load_dataset_of_the_output_dir_decodes_images(recolor_out, tmp_path):
    """One line: load_dataset(OUT) reads the committed shards only (not plan/failure files), with
    images decoded and the 16-bit instance map lossless."""
    import datasets
    import numpy as np

    out, _ = recolor_out
    ds = datasets.load_dataset(out, split="train", cache_dir=str(tmp_path / "hf"))
    rows = _rows(out)
    assert sorted(ds["work_id"]) == rows.column("work_id").to_pylist()  # exactly the committed rows
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["labels"], datasets.Image)
    assert isinstance(ds.features["class_label"], datasets.ClassLabel)
    assert ds.features["class_label"].names[ds[0]["class_label"]] == ds[0]["class_name"]
    by_id = {r["work_id"]: r for r in rows.to_pylist()}
    for i in (0, len(ds) - 1):
        got = ds[i]
        ref = by_id[got["work_id"]]
        assert np.array_equal(np.asarray(got["image"].convert("RGB")), decode_image(ref["image"], "x"))
        ids = np.asarray(got["labels"])
        assert ids.dtype == np.uint16 and np.array_equal(ids, decode_index(ref["labels"], "x"))
        assert got["regions"] == ref["regions"]
        assert got["bbox"] == ref["bbox"]
    card = open(os.path.join(out, "README.md")).read()
    assert card.startswith("---\n") and "may not be redistributed" in card


@pytest.mark.parametrize("sets", [[], ["generator.num_cpus=1", "run.num_cpus=1"]])
def test_cpu_stages_not_fused_into_generator_actors(ray_local, sample_root, tmp_path, sets):
    """Also when prepare and the generator ask for the same resources (where Ray Data would fuse them)."""
    from instsynth.synth.executors.ray import build_dataset
    from instsynth.synth.stages import PendingUnits

    cfg = _cfg(*sets)
    plan_rows = [{"work_id": "a", "image_path": "x"}]
    ds = build_dataset(PendingUnits.of(plan_rows, set(), 1), DatasetSpec("cityscapes", sample_root), str(tmp_path), cfg)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ds.explain()
    physical = buf.getvalue().split("Physical Plan (Optimized)")[1]
    actor_lines = [ln for ln in physical.splitlines() if "ActorPoolMapOperator" in ln]
    assert actor_lines == [actor_lines[0]] and "prepare_unit" not in actor_lines[0] and "_compose" not in actor_lines[0]
    assert "TaskPoolMapOperator[Map(prepare_unit)]" in physical
    assert "TaskPoolMapOperator[Map(feed_unit)]" in physical  # apart from prepare, which flow.py holds back by unit
    assert "TaskPoolMapOperator[Map(_compose_commit)]" in physical


def test_worker_thread_pools_match_their_cpu_share(ray_local):
    import ray

    from instsynth.synth.executors.ray import fit_threads

    def probe():
        import cv2
        import torch

        fit_threads()
        return cv2.getNumThreads(), torch.get_num_threads()
    assert ray.get(ray.remote(num_cpus=1)(probe).remote()) == (1, 1)
    assert ray.get(ray.remote(num_cpus=2)(probe).remote()) == (2, 2)
    assert ray.get(ray.remote(num_cpus=0.5)(probe).remote()) == (1, 1)


def test_config_change_refused_execution_keys_allowed(recolor_out, sample_root):
    out, _ = recolor_out
    with pytest.raises(ConfigError, match="differing keys: plan.top_k"):
        run_synth(sample_root, out, _cfg("generator.name=recolor", "plan.top_k=1"), log=lambda *a: None)
    s = run_synth(sample_root, out, _cfg("generator.name=recolor", "run.rows_per_unit=5", "run.executor=local"),
                  log=lambda *a: None)
    assert s["pending_items"] == 0 and s["committed_rows"] == _rows(out).num_rows  # nothing re-done


def test_status_verify(recolor_out, capsys):
    out, _ = recolor_out
    assert main(["status", out, "--verify"]) == 0
    text = capsys.readouterr().out
    assert "0 pending" in text and "0 bad rows" in text


def _damaged_root(sample_root, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(sample_root, root)
    recs = [r for r in discover(root, "train")]
    bad_map, trunc, mismatch = recs[0], recs[1], recs[2]
    storage.write_bytes(storage.join(root, bad_map.labels), b"not a png")
    data = storage.read_bytes(storage.join(root, trunc.image))
    storage.write_bytes(storage.join(root, trunc.image), data[: len(data) // 4])
    img = decode_image(storage.read_bytes(storage.join(root, mismatch.image)), "x")
    small = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2))
    cv2.imwrite(storage.join(root, mismatch.image), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return root, bad_map, trunc, mismatch


def test_bad_input_is_recorded_not_fatal(ray_local, sample_root, tmp_path):
    root, bad_map, trunc, mismatch = _damaged_root(sample_root, tmp_path)
    out = str(tmp_path / "out")
    s = run_synth(root, out, _cfg(), log=lambda *a: None)
    plan_fail = read_parquet(storage.join(out, "plan.failures.parquet")).to_pylist()
    assert [f["image_id"] for f in plan_fail] == [bad_map.image_id]
    fails = {f["image_id"]: f for f in read_failures(out).to_pylist()}
    assert set(fails) == {trunc.image_id, mismatch.image_id}
    assert fails[trunc.image_id]["stage"] == "decode" and "cannot decode" in fails[trunc.image_id]["reason"]
    assert "does not match" in fails[mismatch.image_id]["reason"]
    plan = read_plan(plan_path(out))[0]
    assert s["committed_rows"] + s["failed_items"] == plan.num_rows
    assert s["images_without_instances"] == 1 and s["images_with_failures"] == 3
    assert s["ok"]  # 3 of 6 images damaged: at the default budget of 0.5
    # over budget: the CLI exits non-zero, and re-running resumes without redoing committed units
    code = main(["synth", root, "--out", out, "--config", DEBUG, "--set", "run.max_failure_fraction=0.2",
                 "--set", "run.progress=false"])
    assert code == 1


def _processes_under(rt: str) -> list[int]:
    """Pids of the processes whose command line names ``rt`` (a run's own Ray temp dir)."""
    out = subprocess.run(["pgrep", "-f", rt], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def test_kill_and_resume_is_exactly_once(sample_root, tmp_path):
    """SIGKILL the driver mid-job; the re-run completes the rest; rows equal an uninterrupted run.  The job is
    slowed by the ``simulate`` generator (0.1 s an item), so the kill lands while units are still to come."""
    slow = ["generator.name=simulate", "generator.params={cost_s: 0.1}"]
    ref = str(tmp_path / "ref")
    run_synth(sample_root, ref, _cfg("run.executor=local", *slow), log=lambda *a: None)
    out = str(tmp_path / "killed")
    rt = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "RAY_TMPDIR": rt, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "instsynth.cli", "synth", sample_root, "--out", out, "--config", DEBUG,
           "--set", "run.progress=false", "--set", "run.rows_per_unit=1", *sum((["--set", s] for s in slow), [])]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            n = len(committed_units(out)) if storage.exists(out) else 0
            if n >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no unit committed in time")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the killed run's Ray processes may still be ending (and a worker finishing its commit): the count
    # the re-run must report is what is committed once none of them is left
    deadline = time.time() + 30
    while time.time() < deadline and _processes_under(rt):
        time.sleep(0.2)
    for pid in _processes_under(rt):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    total = read_plan(plan_path(out))[0].num_rows
    committed_at_kill = len(committed_units(out))
    assert 1 <= committed_at_kill < total
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{committed_at_kill} already committed" in r.stdout
    assert _rows(out).equals(_rows(ref))
    assert len(committed_units(out)) == total  # one unit per row: nothing duplicated or dropped
    time.sleep(1)
    left = subprocess.run(["pgrep", "-af", rt], capture_output=True, text=True).stdout
    assert not [ln for ln in left.splitlines() if "pgrep" not in ln], left
    shutil.rmtree(rt, ignore_errors=True)


def test_dry_run_estimates_gpu_hours(sample_root, tmp_path, capsys):
    out = str(tmp_path / "dry")
    assert main(["synth", sample_root, "--out", out, "--config", DEBUG, "--generator", "recolor", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "work items" in text and "GPU-hours at" in text and "timed on this machine" in text  # timed recolor
    assert "dry run of generator recolor" in text
    assert not storage.exists(out)
    assert main(["synth", sample_root, "--out", out, "--config", DEBUG, "--generator", "sdxl-inpaint",
                 "--set", "generator.cost_s_per_item=3.0", "--dry-run"]) == 0
    assert "at 3 s/item, cost from the configured generator.cost_s_per_item" in capsys.readouterr().out


def test_synth_refuses_to_write_into_input(sample_root):
    with pytest.raises(Exception, match="inside the input tree"):
        run_synth(sample_root, os.path.join(sample_root, "out"), _cfg("run.executor=local"), log=lambda *a: None)
    assert not os.path.exists(os.path.join(sample_root, "out", "data"))


def test_originals_stats_preview_export(recolor_out, sample_root, tmp_path, capsys):
    out, _ = recolor_out
    orig = str(tmp_path / "orig")
    assert main(["originals", sample_root, "--out", orig, "--config", DEBUG]) == 0
    o = _rows(orig)
    assert o.num_rows == 6 and set(o.column("generator").to_pylist()) == {"original"}
    capsys.readouterr()
    assert main(["stats", orig, out, "--out", str(tmp_path / "stats")]) == 0
    text = capsys.readouterr().out
    assert "original visible" in text and "recolor synth/visible" in text
    png = cv2.imread(str(tmp_path / "stats" / "class_counts.png"))
    assert png is not None and png.shape[0] > 100
    assert main(["preview", out]) == 0
    assert cv2.imread(storage.join(out, "stats", "preview.png")) is not None
    # before/after: each pair's before panel is the row's source window, read through the recorded root
    from instsynth.views.figures import fit
    from instsynth.views.preview import compare_pairs

    assert main(["preview", out, "--compare", "--n", "3", "--class", "car"]) == 0
    grid = cv2.cvtColor(cv2.imread(storage.join(out, "stats", "compare.png")), cv2.COLOR_BGR2RGB)
    pairs = list(compare_pairs(out, 3, class_name="car"))
    assert len(pairs) == 3 and all(r["class_name"] == "car" for r, _, _ in pairs)
    for r, before, after in pairs:
        x0, y0, x1, y1 = r["crop_box"]
        src = decode_image(storage.read_bytes(os.path.join(sample_root, r["source_image"])), "x")
        assert (before == src[y0:y1, x0:x1]).all() and before.shape == after.shape
    small = fit(pairs[0][1], (384, 192))
    panel = grid[:small.shape[0], :small.shape[1]].astype(int)
    assert np.mean(np.abs(panel - small)) < 2  # the first tile's left panel is that window (outline aside)
    assert main(["preview", out, "--compare", "--class", "bus", "--generator", "nope"]) == 2
    # visible instances are counted from the maps: originals' totals match a direct count
    from collections import Counter

    from instsynth.datasets import cityscapes_space
    from instsynth.output.schema import labels_of, visible
    from instsynth.views.stats import class_stats

    direct = sum((Counter(visible(labels_of(r), cityscapes_space())) for r in o.to_pylist()), start=Counter())
    assert class_stats([orig])["original"]["visible"] == direct


def test_generator_lock_covers_only_the_model_call(sample_root, monkeypatch):
    """Host work (scoring) runs outside the lock, so a GPU actor's second thread can use the model then."""
    import threading

    from instsynth.plan.planner import make_plan
    from instsynth.synth import stages

    cfg = _cfg()
    table, _, _ = make_plan(sample_root, cfg)
    unit = stages.prepare(stages.Unit("u", table.to_pylist()[:3]), DatasetSpec("cityscapes", sample_root), cfg.compose)
    lock = threading.Lock()
    held = {"model": [], "score": []}

    class Model:
        name = "fake"

        def __call__(self, items):
            held["model"].append(lock.locked())
            return [{"image": it["crop"][:, ::-1].copy()} for it in items]
    score = stages._score
    monkeypatch.setattr(stages, "_score", lambda *a: held["score"].append(lock.locked()) or score(*a))
    out = stages.generate(unit, Model(), 2, cfg.quality, None, lock)
    assert held["model"] == [True, True] and held["score"] == [False] * 3 and len(out.items) == 3
