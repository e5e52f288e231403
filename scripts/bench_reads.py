"""What a training sample costs to read, before and after row-level reads, on the counting S3 server.

    python scripts/bench_reads.py [--out docs/bench_reads.json]

For two image sizes (256x128 and full-size 2048x1024 synthetic scenes; identity generator, 8 rows per
part), the same job is written twice into the local S3 server (``tests/s3server.py``, moto on
127.0.0.1; nothing leaves the machine):

* ``before``: the previous layout - every column zstd-compressed, no row offsets in the markers, so a
  sample means reading its whole part;
* ``after``: PNG columns stored as they are, each row's PNG offsets in its commit marker, so a sample
  is two ranged GETs.

Reported per layout: part bytes, ``load_dataset(OUT)`` time (on a local copy), and for 64 samples
through the trainer's reader (``train.data.read_rows``, one sample per call, as the loader's threads
do): requests per sample and bytes read / bytes used (the row's two PNGs).  Targets: bytes read
<= 1.2x bytes used, <= 3 requests per sample, part bytes <= 1.1x and ``load_dataset`` time <= 1.2x
the ``before`` layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the tests' S3 server: tests/s3server.py


def measure(layout: str, root: str, out: str, local: str, server, samples: int, variants: int,
            generator: str = "identity") -> dict:
    import datasets

    from instsynth.config import load_config
    from instsynth.io import storage
    from instsynth.output import commits
    from instsynth.output.ledger import committed_parts
    from instsynth.synth.driver import run_synth
    from instsynth.train.data import build_catalog, read_rows

    saved = commits.RAW_COLUMNS
    if layout == "before":
        commits.RAW_COLUMNS = ()  # every column zstd, no offsets: what parts were before
    try:
        cfg = load_config(os.path.join(REPO, "configs", "debug.yaml"),
                          [f"generator.name={generator}", "run.executor=local", "run.progress=false",
                           "run.rows_per_unit=8", "plan.min_pixels=16",
                           f"plan.variants={variants}", "quality.min_changed_inside=0", "quality.min_inside_share=0"])
        run_synth(root, out, cfg, log=lambda *a: None)
    finally:
        commits.RAW_COLUMNS = saved
    part_bytes = sum(storage.list_sizes(storage.join(out, "data")).values())
    cat = build_catalog([out])
    addrs = (cat.orig + cat.synth)[:samples]
    server.reset()
    used = 0
    for a in addrs:
        row = read_rows([a])[0]
        used += len(row["image"]) + len(row["labels"])
    reqs = server.count("GET", "data")
    read = server.bytes_sent("data")
    paths = [p for p in storage.walk(out) if "/_claims/" not in p]
    for p, data in zip(paths, storage.read_many(paths)):
        storage.write_bytes(os.path.join(local, storage.relpath(p, out)), data)
    times = []
    for k in range(3):  # best of 3, each into a fresh cache (the first call also pays imports)
        t0 = time.time()
        ds = datasets.load_dataset(local, split="train", cache_dir=f"{local}-hf{k}")
        times.append(time.time() - t0)
    load_s = min(times)
    return {"rows": len(ds), "parts": len(committed_parts(out)), "part_bytes": part_bytes,
            "samples": len(addrs), "requests_per_sample": reqs / len(addrs), "bytes_read": read, "bytes_used": used,
            "read_over_used": read / used, "load_dataset_s": load_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--generator", default="identity,recolor",
                    help="generators (identity keeps variants' pixels identical; recolor repaints each variant)")
    ap.add_argument("--variants", default="2,1", help="plan.variants per run (variants of one instance share "
                    "pixels, which zstd across rows found in the old layout)")
    args = ap.parse_args()
    import boto3

    from instsynth.datasets.sample import write_sample
    from tests.s3server import CountingS3

    server = CountingS3().start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.endpoint})
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="bench")
    tmp = tempfile.mkdtemp(prefix="bench-reads-")
    result = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)", "sizes": {}}
    try:
        runs = [(f"{name} variants={v} {g}", size, images, int(v), g) for g in args.generator.split(",")
                for v in args.variants.split(",")
                for name, size, images in (("256x128", (256, 128), 160), ("2048x1024", (2048, 1024), 16))]
        for name, size, images, variants, gen in runs:
            root = os.path.join(tmp, f"root-{size[0]}")
            if not os.path.exists(root):
                write_sample(root, images=images, size=size, seed=0, val_fraction=0.0001)
            res = {}
            key = name.replace(" ", "-").replace("=", "")
            for layout in ("before", "after"):
                res[layout] = measure(layout, root, f"s3://bench/{key}-{layout}", os.path.join(tmp, f"{key}-{layout}"),
                                      server, args.samples, variants, gen)
            b, a = res["before"], res["after"]
            res["ratios"] = {"part_bytes_after_over_before": a["part_bytes"] / b["part_bytes"],
                             "load_dataset_after_over_before": a["load_dataset_s"] / b["load_dataset_s"]}
            result["sizes"][name] = res
            print(name, json.dumps(res, indent=1), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
