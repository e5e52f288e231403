"""What `instsynth report` costs at 10k rows: time, size on disk, peak memory, and a re-run from its cache.

    python scripts/bench_report.py [--rows 10000] [--size 256x128] [--out docs/bench_report.json]

Writes a synthetic sample and an identity-generator output of about ``--rows`` rows (local disk, local
executor), then the report twice in fresh processes: the first renders every unit (thumbnails, numbers),
the second finds every unit in its cache (keyed by the markers' SHA-256).  Peak RSS of each report
process is measured (the report streams unit by unit, so it should not grow with the rows).
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


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def report_run(out: str, site: str) -> dict:
    code = ("import json, resource, time; from instsynth.views.site import write_report; t = time.time(); "
            f"s = write_report([{out!r}], {site!r}, log=lambda *a: None); "
            "s['seconds'] = time.time() - t; "
            "s['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print('RESULT', json.dumps(s))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--size", default="256x128")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from instsynth.config import load_config, parse_size
    from instsynth.datasets.sample import write_sample
    from instsynth.synth.driver import run_synth

    tmp = tempfile.mkdtemp(prefix="bench-report-")
    try:
        root, out, site = (os.path.join(tmp, d) for d in ("root", "out", "site"))
        variants = 8
        write_sample(root, images=args.rows // (3 * variants) + 2, size=parse_size(args.size, "--size"), seed=0,
                     val_fraction=0.0001)
        t0 = time.time()
        s = run_synth(root, out, load_config(os.path.join(REPO, "configs", "debug.yaml"), [
            "run.executor=local", "run.progress=false", "run.rows_per_unit=8", "plan.min_pixels=16",
            f"plan.variants={variants}", f"run.limit={args.rows}"]), log=lambda *a: None)
        res = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)", "rows": s["committed_rows"],
               "image_size": args.size, "synth_s": time.time() - t0, "data_bytes": du(os.path.join(out, "data"))}
        first = report_run(out, site)
        res["first"] = {**first, "site_bytes": du(site),
                        "thumb_bytes": du(os.path.join(site, "thumbs")), "cache_bytes": du(os.path.join(site, "cache"))}
        res["rerun"] = report_run(out, site)
        print(json.dumps(res, indent=1))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
