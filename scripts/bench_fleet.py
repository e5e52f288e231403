"""A simulated GPU fleet on one machine, and the driver's memory per planned item.

    python scripts/bench_fleet.py [--gpus 16] [--items 400] [--demand 0.6,0.7,0.8] [--out docs/bench_fleet.json]
        [--png docs/bench_fleet_queues.png] [--curve-png docs/bench_fleet_demand.png] [--skip-memory]

1. CPU stages alone: the real pipeline (prepare tasks -> generator actors -> compose/commit tasks) with
   the ``simulate`` generator at ``cost_s: 0``: the steady-state items/s the CPU stages sustain here
   (s/item between two job sizes, so fixed start-up cancels; the faster of two runs per size).
2. The fleet: Ray started with ``--gpus`` declared fake GPUs, the generator pool at ``--gpus`` actors
   (``generator.num_gpus: 1, num_cpus: 0``), ``cost_s`` set so that gpus/cost_s is 80% of step 1's
   items/s.  From the actors' busy intervals (``generator.params.trace``): the fraction of time the
   simulated GPUs are busy in the steady state (the middle 80% of the span between the first and last
   generator call).  Target: >= 90%.  Queue depths per stage from the run record's per-unit stage
   intervals (``views.status.stage_queues``): units waiting between prepare and the generators, between the
   generators and commit, and units inside each stage, as steady-state mean/max and a PNG over time.
   Also the fleet's own cost to this machine: the cores ``--gpus`` idle actors take (they share the cores
   with the CPU stages here; on a real fleet they run on the GPU nodes).
3. Driver USS (private memory; RSS also counts object-store pages) after planning and scheduling a
   10k- and a 100k-item plan with ``run.limit`` (the slope is the per-item cost), extrapolated to 1M.
   Target: <= 1.5 KB per planned item; 1M items <= 2 GB.

Autoscaling (Ray's fake autoscaling cluster) is ``scripts/bench_autoscale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_job(args) -> None:
    import ray

    ray.init(num_cpus=os.cpu_count(), num_gpus=args.gpus, include_dashboard=False, logging_level="ERROR",
             _temp_dir=args.ray_tmp)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    from instsynth.config import load_config
    from instsynth.synth.driver import run_synth

    cfg = load_config(os.path.join(REPO, "configs", "debug.yaml"), json.loads(args.sets))
    t0 = time.time()
    s = run_synth(args.root, args.out_dir, cfg, log=lambda *a: None)
    print("RESULT " + json.dumps({"wall_s": time.time() - t0, "rows": s["committed_rows"],
                                  "pending": s["pending_items"]}), flush=True)
    ray.shutdown()


def child_idle(args) -> None:
    """CPU that ``--gpus`` idle actors (num_gpus=1, num_cpus=0, no work) take from the machine: Ray's own
    per-process cost, which a fleet simulated on one machine takes from the CPU stages."""
    import psutil
    import ray

    ray.init(num_cpus=os.cpu_count(), num_gpus=args.gpus, include_dashboard=False, logging_level="ERROR",
             _temp_dir=args.ray_tmp)

    @ray.remote(num_gpus=1, num_cpus=0)
    class Idle:
        def pid(self):
            return os.getpid()

    actors = [Idle.remote() for _ in range(args.gpus)]
    procs = [psutil.Process(p) for p in ray.get([a.pid.remote() for a in actors])]
    time.sleep(5)  # past their start-up
    c0, t0 = sum(sum(p.cpu_times()[:2]) for p in procs), time.time()
    time.sleep(20)
    cores = (sum(sum(p.cpu_times()[:2]) for p in procs) - c0) / (time.time() - t0)
    print("RESULT " + json.dumps({"idle_actors": args.gpus, "cores_used": cores}), flush=True)
    ray.shutdown()


def child_memory(args) -> None:
    import psutil

    from instsynth.config import load_config
    from instsynth.synth.driver import run_synth

    cfg = load_config(os.path.join(REPO, "configs", "debug.yaml"), json.loads(args.sets))
    proc = psutil.Process()
    before = proc.memory_full_info().uss
    s = run_synth(args.root, args.out_dir, cfg, log=lambda *a: None)
    print("RESULT " + json.dumps({"uss_mb": proc.memory_full_info().uss / 2**20,
                                  "uss_before_mb": before / 2**20, "planned": s["planned"]}), flush=True)


def run(mode, root, out, sets, gpus=0, timeout=3000):
    ray_tmp = tempfile.mkdtemp(prefix="rfb-")
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, __file__, "--child", mode, "--root", root, "--out-dir", out, "--sets", json.dumps(sets),
           "--gpus", str(gpus), "--ray-tmp", ray_tmp]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for ln in r.stdout.splitlines():
        if ln.startswith("RESULT "):
            return json.loads(ln[7:])
    raise RuntimeError(f"{mode} failed ({r.returncode}): {r.stderr[-3000:]}")


def busy_fraction(trace: str, gpus: int) -> dict:
    calls = []
    for f in os.listdir(trace):
        for ln in open(os.path.join(trace, f)):
            pid, a, b, n = ln.split()
            calls.append((float(a), float(b)))
    t0, t1 = min(a for a, _ in calls), max(b for _, b in calls)
    lo, hi = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
    busy = sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in calls)
    return {"busy_fraction": busy / (gpus * (hi - lo)), "window_s": hi - lo, "calls": len(calls),
            "actors": len(os.listdir(trace))}


def queue_depths(out: str, png: str | None = None) -> dict:
    """Steady-state (middle 80% of the run) mean and max of each queue and stage occupancy, in units."""
    from instsynth.views.status import stage_queues

    units = []
    for name in os.listdir(os.path.join(out, "_runs")):
        units += json.load(open(os.path.join(out, "_runs", name)))["units"]
    q = stage_queues(units, step=0.25)
    n = len(q["t"])
    lo, hi = int(0.1 * n), max(int(0.9 * n), int(0.1 * n) + 1)
    series = {**{f"queued {k}": v for k, v in q["queued"].items()}, **{f"in {k}": v for k, v in q["running"].items()}}
    summary = {k: {"mean": sum(v[lo:hi]) / (hi - lo), "max": max(v[lo:hi])} for k, v in series.items()}
    if png:
        from instsynth.views.status import queues_chart

        with open(png, "wb") as f:
            f.write(queues_chart(units, "simulated GPU fleet: queue depths and stage occupancy over the run",
                                 (q["t"][lo], q["t"][hi - 1])))
    return summary


def demand_chart(res: dict, png: str) -> None:
    """Busy fraction and delivered items/s against the fleet's demand (fraction of the CPU stages' rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res["demand_curve"]
    x = [p["demand"] for p in c]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(x, [p["busy_fraction"] for p in c], "o-")
    ax[0].axhline(0.9, color="grey", ls="--", label="target 90%")
    ax[0].set(xlabel="fleet demand / CPU stages' items/s alone", ylabel="GPUs busy (steady state)", ylim=(0, 1.05))
    ax[0].legend()
    ax[1].plot(x, [p["delivered_items_per_s"] for p in c], "o-", label="delivered to the GPUs")
    ax[1].plot(x, [d * res["cpu_stages"]["items_per_s_steady"] for d in x], "--", label="the GPUs' demand")
    ax[1].set(xlabel="fleet demand / CPU stages' items/s alone", ylabel="items/s")
    ax[1].legend()
    fig.suptitle(f"{res['gpus']} simulated GPUs on {res['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["job", "memory", "idle"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    ap.add_argument("--sets", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--ray-tmp", help=argparse.SUPPRESS)
    ap.add_argument("--gpus", type=int, default=16)
    ap.add_argument("--items", type=int, default=400, help="items of the larger CPU-stage job and of the fleet run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None, help="queue depths over the fleet run")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides of the timed runs")
    ap.add_argument("--demand", type=lambda v: [float(x) for x in v.split(",")], default=[0.8],
                    help="the fleet's demand as fractions of the CPU stages' items/s, e.g. 0.6,0.7,0.8 (the last is "
                         "the reported fleet run)")
    ap.add_argument("--curve-png", default=None, help="busy fraction against demand (with several --demand)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only-memory", action="store_true", help="step 3 alone (no timing in it)")
    args = ap.parse_args()
    if args.child == "job":
        child_job(args)
        return 0
    if args.child == "memory":
        child_memory(args)
        return 0
    if args.child == "idle":
        child_idle(args)
        return 0
    from instsynth.datasets.sample import write_sample

    tmp = tempfile.mkdtemp(prefix="bench-fleet-")
    res = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)", "gpus": args.gpus,
           "set": args.set}
    try:
        root = os.path.join(tmp, "root")
        write_sample(root, images=max(4, args.items // 24 + 2), size=(256, 128), seed=0, val_fraction=0.0001)
        base = ["run.progress=false", "run.rows_per_unit=4", "plan.min_pixels=16", "plan.variants=8",
                "generator.name=simulate", "generator.batch_size=4", *args.set]
        small, big = args.items // 4, args.items
        if not args.only_memory:
            # 1. the CPU stages' steady state
            # the fastest of two runs per size: a single short run on a shared VM read anywhere from 37 to 63
            # items/s, and cost_s (so the fleet's demand) follows that number
            walls, tries = {}, {}
            for n in (small, big):
                tries[n] = [run("job", root, os.path.join(tmp, f"cpu-{n}-{i}"),
                                base + ["generator.params.cost_s=0", f"run.limit={n}"])["wall_s"] for i in range(2)]
                walls[n] = min(tries[n])
            cpu_rate = (big - small) / max(walls[big] - walls[small], 1e-9)
            res["cpu_stages"] = {"items_per_s_steady": cpu_rate, "walls": walls, "tries": tries}
            # 2. the fleet, at each demand (the GPUs' items/s as a fraction of the CPU stages'; the is 0.8)
            curve = []
            for demand in args.demand:
                cost = args.gpus / (demand * cpu_rate)
                trace, out = os.path.join(tmp, f"trace-{demand}"), os.path.join(tmp, f"fleet-{demand}")
                fleet = run("job", root, out,
                            base + [f"generator.params.cost_s={cost}", f"generator.params.trace={trace}",
                                    "generator.num_gpus=1", "generator.num_cpus=0", f"generator.min_actors={args.gpus}",
                                    f"generator.max_actors={args.gpus}", f"run.limit={big}"], gpus=args.gpus)
                busy = busy_fraction(trace, args.gpus)
                curve.append({"demand": demand, "cost_s": cost, **fleet, **busy, "ideal_items_per_s": args.gpus / cost,
                              "delivered_items_per_s": busy["busy_fraction"] * args.gpus / cost,
                              "queues_units": queue_depths(out, args.png if demand == args.demand[-1] else None)})
                print(json.dumps(curve[-1]), flush=True)
            res["cost_s"], res["fleet"] = curve[-1]["cost_s"], curve[-1]
            # what the fleet itself costs this machine: its actors idle (no work), in cores
            res["fleet_overhead"] = run("idle", root, os.path.join(tmp, "idle"), [], gpus=args.gpus)
            if len(curve) > 1:
                res["demand_curve"] = [{k: c[k] for k in ("demand", "cost_s", "busy_fraction", "delivered_items_per_s")}
                                       for c in curve]
                if args.curve_png:
                    demand_chart(res, args.curve_png)
            print(json.dumps(res, indent=1), flush=True)
        # 3. driver memory per planned item
        if not args.skip_memory:
            mem = {}
            for n in (10_000, 100_000):
                r = os.path.join(tmp, f"mroot-{n}")
                write_sample(r, images=n // 24 + 2, size=(128, 64), seed=0, val_fraction=0.0001)
                got = run("memory", r, os.path.join(tmp, f"mem-{n}"),
                          ["run.progress=false", "run.executor=local", "plan.min_pixels=4", "plan.variants=8",
                           "generator.name=identity", "run.limit=8"])
                mem[n] = got
                shutil.rmtree(r, ignore_errors=True)
            (n0, a), (n1, b) = sorted(mem.items())
            slope = (b["uss_mb"] - a["uss_mb"]) * 2**20 / (b["planned"] - a["planned"])
            res["driver"] = {"runs": mem, "uss_bytes_per_planned_item": slope,
                             "uss_1M_mb": a["uss_mb"] + slope * (1e6 - a["planned"]) / 2**20}
        print(json.dumps(res, indent=1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
