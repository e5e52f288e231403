"""Autoscaling for real on one machine: GPU nodes join as the generator pool asks, and leave when idle.

    python scripts/bench_autoscale.py [--items 192] [--cost-s 0.5] [--out docs/bench_autoscale.json] [--png docs/bench_autoscale.png]

Ray's fake multi-node provider (``provider.type: fake_multinode``, the one behind
``ray.cluster_utils.AutoscalingCluster``) runs a real autoscaler whose "nodes" are local processes: a
head without GPUs (2 CPUs for the CPU stages) and a GPU worker type (1 GPU, 1 CPU, 300 MB object
store each; ``min_workers: 0``, ``max_workers: 4``, ``idle_timeout_minutes: 0.2``).  The real job runs on
it (``run_synth``: prepare tasks -> ``simulate`` generator actors with ``num_gpus: 1`` and an actor pool of
1..4 -> commit tasks); a sampler records the alive GPU nodes every second (``ray.nodes()``) and the
generator actors busy in each second (from the ``simulate`` trace), through the job and until the idle
nodes are gone.  Output: JSON and a PNG of nodes and actors over time.  Targets: the pool reaches >= 4
actors on >= 4 GPU nodes, and the nodes are released after the job.

Why not ``AutoscalingCluster`` itself: its ``start()``/``shutdown()`` run ``ray stop --force``, which kills
every Ray process on the machine, and its constructor reads an ``example.yaml`` the Ray 2.60 wheel does not
ship.  This script writes the equivalent config itself, starts the head on its own port and temp dir, and
stops only the processes of this cluster (nothing else on the machine is touched).  Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_config(port: int, gpu_nodes: int) -> dict:
    """The fake multi-node autoscaling config (the fields of Ray's fake_multi_node example)."""
    return {
        "cluster_name": "instsynth-fake", "max_workers": gpu_nodes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 300 * 2**20},
                           "node_config": {}, "min_workers": 0, "max_workers": gpu_nodes},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.2,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def own_processes(marker: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split() if int(p) != os.getpid()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=192)
    ap.add_argument("--cost-s", type=float, default=0.5, help="simulated GPU seconds per item")
    ap.add_argument("--gpu-nodes", type=int, default=4)
    ap.add_argument("--release-timeout", type=float, default=180.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bas-")  # short: Ray's socket paths must stay under 108 bytes
    port = free_port()
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop("RAY_ADDRESS", None)
    cfg_path = os.path.join(tmp, "autoscaling.json")
    with open(cfg_path, "w") as f:
        json.dump(cluster_config(port, args.gpu_nodes), f)
    result = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
              "gpu_nodes_max": args.gpu_nodes, "items": args.items, "cost_s": args.cost_s}
    samples: list[dict] = []
    stop = threading.Event()
    try:
        subprocess.run([RAY, "start", "--head", f"--autoscaling-config={cfg_path}", "--node-ip-address=127.0.0.1",
                        f"--port={port}", "--num-cpus=2", f"--object-store-memory={300 * 2**20}",
                        f"--temp-dir={tmp}/ray", "--include-dashboard=false", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")})
        import ray

        ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR")
        t0 = time.time()

        def sample():
            while not stop.is_set():
                try:
                    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU")]
                    samples.append({"t": time.time() - t0, "gpu_nodes": len(nodes)})
                except Exception:  # noqa: BLE001 - a sample lost while the GCS is busy
                    pass
                stop.wait(1.0)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        from instsynth.config import load_config
        from instsynth.datasets.sample import write_sample
        from instsynth.synth.driver import run_synth

        root = os.path.join(tmp, "root")
        write_sample(root, images=max(4, args.items // 24 + 2), size=(256, 128), seed=0, val_fraction=0.0001)
        trace = os.path.join(tmp, "trace")
        cfg = load_config(os.path.join(REPO, "configs", "debug.yaml"), [
            "run.progress=false", "run.rows_per_unit=4", "plan.min_pixels=16", "plan.variants=8",
            f"run.limit={args.items}", "generator.name=simulate", "generator.batch_size=4",
            f"generator.params.cost_s={args.cost_s}", f"generator.params.trace={trace}", "generator.num_gpus=1",
            "generator.num_cpus=0", "generator.min_actors=1", f"generator.max_actors={args.gpu_nodes}",
            f"run.address=127.0.0.1:{port}"])
        job_start = time.time() - t0
        summary = run_synth(root, os.path.join(tmp, "out"), cfg, log=lambda *a: None)
        job_end = time.time() - t0
        deadline = time.time() + args.release_timeout
        while time.time() < deadline and (not samples or samples[-1]["gpu_nodes"] > 0 or samples[-1]["t"] < job_end):
            time.sleep(1.0)
        stop.set()
        sampler.join(timeout=10)
        calls = []
        for name in os.listdir(trace):
            for ln in open(os.path.join(trace, name)):
                pid, a, b, n = ln.split()
                calls.append((int(pid), float(a) - t0, float(b) - t0))
        for s in samples:
            s["busy_actors"] = len({p for p, a, b in calls if a <= s["t"] + 1.0 and b >= s["t"]})
        peak_nodes = max((s["gpu_nodes"] for s in samples), default=0)
        result.update({
            "rows": summary["committed_rows"], "pending": summary["pending_items"], "job_start_s": job_start,
            "job_end_s": job_end, "actors_used": len({p for p, _, _ in calls}), "peak_gpu_nodes": peak_nodes,
            "peak_busy_actors": max((s["busy_actors"] for s in samples), default=0),
            "gpu_nodes_at_end": samples[-1]["gpu_nodes"] if samples else None,
            "released_after_s": next((s["t"] - job_end for s in samples if s["t"] > job_end and s["gpu_nodes"] == 0),
                                     None),
            "samples": samples})
        ray.shutdown()
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
        print(f"targets: pool >= 4 actors on >= 4 GPU nodes: actors {result['actors_used']}, nodes {peak_nodes}; "
              f"nodes released after the job: {result['gpu_nodes_at_end'] == 0}")
        if args.png:
            plot(result, args.png)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        stop.set()
        marker = f"127.0.0.1:{port}"
        for pid in own_processes(marker) + own_processes(tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        left = own_processes(marker) + own_processes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if left:
            print(f"processes left behind: {left}", file=sys.stderr)
    return 0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in result["samples"]]
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    ax.step(t, [s["gpu_nodes"] for s in result["samples"]], where="post", label="alive GPU nodes (ray.nodes())")
    ax.step(t, [s["busy_actors"] for s in result["samples"]], where="post", label="generator actors busy")
    ax.axvspan(result["job_start_s"], result["job_end_s"], color="grey", alpha=0.15, label="the job")
    ax.set_xlabel("seconds")
    ax.set_ylabel("count")
    ax.set_title(f"fake autoscaling cluster: GPU nodes 0..{result['gpu_nodes_max']}, actor pool 1..{result['gpu_nodes_max']} "
                 f"({result['machine']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
