"""Planning a COCO file the size of ``instances_train2017.json``: time and peak memory of `instsynth plan`
next to `pycocotools.coco.COCO(file)` loading the same file, in the same run.

    python scripts/bench_datasets.py [--images 118287] [--sizes 10000,40000,118287] [--out docs/bench_datasets.json]
                                     [--png docs/bench_datasets.png] [--work DIR]

For each size it writes a COCO instances file like train2017's (640x480-ish images, ~7.3 annotations
per image: polygons of 12-28 points in one or two parts, 1% crowd regions as uncompressed RLE, COCO's 80
category ids with their gaps; ~3.8 KB of JSON per image) and an empty file per image (the plan lists the
image folder; it never decodes an image), then runs, each in a fresh process measured by /usr/bin/time:

* ``python -c "from pycocotools.coco import COCO; COCO(file)"`` - the baseline every COCO user knows;
* ``instsynth plan file --out plan.parquet`` - the whole Phase 1 over every image (Eq. 1 needs each
  instance's visible pixels: every polygon is rasterized to RLE).

Target (issue 28): the plan at <= 1.5x the baseline's wall time and <= 1.0x its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# COCO's 80 category ids (1..90 with gaps)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _polygon(rng: random.Random, w: int, h: int) -> list[float]:
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = rng.uniform(5, w / 5), rng.uniform(5, h / 5)
    n = rng.randint(12, 28)
    import math

    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        r = rng.uniform(0.6, 1.0)
        pts += [round(cx + rx * r * math.cos(a), 2), round(cy + ry * r * math.sin(a), 2)]
    return pts


def write_coco(path: str, image_dir: str, images: int, seed: int = 0) -> dict:
    """Stream a train2017-like file to ``path`` (the dict never exists whole); empty image files."""
    rng = random.Random(seed)
    os.makedirs(image_dir, exist_ok=True)
    anns = 0
    sizes = []
    with open(path, "w") as f:
        f.write('{"info": {"description": "bench_datasets"}, "licenses": [], "images": [')
        for i in range(images):
            w, h = rng.choice([(640, 480), (640, 427), (480, 640), (500, 375)])
            sizes.append((w, h))
            name = f"{i + 1:012d}.jpg"
            open(os.path.join(image_dir, name), "wb").close()
            f.write(("," if i else "") + json.dumps({"id": i + 1, "file_name": name, "width": w, "height": h,
                                                     "license": 1, "date_captured": "2013-11-14 17:02:52"}))
        f.write('], "annotations": [')
        first = True
        for i in range(images):
            w, h = sizes[i]
            for _ in range(max(0, int(rng.gauss(7.3, 4)))):
                anns += 1
                if rng.random() < 0.01:  # crowd: uncompressed RLE over the whole image
                    total = w * h
                    a = rng.randint(0, total // 2)
                    segm = {"size": [h, w], "counts": [a, rng.randint(100, total // 4), total]}
                    segm["counts"][-1] = total - segm["counts"][0] - segm["counts"][1]
                    crowd = 1
                else:
                    segm = [_polygon(rng, w, h) for _ in range(1 if rng.random() < 0.8 else 2)]
                    crowd = 0
                ann = {"segmentation": segm, "area": 1000.0, "iscrowd": crowd, "image_id": i + 1,
                       "bbox": [1.0, 2.0, 3.0, 4.0], "category_id": rng.choice(COCO_CATEGORY_IDS), "id": anns}
                f.write(("" if first else ",") + json.dumps(ann))
                first = False
        f.write('], "categories": [' + ",".join(json.dumps({"id": c, "name": f"class{c}", "supercategory": "x"})
                                                for c in COCO_CATEGORY_IDS) + "]}")
    return {"images": images, "annotations": anns, "bytes": os.path.getsize(path)}


def timed(cmd: list[str], cwd: str) -> dict:
    """Wall seconds and peak RSS (MB) of ``cmd`` in a fresh process."""
    r = subprocess.run(["/usr/bin/time", "-f", "TIMED %e %M"] + cmd, capture_output=True, text=True, cwd=cwd)
    line = next((ln for ln in r.stderr.splitlines() if ln.startswith("TIMED ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{cmd[:3]} failed: {r.stderr[-2000:]}")
    _, sec, kb = line.split()
    return {"seconds": float(sec), "peak_rss_mb": round(int(kb) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,40000,118287", help="images per file (the curve; the last is the target)")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "bench_datasets.json"))
    ap.add_argument("--png", default=os.path.join(REPO, "docs", "bench_datasets.png"))
    ap.add_argument("--work", help="folder for the generated files (default: a temp dir, removed)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-datasets-")
    instsynth = os.path.join(os.path.dirname(sys.executable), "instsynth")
    points = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = os.path.join(work, f"coco{n}")
            src = os.path.join(root, "annotations", "instances_train2017.json")
            os.makedirs(os.path.dirname(src), exist_ok=True)
            made = write_coco(src, os.path.join(root, "train2017"), n)
            base = timed([sys.executable, "-c", f"from pycocotools.coco import COCO; COCO({src!r})"], work)
            plan = timed([instsynth, "plan", src, "--out", os.path.join(root, "plan.parquet")], work)
            p = {**made, "pycocotools_COCO": base, "instsynth_plan": plan,
                 "time_ratio": round(plan["seconds"] / base["seconds"], 2),
                 "memory_ratio": round(plan["peak_rss_mb"] / base["peak_rss_mb"], 2)}
            points.append(p)
            print(json.dumps(p), flush=True)
            shutil.rmtree(root)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    last = points[-1]
    result = {"machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
              "target": "plan <= 1.5x pycocotools COCO(file) wall time and <= 1.0x its peak RSS",
              "met": last["time_ratio"] <= 1.5 and last["memory_ratio"] <= 1.0, "points": points}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
        xs = [p["images"] for p in points]
        for key, label in (("pycocotools_COCO", "pycocotools COCO(file)"), ("instsynth_plan", "instsynth plan")):
            a.plot(xs, [p[key]["seconds"] for p in points], "o-", label=label)
            b.plot(xs, [p[key]["peak_rss_mb"] for p in points], "o-", label=label)
        a.set_xlabel("images in the file")
        a.set_ylabel("wall seconds")
        b.set_xlabel("images in the file")
        b.set_ylabel("peak RSS (MB)")
        a.legend(fontsize=8)
        fig.suptitle(f"planning a COCO file vs loading it with pycocotools ({result['machine']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.png)
    print(json.dumps({k: v for k, v in result.items() if k != "points"}))


if __name__ == "__main__":
    main()
