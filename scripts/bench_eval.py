"""What scoring a Cityscapes split costs, with predicted masks as files (before) and kept in memory (after).

    python scripts/bench_eval.py [--images 2 4 8] [--preds 100] [--out docs/bench_eval.json]

For each image count, a full-size (2048x1024) sample split is scored by ``evaluate_model`` with a
predictor that returns ``--preds`` masks per image - the true instances a few pixels off, then random
boxes - (a model's top-100: what every validation scores).  Each measurement runs in a fresh process (peak RSS is per process):

* ``before``: the previous path - every image's full-size masks held until the end, each written as a
  PNG for the official evaluator and read back by it;
* ``after``: the scorers fed one image at a time, masks kept as RLEs and served to the evaluator from
  memory (``train/cs_eval.py``).

Reported: wall seconds, seconds per image and peak RSS per image count, and the after/before ratios
in the same run.  Both must give the same AP (checked).  Targets: peak memory flat in the number of
images (after), and not slower than before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _predictor(n_preds: int):
    import numpy as np

    from instsynth.datasets.cityscapes import THING_IDS, instance_number

    def predict(img, ids):
        rng = np.random.default_rng(int(ids.sum()) % 2**32)
        out = []
        for v in np.unique(ids).tolist():  # the true instances, a few pixels off: a nonzero AP to compare
            lab, is_instance = instance_number(v)
            if is_instance and lab in THING_IDS and len(out) < n_preds // 2:
                out.append({"mask": np.roll(ids == v, int(rng.integers(-6, 7)), axis=1), "label": THING_IDS[lab],
                            "score": float(rng.random())})
        while len(out) < n_preds:
            m = np.zeros(ids.shape, bool)
            h, w = rng.integers(20, 300), rng.integers(20, 500)
            y, x = rng.integers(0, ids.shape[0] - h), rng.integers(0, ids.shape[1] - w)
            m[y:y + h, x:x + w] = True
            out.append({"mask": m, "label": int(rng.integers(0, 8)), "score": float(rng.random())})
        return out
    return predict


def _before(cs_eval):
    """The previous scoring path, rebuilt from the current scorer: full-size masks held, PNG files."""
    import numpy as np

    from instsynth.datasets import encode_png

    class FileScorer(cs_eval.CityscapesScorer):
        held = []

        def add(self, gt_file, preds):
            masks = [cs_eval.decode_mask(p["rle"]).astype(bool) for p in preds]
            FileScorer.held.append(masks)  # the old evaluate_model kept every image's masks to the end
            stem = f"img{len(self._txt):06d}"
            super().add(gt_file, preds)
            for k, m in enumerate(masks):
                name = os.path.join(self._pred_dir, f"{stem}_{k:04d}.png")
                with open(name, "wb") as f:
                    f.write(encode_png(np.asarray(m, np.uint8) * 255))
                del self._masks[name]  # the evaluator opens the file
    return FileScorer


def child(mode: str, root: str, images: int, n_preds: int) -> dict:
    from instsynth.train import cs_eval, evaluate

    if mode == "before":
        evaluate.CityscapesScorer = _before(cs_eval)
    t0 = time.time()
    res = evaluate.evaluate_model(None, root, "val", max_images=images, predictor=_predictor(n_preds))
    wall = time.time() - t0
    return {"mode": mode, "images": res["images"], "wall_s": wall, "s_per_image": wall / res["images"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "AP": res["cityscapes"]["AP"], "coco_AP": res["coco"]["AP"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--preds", type=int, default=100)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "ROOT", "IMAGES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]), a.preds)))
        return
    from instsynth.datasets.sample import write_sample

    n = max(a.images)
    result = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
              "preds_per_image": a.preds, "frame": "2048x1024", "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        write_sample(tmp, images=n + 1, val_fraction=n / (n + 1))  # n val images, one train
        for images in a.images:
            pair = {}
            for mode in ("before", "after"):
                r = subprocess.run([sys.executable, __file__, "--preds", str(a.preds), "--child", mode, tmp,
                                    str(images)], capture_output=True, text=True, check=True, cwd=REPO)
                pair[mode] = json.loads(r.stdout.strip().splitlines()[-1])
                result["runs"].append(pair[mode])
                print(json.dumps(pair[mode]), flush=True)
            assert pair["before"]["AP"] == pair["after"]["AP"], pair  # the same scores either way
            pair["after"]["time_ratio"] = pair["after"]["wall_s"] / pair["before"]["wall_s"]
    after = [r for r in result["runs"] if r["mode"] == "after"]
    before = [r for r in result["runs"] if r["mode"] == "before"]
    result["summary"] = {
        "after_over_before_time": [round(r["time_ratio"], 3) for r in after],
        "peak_rss_mb": {m: [round(r["peak_rss_mb"]) for r in rs] for m, rs in (("before", before), ("after", after))},
        "images": a.images,
    }
    print(json.dumps(result["summary"], indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
