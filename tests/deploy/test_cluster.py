"""Scale-out proofs without a cloud: S3 in and out (a real S3 server on 127.0.0.1), and a two-node
local Ray cluster receiving the job through `ray job submit`."""

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pyarrow as pa

from instsynth import shards, storage
from instsynth.config import load_config
from instsynth.synth import run_synth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(out):
    return pa.concat_tables(list(shards.iter_tables(out))).sort_by("work_id")


def _upload(local_root, uri):
    for path in glob.glob(os.path.join(local_root, "**", "*"), recursive=True):
        if os.path.isfile(path):
            storage.write_bytes(storage.join(uri, os.path.relpath(path, local_root)), open(path, "rb").read())


def test_synth_s3_to_s3_interrupt_resume(s3, sample_root, tmp_path):
    src, out = "s3://bucket/cityscapes", "s3://bucket/out/recolor"
    _upload(sample_root, src)
    ref = str(tmp_path / "ref")
    cfg = ["generator.name=recolor", "run.progress=false", "run.rows_per_unit=1"]
    run_synth(sample_root, ref, load_config(DEBUG, cfg + ["run.executor=local"]), log=lambda *a: None)
    rt = tempfile.mkdtemp(prefix="rt")
    env = {**os.environ, **s3, "RAY_TMPDIR": rt, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "instsynth.cli", "synth", src, "--out", out, "--config", DEBUG]
    for c in cfg:
        cmd += ["--set", c]
    proc = subprocess.Popen(cmd + ["--set", "run.pause_after_units=2"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(shards.committed_units(out)) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    total = _rows(ref).num_rows
    assert 1 <= len(shards.committed_units(out)) < total
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert _rows(out).equals(_rows(ref))  # resumed on S3: nothing lost, nothing duplicated
    assert storage.list_names(storage.join(out, "_commits")) and storage.exists(storage.join(out, "config.yaml"))
    shutil.rmtree(rt, ignore_errors=True)


def _node_ports() -> list[str]:
    """Distinct ports for a node, so two nodes on one host do not collide (agents, metrics, managers)."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}"]


def _ray_procs(tag):
    out = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


def test_two_node_cluster_job_submit(sample_root, tmp_path):
    """Head + a 'GPU' node (custom resource gpu_slot) on 127.0.0.1; `ray job submit` the synthesis job;
    generator actors must run on the gpu_slot node; no Ray process is left behind."""
    tmp = tempfile.mkdtemp(prefix="rc")  # short: Ray socket paths must stay < 108 chars
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    out = str(tmp_path / "out")
    try:
        subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                        f"--temp-dir={tmp}", "--include-dashboard=true", "--disable-usage-stats", *_node_ports()],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--resources", json.dumps({"gpu_slot": 1}), "--disable-usage-stats", *_node_ports()],
                       env=env, check=True, capture_output=True, timeout=120)
        for _ in range(20):  # the dashboard's job agent needs a moment after `ray start`
            job = subprocess.run(
                [RAY, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", ROOT, "--",
                 sys.executable, "ray_jobs/synthesize.py", sample_root, "--out", out, "--config", "configs/debug.yaml",
                 "--generator", "recolor", "--set", "run.progress=false", "--set", "generator.resources={gpu_slot: 1}",
                 "--set", "generator.num_cpus=0.25", "--set", "run.num_cpus=0.5"],
                env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}, capture_output=True, text=True, timeout=400)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in (job.stdout + job.stderr).lower(), (job.stdout + job.stderr)[-3000:]
        rows = _rows(out)
        plan = storage.read_parquet(shards.plan_path(out))
        assert rows.num_rows == plan.num_rows > 0
        (run,) = [json.loads(storage.read_bytes(storage.join(out, "_runs", n))) for n in
                  storage.list_names(storage.join(out, "_runs"))]
        gpu_nodes = {nid for nid, n in run["nodes"].items() if "gpu_slot" in n["resources"]}
        assert len(gpu_nodes) == 1 and len(run["nodes"]) == 2
        gen_nodes = {u["nodes"]["generate"] for u in run["units"]}
        assert gen_nodes == gpu_nodes  # every generator actor ran on the 'GPU' node
    finally:
        for line in _ray_procs(tmp):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", f"127.0.0.1:{gcs}"], capture_output=True)
        time.sleep(1)
        left = _ray_procs(tmp) + [p for p in _ray_procs(f"127.0.0.1:{gcs}")]
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, left
