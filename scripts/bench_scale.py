"""What the bookkeeping costs as outputs grow, on a local S3 server that counts every request.

    python scripts/bench_scale.py [--units 100,1000] [--latency-ms 20] [--rows-per-unit 8] [--out docs/bench_scale.json]

The server is the tests' own (``tests/s3server.py``: moto on 127.0.0.1, wrapped to count requests by
kind and prefix and to sleep ``--latency-ms`` per request, standing in for a real object store's
round trip).  Nothing is sent anywhere but 127.0.0.1.  For each job size (identity generator, 256x128
images, ``plan.variants`` to reach the size, the local executor so Ray's start-up does not hide the
bookkeeping), in fresh subprocesses:

1. fresh run: requests per item and per unit by kind and prefix; driver time before the first and
   after the last commit; peak driver RSS.  Target: <= N + 4U + 60 requests; <= 1 s per 1,000 units after
   the last commit.
2. no-op resume: requests, data bytes read, wall time, whether Ray started.  Target: <= 2U + 60 requests,
   0 data bytes, <= 5 s at 1,000 units.
3. kill -9 at half way, then resume: time from the resumed driver's start to its first new commit.
   Target: <= Ray start-up + 5 s at 1,000 committed units (local executor: Ray start-up is 0 here).
4. ``status --verify``: data bytes read / data bytes.  Target: <= 1.05.
5. ``load_dataset(OUT)`` time on a local copy of the output, and on its consolidated export.

The counts of both sizes are fitted to ``a + b*N + c*U`` per measure and extrapolated to 100k and 1M
items (the table goes into the README with the machine named).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # the tests' S3 server: tests/s3server.py


def child(args) -> None:
    """One synth run in this process; prints a JSON line with its timings."""
    from instsynth.config import load_config
    from instsynth.synth.driver import run_synth

    cfg = load_config(os.path.join(REPO, "configs", "debug.yaml"), json.loads(args.sets))
    commits, ready = [], []
    t0 = time.time()

    def log(msg):
        if "committed (" in msg:
            commits.append(time.time())
        if "units to run" in msg:
            ready.append(time.time())
    summary = run_synth(args.root, args.out_uri, cfg, log=log)
    end = time.time()
    import sys as _s

    ray_started = "ray" in _s.modules and _s.modules["ray"].is_initialized()
    print("RESULT " + json.dumps({
        "start": t0, "end": end, "first_commit": commits[0] if commits else None,
        "last_commit": commits[-1] if commits else None, "commits": len(commits),
        "bookkeeping_done": ready[0] if ready else None,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": summary["committed_rows"], "units": summary["units"], "ray_started": ray_started,
        "pending": summary["pending_items"]}), flush=True)


def run_child(root, out, sets, env, timeout=3600):
    cmd = [sys.executable, __file__, "--child", "--root", root, "--out-uri", out, "--sets", json.dumps(sets)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed ({r.returncode}): {r.stderr[-3000:]}")


def by_kind(reqs):
    out: dict = {}
    for k, p, *_ in reqs:
        out[f"{k} {p}"] = out.get(f"{k} {p}", 0) + 1
    return dict(sorted(out.items()))


def server_s(reqs):
    """Seconds the (single-process, GIL-bound) moto server spent serving ``reqs``, latency excluded."""
    return round(sum(r[3] for r in reqs), 3)


def server_s_by_kind(reqs):
    """Server seconds per request kind and prefix (where the single-process moto server spends its time)."""
    out: dict = {}
    for k, p, _, t, *_ in reqs:
        out[f"{k} {p}"] = round(out.get(f"{k} {p}", 0) + t, 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:8])


def data_bytes_read(reqs):
    return sum(r[2] for r in reqs if r[0].startswith("GET") and r[1] == "data")


def fit(points):
    """Least squares a + b*N + c*U over (N, U, y) points (exact with two sizes and a fixed ratio N/U:
    then only a + b'*N is identifiable, reported as per-item and per-unit with U = N / rows_per_unit)."""
    import numpy as np

    n = np.array([p[0] for p in points], float)
    y = np.array([p[2] for p in points], float)
    a = np.vstack([np.ones_like(n), n]).T
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(coef[0]), float(coef[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out-uri", help=argparse.SUPPRESS)
    ap.add_argument("--sets", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--units", default="100,1000", help="job sizes in units (>= 10x apart)")
    ap.add_argument("--rows-per-unit", type=int, default=8)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--out", default=None, help="JSON results (default: print only)")
    ap.add_argument("--skip-kill", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    from tests.s3server import RemoteCounts

    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "s3server.py"),
                               "--latency-ms", str(args.latency_ms)], stdout=subprocess.PIPE, text=True)
    endpoint = server.stdout.readline().strip()
    counts = RemoteCounts(endpoint)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": REPO}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "AWS_ENDPOINT_URL")})
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    results = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
               "latency_ms": args.latency_ms, "rows_per_unit": args.rows_per_unit, "sizes": []}
    try:
        from instsynth.datasets.sample import write_sample

        for units in [int(u) for u in args.units.split(",")]:
            items = units * args.rows_per_unit
            variants = 8
            images = max(2, -(-items // (3 * variants)) + 2)
            root = os.path.join(tmp, f"root-{units}")
            write_sample(root, images=images, size=(256, 128), seed=0, val_fraction=0.0001)
            bucket = f"bench-{units}"  # moto's LIST cost grows with the bucket: one bucket per size
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            out = f"s3://{bucket}/out"
            sets = ["run.progress=true", "run.executor=local", f"run.rows_per_unit={args.rows_per_unit}",
                    "plan.min_pixels=16", f"plan.variants={variants}"]
            run_child(root, out, sets + ["run.limit=0"], env)  # the plan only: not bookkeeping
            counts.reset()
            fresh = run_child(root, out, sets, env)
            reqs = counts.snapshot(reset=True)
            n, u = fresh["rows"], fresh["units"]
            size = {"units": u, "items": n, "images": images,
                    "fresh": {"requests": len(reqs), "by_kind": by_kind(reqs), "target": n + 4 * u + 60,
                              "before_first_commit_s": fresh["first_commit"] - fresh["start"],
                              "bookkeeping_before_units_s": fresh["bookkeeping_done"] - fresh["start"],
                              "after_last_commit_s": fresh["end"] - fresh["last_commit"],
                              "wall_s": fresh["end"] - fresh["start"], "driver_maxrss_mb": fresh["maxrss_mb"],
                              "data_bytes_read": data_bytes_read(reqs), "server_s": server_s(reqs),
                              "server_s_by_kind": server_s_by_kind(reqs),
                              "after_last_commit_requests": [r[:2] + (round(r[3], 3),) for r in reqs
                                                             if len(r) > 4 and r[4] >= fresh["last_commit"]]}}
            noop = run_child(root, out, sets + ["run.executor=ray"], env)
            reqs = counts.snapshot(reset=True)
            size["noop"] = {"requests": len(reqs), "by_kind": by_kind(reqs), "target": 2 * u + 60,
                            "data_bytes_read": data_bytes_read(reqs), "wall_s": noop["end"] - noop["start"],
                            "ray_started": noop["ray_started"], "server_s": server_s(reqs)}
            t0 = time.time()
            v = subprocess.run([sys.executable, "-m", "instsynth.cli", "status", out, "--verify"], env=env,
                               capture_output=True, text=True)
            reqs = counts.snapshot(reset=True)
            from instsynth.io import storage
            from instsynth.output.ledger import committed_parts

            total = sum(storage.list_sizes(storage.join(out, "data")).values())
            size["verify"] = {"exit": v.returncode, "wall_s": time.time() - t0, "data_bytes": total,
                              "bytes_read_ratio": data_bytes_read(reqs) / total,
                              "requests": len(reqs)}
            # load_dataset on a local copy, and on the consolidated export
            local = os.path.join(tmp, f"copy-{units}")
            paths = [p for p in storage.walk(out) if "/_claims/" not in p]
            for p, data in zip(paths, storage.read_many(paths)):
                storage.write_bytes(os.path.join(local, storage.relpath(p, out)), data)
            import datasets

            t0 = time.time()
            ds = datasets.load_dataset(local, split="train", cache_dir=os.path.join(tmp, f"hf-{units}"))
            size["load_dataset_s"] = time.time() - t0
            assert len(ds) == n, (len(ds), n, fresh, noop)
            from instsynth.output.export import export_parquet

            export_parquet([local], os.path.join(tmp, f"pub-{units}"), log=lambda *a: None)
            t0 = time.time()
            ds = datasets.load_dataset(os.path.join(tmp, f"pub-{units}"), split="train",
                                       cache_dir=os.path.join(tmp, f"hf2-{units}"))
            size["load_dataset_export_s"] = time.time() - t0
            size["parts"] = len(committed_parts(out))
            counts.reset()
            if not args.skip_kill:
                kbucket = f"bench-kill-{units}"
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=kbucket)
                kout = f"s3://{kbucket}/out"
                run_child(root, kout, sets + ["run.limit=0"], env)
                cmd = [sys.executable, __file__, "--child", "--root", root, "--out-uri", kout,
                       "--sets", json.dumps(sets)]
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while sum(1 for k, pre, *_ in counts.snapshot() if k == "PUT" and pre == "_commits") < u // 2:
                    time.sleep(0.5)
                p.send_signal(signal.SIGKILL)
                p.wait()
                done = len(storage.list_names(storage.join(kout, "_commits")))
                counts.reset()
                resumed = run_child(root, kout, sets, env)
                reqs = counts.snapshot(reset=True)
                size["kill_resume"] = {"committed_at_kill": done,
                                       "first_new_commit_s": resumed["first_commit"] - resumed["start"],
                                       "bookkeeping_before_units_s": resumed["bookkeeping_done"] - resumed["start"],
                                       "requests": len(reqs), "pending_after": resumed["pending"],
                                       "server_s": server_s(reqs)}
                storage.remove_tree(kout)
            results["sizes"].append(size)
            print(json.dumps(size, indent=1), flush=True)
            shutil.rmtree(local, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
        pts = results["sizes"]
        if len(pts) >= 2:
            ext = {}
            for key, get in (("fresh requests", lambda s: s["fresh"]["requests"]),
                             ("no-op requests", lambda s: s["noop"]["requests"]),
                             ("no-op wall s", lambda s: s["noop"]["wall_s"]),
                             ("after last commit s", lambda s: s["fresh"]["after_last_commit_s"]),
                             ("driver RSS MB", lambda s: s["fresh"]["driver_maxrss_mb"])):
                a, b = fit([(s["items"], s["units"], get(s)) for s in pts])
                ext[key] = {"fixed": a, "per_item": b, "100k": a + b * 1e5, "1M": a + b * 1e6}
            results["extrapolated"] = ext
            print(json.dumps(ext, indent=1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
