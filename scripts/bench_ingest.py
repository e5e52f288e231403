"""Training ingest, ``train.ingest: threads`` against ``ray_data``: samples/s per worker and CPU-seconds per
sample, in the same run on the same rows.

    python scripts/bench_ingest.py [--dirs demo-out/original demo-out/recolor] [--samples 240]
                                   [--out docs/bench_ingest.json]

Both feed one worker's stream (worker batch 2, the benchmark crops: 384x192 from short edges 288-480,
flips) over the same catalog; the ``ray_data`` arm iterates its Ray Data pipeline (``ingest.make_stream``)
exactly as a worker iterates its dataset shard, then decodes the rows' instance lists and collates, as
``ingest.worker_batches`` does.  Nothing trains: this is the cost of feeding a worker.  CPU-seconds are the
whole machine's busy time (``psutil.cpu_times``, every process: Ray Data's tasks and its executor thread
count) over the samples; on a quiet machine that is the ingest's.  Two readings per arm: steady (after 10
warm-up micro-batches; flatters a pipeline that ran ahead during them) and total (from the stream's
creation, pipeline start-up and run-ahead included; Ray's own start is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, k) for k in ("user", "system", "nice", "irq", "softirq") if hasattr(t, k))


def measure(make, n: int, warm: int, wb: int) -> dict:
    """Iterate ``warm`` then ``n`` micro-batches of ``make()``: wall and machine CPU time of the n (steady;
    a pipeline that ran ahead during the warm-up is flattered here) and of the whole stream from its
    creation (start-up and any run-ahead included: the fair total)."""
    T0, C0 = time.perf_counter(), busy()
    it = iter(make())
    for _ in range(warm):
        next(it)
    t0, c0 = time.perf_counter(), busy()
    for _ in range(n):
        next(it)
    t1, c1 = time.perf_counter(), busy()
    total = (n + warm) * wb
    return {"samples": n * wb, "steady_samples_per_s": round(n * wb / (t1 - t0), 2),
            "steady_cpu_s_per_sample": round((c1 - c0) / (n * wb), 4),
            "total_samples": total, "total_wall_s": round(t1 - T0, 2),
            "samples_per_s": round(total / (t1 - T0), 2), "cpu_s_per_sample": round((c1 - C0) / total, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", nargs="+", default=[os.path.join(REPO, "demo-out", d) for d in ("original", "recolor")])
    ap.add_argument("--samples", type=int, default=1200)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "bench_ingest.json"))
    args = ap.parse_args()

    import logging

    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    from instsynth.config import load_config
    from instsynth.train.data import SampleLoader, build_catalog, collate
    from instsynth.train.ingest import make_stream

    wb, warm = 2, 10
    n = args.samples // wb
    cfg = load_config(os.path.join(REPO, "configs", "debug.yaml"), [
        "train.batch_size=2", "train.crop=384x192", "train.short_edge=[288,480]",
        f"train.iterations={n + warm}"]).train
    catalog = build_catalog(args.dirs, seed=0)
    threads = measure(lambda: SampleLoader(catalog, cfg, 0, cfg.iterations, threads=cfg.loader_threads,
                                           ahead=2 * 1 + 2), n, warm, wb)
    print("threads ", threads, flush=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False

    def ray_data():
        ds = make_stream(catalog, cfg, 0, 0, 1)
        for batch in ds.iter_batches(batch_size=wb, batch_format="numpy", prefetch_batches=4):
            batch["things"] = [json.loads(t) for t in batch["things"]]
            yield collate(batch, catalog.class_ids)

    rd = measure(ray_data, n, warm, wb)
    print("ray_data", rd, flush=True)
    ray.shutdown()
    result = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
        "rows": len(catalog.orig) + len(catalog.synth), "worker_batch": wb, "crop": cfg.crop,
        "short_edge": cfg.short_edge, "threads": threads, "ray_data": rd,
        "ratio_ray_data_over_threads": {
            "samples_per_s": round(rd["samples_per_s"] / threads["samples_per_s"], 2),
            "cpu_s_per_sample": round(rd["cpu_s_per_sample"] / threads["cpu_s_per_sample"], 2)},
        "default": "threads",
        "recommendation": ("threads on a single machine and wherever GPU nodes have CPU cores to spare; ray_data on "
                           "a GPU cluster with CPU nodes, where its tasks decode and augment off the GPU nodes "
                           "(its fixed cost, the streaming executor, is paid once per worker)"),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["ratio_ray_data_over_threads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
