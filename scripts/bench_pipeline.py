"""Ray pipeline overhead, scaling and memory, each measured against a baseline in the same run.

    python scripts/bench_pipeline.py [--images 24] [--size 2048x1024] [--big 400] [--generator recolor] [--cpus 1,2,4]

1. overhead: Ray Data with 1 CPU vs the plain single-process loop over the same stage functions
   (``run.executor: local``) on the same plan.  Target: <= 15% slower.
2. scaling: items/s of Ray at each ``--cpus`` count vs the first.  Targets: Ray 2 CPUs >= 1.5x Ray 1 CPU
   on a 2-core machine; Ray 16 >= 8x Ray 1 on a 16-core one (a plan giving each worker >= 10 items).
   Each configuration (and the plain loop, on 1) is pinned to that many cores (``sched_setaffinity``,
   inherited by Ray's processes): N logical CPUs alone still let Ray run on every core.
3. memory: peak RSS of the driver and peak USS (private memory; RSS would also count the shared
   object-store pages a worker has touched) of the largest Ray worker and of all workers together,
   at ``--small`` vs ``--big`` images.  Target: flat within 10% (the job streams; nothing is collected).

Each configuration runs in a fresh subprocess so its peak RSS is its own; Ray start-up time is
reported separately and not counted in the job time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time


def pin_cores(n: int) -> str:
    """Pin this process (and so Ray's raylet and workers, which inherit it) to ``n`` cores, so that
    "Ray with N CPUs" uses N cores: Ray's logical CPUs alone do not stop a 1-CPU run's actor and
    tasks from running on every core of the machine (which made 1 CPU look as fast as 2 here)."""
    have = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not have or n >= len(have):
        return f"all {len(have) or os.cpu_count()} cores"
    os.sched_setaffinity(0, have[:n])
    return f"cores {have[:n]}"


def child(args) -> None:
    """Run one configuration and print a JSON line with its timings and peak RSS."""
    import psutil

    pinned = pin_cores(args.cpus)

    from instsynth.config import load_config
    from instsynth.plan.planner import plan_dataset, read_plan
    from instsynth.synth.executors.local import run_local
    from instsynth.synth.stages import PendingUnits

    cfg = load_config(None, [f"generator.name={args.generator}", "run.progress=false",
                             f"run.rows_per_unit={args.rows_per_unit}", "run.log_level=ERROR"])
    table, _ = read_plan(args.plan)
    root = plan_dataset(table)  # the dataset spec the stages read through
    rows = [r for r in table.to_pylist() if r["image_id"] in set(json.loads(args.image_ids))] \
        if args.image_ids else table.to_pylist()
    units = PendingUnits.of(rows, set(), cfg.run.rows_per_unit)
    out = tempfile.mkdtemp(prefix="bench-out-")
    peak = {"workers": 0, "workers_sum": 0}
    by_name: dict = {}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            tot = 0
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "ray::" in cmd or "default_worker.py" in cmd:
                    try:  # USS: private memory; RSS would also count object-store pages a worker touched
                        rss = p.memory_full_info().uss
                    except (psutil.Error, OSError):
                        continue
                    peak["workers"] = max(peak["workers"], rss)
                    name = cmd.split()[0][:40]
                    by_name[name] = max(by_name.get(name, 0), rss)
                    tot += rss
            peak["workers_sum"] = max(peak["workers_sum"], tot)
            time.sleep(0.2)

    t_init = 0.0
    stage_s: dict = {}
    if args.mode == "local":
        t0 = time.perf_counter()
        run_local(units, root, out, cfg, log=lambda *a: None)
        t_job = time.perf_counter() - t0
    else:
        import ray

        from instsynth.synth.executors.ray import configure_context

        s = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
        t_init = time.perf_counter() - s
        configure_context(cfg)
        if args.memory:  # reading every worker's smaps costs CPU: only in the memory runs, not the timed ones
            threading.Thread(target=poll, daemon=True).start()
        # the generator actor reserves a quarter CPU; CPU stages get what is left per core
        cfg.generator.num_cpus = 0.25
        # a CPU generator (recolor + per-sample quality numbers) scales with actors, like GPUs would
        cfg.generator.min_actors = cfg.generator.max_actors = args.cpus
        cfg.run.num_cpus = 0.75 if args.cpus == 1 else 0.5
        import pickle

        from instsynth.synth.executors.ray import build_dataset

        t0 = time.perf_counter()
        for r in build_dataset(units, root, out, cfg).iter_rows():
            for stage, w in pickle.loads(r["placement"]).items():
                stage_s[stage] = stage_s.get(stage, 0.0) + w["seconds"]
        t_job = time.perf_counter() - t0
        stop.set()
        ray.shutdown()
    print(json.dumps({"mode": args.mode, "cpus": args.cpus, "pinned": pinned, "items": len(rows), "t_job": t_job,
                      "t_init": t_init,
                      "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_rss_mb": peak["workers"] / 2**20, "workers_sum_mb": peak["workers_sum"] / 2**20,
                      "stage_s": stage_s,
                      "by_process_mb": {k: round(v / 2**20) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:4]}}))


def run_child(plan: str, mode: str, cpus: int, generator: str, rows_per_unit: int, image_ids=None,
              memory: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--plan", plan, "--mode", mode, "--child-cpus", str(cpus),
           "--generator", generator, "--rows-per-unit", str(rows_per_unit)] + (["--memory"] if memory else [])
    if image_ids is not None:
        cmd += ["--image-ids", json.dumps(image_ids)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        raise SystemExit(f"child {mode}/{cpus} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plan")
    ap.add_argument("--mode", default="ray")
    ap.add_argument("--child-cpus", dest="child_cpus", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cpus", default="1,2", help="CPU counts for the scaling runs, e.g. 1,4,16 (first = baseline)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--image-ids")
    ap.add_argument("--images", type=int, default=24, help="images for the overhead/scaling runs")
    ap.add_argument("--images2", type=int, default=0,
                    help="also run every configuration at this many images: the difference gives the steady-state "
                         "s/item, free of fixed start-up costs (0: skip)")
    ap.add_argument("--small", type=int, default=40)
    ap.add_argument("--big", type=int, default=400, help="images for the memory run (0: skip it)")
    ap.add_argument("--size", default="2048x1024")
    ap.add_argument("--generator", default="recolor")
    ap.add_argument("--rows-per-unit", type=int, default=4)
    args = ap.parse_args()
    if args.child:
        args.cpus = args.child_cpus
        return child(args)

    from instsynth.config import load_config, parse_size
    from instsynth.datasets.sample import write_sample
    from instsynth.plan.planner import make_plan, write_plan

    n_sample = max(args.images, args.images2, args.big, args.small)
    root = tempfile.mkdtemp(prefix="bench-pipe-")
    t0 = time.perf_counter()
    write_sample(root, n_sample, parse_size(args.size, "--size"), seed=0, val_fraction=0.0)
    table, fails, summary = make_plan(root, load_config())
    plan = os.path.join(root, "plan.parquet")
    write_plan(plan, table, fails)
    images = sorted(set(table.column("image_id").to_pylist()))
    print(f"sample: {n_sample} images of {args.size}, {table.num_rows} work items ({time.perf_counter() - t0:.0f} s)")

    subset = images[: args.images]
    counts = [int(c) for c in args.cpus.split(",")]
    sizes = [subset] + ([images[: args.images2]] if args.images2 > args.images else [])
    configs = [("loop", "local", 1)] + [(f"ray{n}", "ray", n) for n in counts]
    res = {name: [run_child(plan, mode, n, args.generator, args.rows_per_unit, sub) for sub in sizes]
           for name, mode, n in configs}

    def marginal(name):  # s/item between the two sizes: fixed start-up costs (worker imports, actor) cancel
        a, b = res[name][0], res[name][-1]
        return (b["t_job"] - a["t_job"]) / (b["items"] - a["items"]) if len(res[name]) > 1 else None

    loop, r1 = res["loop"][0], res[f"ray{counts[0]}"][0]
    print(f"\n{loop['items']} work items from {len(subset)} images, generator {args.generator}, {os.cpu_count()} cores"
          + (f"; steady state from a second run at {res['loop'][-1]['items']} items" if len(sizes) > 1 else ""))
    print(f"  {'':<16}{'job s':>8}{'items/s':>9}{'vs Ray ' + str(counts[0]):>10}{'steady s/item':>15}{'steady vs Ray ' + str(counts[0]):>17}")
    m1 = marginal(f"ray{counts[0]}")
    for name, mode, n in configs:
        r, m = res[name][0], marginal(name)
        label = "plain loop (1)" if mode == "local" else f"Ray, {n} CPU{'s' if n > 1 else ''}"
        print(f"  {label:<16}{r['t_job']:8.2f}{r['items'] / r['t_job']:9.2f}{r1['t_job'] / r['t_job']:9.2f}x"
              + (f"{m:15.3f}{m1 / m:16.2f}x" if m else "") + (f"   ({r['pinned']})" if mode == "ray" else ""))
    for n in counts:
        print(f"  time inside stages (Ray, {n} CPU): "
              f"{json.dumps({k: round(v, 2) for k, v in res[f'ray{n}'][0]['stage_s'].items()})}")
    print(f"overhead Ray({counts[0]} CPU) vs loop: whole job {100 * (r1['t_job'] / loop['t_job'] - 1):+.1f}%"
          + (f", steady state {100 * (m1 / marginal('loop') - 1):+.1f}%" if m1 else "") + " (target <= +15%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": os.cpu_count(), "runs": res,
                       "steady_s_per_item": {name: marginal(name) for name, _, _ in configs}}, f, indent=1)

    if args.big:
        small = run_child(plan, "ray", 2, args.generator, args.rows_per_unit, images[: args.small], memory=True)
        big = run_child(plan, "ray", 2, args.generator, args.rows_per_unit, images[: args.big], memory=True)
        print(f"\npeak RSS (driver) / USS (workers) at {args.small} vs {len(images[: args.big])} images (Ray, 2 CPUs):")
        for k, name in (("driver_rss_mb", "driver"), ("worker_rss_mb", "largest worker"),
                        ("workers_sum_mb", "all workers")):
            print(f"  {name:<15} {small[k]:8.0f} MB vs {big[k]:8.0f} MB  ratio {big[k] / max(small[k], 1e-9):.2f}"
                  " (target <= 1.10)")
        print(f"  largest processes: {small['by_process_mb']} vs {big['by_process_mb']}")


if __name__ == "__main__":
    main()
