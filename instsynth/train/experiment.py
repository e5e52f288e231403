"""The paired experiment: baseline (originals only) vs augmented (originals + generators).

Both runs share seed, schedule, model and evaluation; only ``train.dirs`` differs.  The report holds
both APs per class and their difference, like the paper's Tables II-III.
"""

from __future__ import annotations

import copy
import json
import os

from instsynth import storage
from instsynth.config import Config
from instsynth.train.evaluate import evaluate_checkpoint, format_table


def run_experiment(cfg: Config, log=print) -> dict:
    from instsynth.train.trainer import run_training

    e, t = cfg.experiment, cfg.train
    if not e.originals:
        raise ValueError("experiment.originals: give the originals output dir(s)")
    if not t.eval_root:
        raise ValueError("train.eval_root: the experiment evaluates on a Cityscapes root's val split")
    results = {}
    for arm, dirs in (("baseline", e.originals), ("augmented", e.originals + e.synthetic)):
        c = copy.deepcopy(cfg)
        c.train.dirs = list(dirs)
        c.train.name = f"{t.name}-{arm}"
        log(f"== {arm}: training on {len(dirs)} dir(s)")
        result = run_training(c, log)
        res = evaluate_checkpoint(result.checkpoint.path, t.eval_root, t.eval_split, t.eval_max_images)
        results[arm] = res
    base, aug = results["baseline"]["cityscapes"], results["augmented"]["cityscapes"]

    def diff(a, b):
        return None if a is None or b is None else b - a
    report = {
        "model": t.model.name, "iterations": t.iterations, "seed": t.seed, "synthetic": e.synthetic,
        "baseline": results["baseline"], "augmented": results["augmented"],
        "delta": {"AP": diff(base["AP"], aug["AP"]), "AP50": diff(base["AP50"], aug["AP50"]),
                  "per_class": {c: diff(base["per_class"][c]["ap"], aug["per_class"][c]["ap"])
                                for c in base["per_class"]}},
    }
    table = format_table({f"{t.model.name} (original)": results["baseline"],
                          f"{t.model.name} (+ {', '.join(os.path.basename(s.rstrip('/')) for s in e.synthetic)})":
                          results["augmented"]})
    storage.write_bytes(storage.join(e.out, "report.json"), json.dumps(report, indent=1).encode())
    storage.write_bytes(storage.join(e.out, "report.md"), f"```\n{table}\n```\n".encode())
    log(table)
    d = report["delta"]
    if d["AP"] is not None:
        log(f"augmentation: AP {100 * d['AP']:+.2f}, AP50 {100 * d['AP50']:+.2f} (points)")
    return report
