"""Per-image cost of the CPU stages vs the bare PNG decode+encode of the same image (same run).

    python scripts/bench_cpu_stages.py [--images 8] [--size 2048x1024]

Prints, per 2048x1024 sample image, decode (image + instance map), Phase 1 (selection, square crops,
masks), Phase 3 (focused window, paste-back), encode (output PNGs), and the ratio of their sum to
the baseline: decoding the image's PNG and encoding it again.  Target: <= 1.5x.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from instsynth.config import load_config, parse_size
from instsynth.datasets import decode_image, encode_index, encode_png
from instsynth.datasets import decode_index as decode_ids
from instsynth.datasets.cityscapes import THING_CLASSES, discover, regions_from_ids
from instsynth.datasets.sample import write_sample
from instsynth.io import storage
from instsynth.plan.rng import item_rng
from instsynth.plan.select import prepare_instance, select_instances, square_box
from instsynth.synth.compose import cut_window, focused_window, paste


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", default="2048x1024")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config()
    root = tempfile.mkdtemp(prefix="bench-cpu-")
    write_sample(root, args.images, parse_size(args.size, "--size"), seed=0, val_fraction=0.0)
    recs = list(discover(root, "train"))
    blobs = [(storage.read_bytes(storage.join(root, r.image)), storage.read_bytes(storage.join(root, r.labels)))
             for r in recs]
    t = {"baseline": 0.0, "decode": 0.0, "phase1": 0.0, "phase3": 0.0, "encode": 0.0}
    items = 0
    for _ in range(args.repeat):
        for img_b, ids_b in blobs:
            s = time.perf_counter()
            encode_png(decode_image(img_b, "x"))
            t["baseline"] += time.perf_counter() - s

            s = time.perf_counter()
            img = decode_image(img_b, "img")
            labels = regions_from_ids(decode_ids(ids_b, "ids"))
            ids = labels.index
            t["decode"] += time.perf_counter() - s

            s = time.perf_counter()
            sel = select_instances(labels, cfg.plan.top_k, cfg.plan.min_pixels, THING_CLASSES)
            crops = [(inst, square_box(inst.bbox, ids.shape[1], ids.shape[0], cfg.plan.margin)) for inst in sel]
            prepared = [(inst, box, *prepare_instance(img, ids, inst.index, box)) for inst, box in crops]
            t["phase1"] += time.perf_counter() - s

            s = time.perf_counter()
            counts, instances = labels.counts(), labels.instances()
            outs = []
            for inst, box, crop, mask in prepared:
                win = focused_window(ids, inst.index, inst.bbox, item_rng(0, str(inst.instance_id), "window"),
                                     counts=counts, instances=instances)
                wi, wids = cut_window(img, ids, win.box)
                outs.append((paste(wi, win.box[:2], crop, mask, box), wids))
            t["phase3"] += time.perf_counter() - s

            s = time.perf_counter()
            for wi, wids in outs:
                encode_png(wi)
                encode_index(wids)
            t["encode"] += time.perf_counter() - s
            items += len(outs)
    n = len(blobs) * args.repeat
    ours = t["decode"] + t["phase1"] + t["phase3"] + t["encode"]
    print(f"{len(blobs)} images of {args.size} x {args.repeat} repeats, {items / args.repeat:.0f} work items per pass")
    for k in ("decode", "phase1", "phase3", "encode"):
        print(f"  {k:<8} {1000 * t[k] / n:8.1f} ms/image")
    print(f"  {'total':<8} {1000 * ours / n:8.1f} ms/image")
    print(f"  baseline (PNG decode + encode of the image) {1000 * t['baseline'] / n:8.1f} ms/image")
    print(f"ratio total/baseline: {ours / t['baseline']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
