"""Scale-out proofs without a cloud: S3 in and out (a real S3 server on 127.0.0.1), and a two-node
local Ray cluster receiving the job through `ray job submit`."""

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pytest

from instsynth.config import load_config
from instsynth.io import storage
from instsynth.output.ledger import committed_units
from instsynth.output.readers import iter_tables
from instsynth.synth.driver import run_synth
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(out):
    return pa.concat_tables(list(iter_tables(out))).sort_by("work_id")


def _upload(local_root, uri):
    for path in glob.glob(os.path.join(local_root, "**", "*"), recursive=True):
        if os.path.isfile(path):
            storage.write_bytes(storage.join(uri, os.path.relpath(path, local_root)), open(path, "rb").read())


def test_synth_s3_to_s3_killed_then_resumed_by_job_submit(cluster, sample_root, tmp_path, monkeypatch):
    """A synthesis driver on the two-node cluster, S3 in and out, SIGKILLed after two commits; `ray job
    submit ray_jobs/synthesize.py` of the same job resumes it on S3: the rows equal an uninterrupted run,
    and every generator actor of the resumed run ran on the 'GPU' (gpu_slot) node."""
    address, env, s3, _, gcs = cluster
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    src, out = "s3://bucket/cityscapes", "s3://bucket/out/simulate"
    _upload(sample_root, src)
    ref = str(tmp_path / "ref")
    # simulate at 0.1 s an item: the kill lands while units are still to come
    cfg = ["generator.name=simulate", "generator.params={cost_s: 0.1}", "run.progress=false", "run.rows_per_unit=1",
           "generator.resources={gpu_slot: 1}", "generator.num_cpus=0.25", "run.num_cpus=0.5"]
    run_synth(sample_root, ref, load_config(DEBUG, cfg + ["run.executor=local"]), log=lambda *a: None)
    sets = sum((["--set", c] for c in cfg), [])
    env_driver = {**env, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "instsynth.cli", "synth", src, "--out", out, "--config", DEBUG,
           "--set", f"run.address={gcs}", *sets]
    proc = subprocess.Popen(cmd, env=env_driver, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(committed_units(out)) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    total = _rows(ref).num_rows
    at_kill = len(committed_units(out))
    assert 1 <= at_kill < total
    job = _submit(address, env, ["ray_jobs/synthesize.py", src, "--out", out, "--config", "configs/debug.yaml", *sets])
    assert job.returncode == 0 and "succeeded" in (job.stdout + job.stderr).lower(), (job.stdout + job.stderr)[-3000:]
    assert _rows(out).equals(_rows(ref))  # resumed on S3: nothing lost, nothing duplicated
    assert storage.list_names(storage.join(out, "_commits")) and storage.exists(storage.join(out, "config.yaml"))
    runs = [json.loads(storage.read_bytes(storage.join(out, "_runs", n))) for n in
            storage.list_names(storage.join(out, "_runs"))]
    (run,) = [r for r in runs if r.get("units")]  # the resumed run's units (the killed driver wrote no record)
    assert 0 < len(run["units"]) <= total - at_kill and len(run["nodes"]) == 2
    gpu_nodes = {nid for nid, n in run["nodes"].items() if "gpu_slot" in n["resources"]}
    assert len(gpu_nodes) == 1 and {u["nodes"]["generate"] for u in run["units"]} == gpu_nodes


def _node_ports() -> list[str]:
    """Distinct ports for a node, so two nodes on one host do not collide (agents, metrics, managers)."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}"]


def _ray_procs(tag):
    out = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (2 CPUs) + a 'GPU' node (1 CPU, custom resource gpu_slot) on 127.0.0.1, both with the
    environment of a local S3 server of their own; yields (dashboard address, env, S3 env).  On teardown
    every Ray process of the cluster is killed and none may be left."""
    import boto3

    from tests.s3server import CountingS3

    server = CountingS3().start()
    s3env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": server.endpoint}
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bucket")
    tmp = tempfile.mkdtemp(prefix="rc")  # short: Ray socket paths must stay < 108 chars
    env = {**os.environ, **s3env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    try:
        subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                        f"--temp-dir={tmp}", "--include-dashboard=true", "--disable-usage-stats", *_node_ports()],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--resources", json.dumps({"gpu_slot": 1}), "--disable-usage-stats", *_node_ports()],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"http://127.0.0.1:{dash}", env, s3env, tmp, f"127.0.0.1:{gcs}"
    finally:
        for line in _ray_procs(tmp):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", f"127.0.0.1:{gcs}"], capture_output=True)
        time.sleep(1)
        left = _ray_procs(tmp) + [p for p in _ray_procs(f"127.0.0.1:{gcs}")]
        shutil.rmtree(tmp, ignore_errors=True)
        server.stop()
        assert not left, left


def _submit(address, env, args, wait=True):
    """`ray job submit` of the repo (retried while the dashboard's job agent is still starting)."""
    for _ in range(20):
        job = subprocess.run([RAY, "job", "submit", f"--address={address}", "--working-dir", ROOT,
                              *([] if wait else ["--no-wait"]), "--", sys.executable, *args],
                             env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=400)
        if "No available agent" not in job.stdout + job.stderr:
            return job
        time.sleep(2)
    return job


def _train_workers(tmp):
    """pids of this cluster's Ray Train worker processes (their raylet runs under the cluster's temp dir)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any("RayTrainWorker" in c for c in (p.info["cmdline"] or [])) and \
                    any(tmp in " ".join(a.cmdline()) for a in p.parents()):
                pids.append(p.info["pid"])
    return pids


def test_two_node_training_on_s3_survives_a_killed_worker(cluster, sample_root, tmp_path, monkeypatch):
    """`ray job submit ray_jobs/train.py` with one worker on each node and storage_path on S3; one train worker
    is killed (kill -9 by pid) after the first checkpoints; the job still succeeds at train.iterations with one
    restart; `instsynth evaluate` then scores the s3:// best/ checkpoint."""
    from instsynth.cli import main
    from instsynth.synth.originals import write_originals

    address, env, s3env, tmp, _ = cluster
    for k, v in s3env.items():
        monkeypatch.setenv(k, v)
    orig = str(tmp_path / "original")
    write_originals(sample_root, orig, load_config(DEBUG), log=lambda *a: None)
    runs, name = "s3://bucket/runs", "two-node"
    sets = [f"train.dirs=[{orig}]", f"train.eval_root={sample_root}", "train.eval_max_images=1",
            f"train.storage_path={runs}", f"train.name={name}", "train.num_workers=2", "train.cpus_per_worker=1",
            "train.placement=STRICT_SPREAD", "train.iterations=6", "train.checkpoint_every=1", "train.eval_every=6"]
    job = _submit(address, env, ["ray_jobs/train.py", "--config", "configs/train/fastinst.tiny.yaml",
                                 *sum((["--set", s] for s in sets), [])], wait=False)
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    job_id = re.search(r"raysubmit_\w+", job.stdout + job.stderr).group(0)
    run_dir = storage.join(runs, name)
    killed, deadline = None, time.time() + 150
    while killed is None and time.time() < deadline:
        # three checkpoint dirs: the first report is surely registered by the controller
        if sum(n.startswith("checkpoint_") for n in storage.list_names(run_dir)) >= 3:
            pids = _train_workers(tmp)
            assert len(pids) == 2, pids  # one per node
            os.kill(pids[-1], signal.SIGKILL)
            killed = pids[-1]
        time.sleep(0.3)
    assert killed, "no checkpoints on S3 within 150 s"
    status = ""
    while time.time() < deadline + 120 and not any(s in status for s in ("succeeded", "failed", "stopped")):
        time.sleep(1)
        status = subprocess.run([RAY, "job", "status", f"--address={address}", job_id], env=env,
                                capture_output=True, text=True).stdout.lower()
    logs = subprocess.run([RAY, "job", "logs", f"--address={address}", job_id], env=env, capture_output=True,
                          text=True).stdout
    assert "succeeded" in status, logs[-3000:]
    # the console a user sees: no Ray Train life-cycle or per-report lines, no evaluator dumps
    assert "Reporting training result" not in logs, logs[-3000:]
    assert "Average Precision" not in logs and "index created" not in logs and "loss_loss" not in logs
    assert "at test scale short edge 192 px" in logs
    assert f"trained fastinst {name} from step 0 to step 6; 1 restart after a lost worker" in logs, logs[-3000:]
    starts = [json.loads(ln) for ln in storage.read_bytes(storage.join(run_dir, "starts.jsonl")).decode().splitlines()]
    assert len(starts) == 2 and starts[1]["resumed"] and 1 <= starts[1]["start_step"] < 6, starts
    assert any(n.startswith("events") for n in storage.list_names(storage.join(run_dir, "tensorboard")))
    best = storage.join(run_dir, "best")
    assert main(["evaluate", "--checkpoint", best, "--data-root", sample_root, "--max-images", "1"]) == 0
    res = json.loads(storage.read_bytes(storage.join(best, "eval_val.json")))
    assert res["step"] == 6 and res["checkpoint"] == best
