"""The paired experiment: baseline (originals only) vs augmented (originals + generators).

Both runs share seed, schedule, model and evaluation; only ``train.dirs`` differs.  The report holds
both APs per class and their difference, like the paper's Tables II-III.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

from instsynth import storage
from instsynth.config import Config, ConfigError, to_dict
from instsynth.train.evaluate import evaluate_checkpoint, format_table


def run_name(cfg: Config, arm: str, catalog) -> str:
    """``<name>-<arm>-<hash>``: the hash covers the arm's data (every committed row address) and the
    training config, so a changed experiment never resumes a stale run; equal inputs resume."""
    t = to_dict(cfg)["train"]
    for k in ("dirs", "name", "storage_path"):
        t.pop(k)
    h = hashlib.sha1(json.dumps({"data": catalog.fingerprint(), "train": t}, sort_keys=True).encode())
    return f"{cfg.train.name}-{arm}-{h.hexdigest()[:8]}"


def run_experiment(cfg: Config, log=print) -> dict:
    from instsynth.train.data import build_catalog
    from instsynth.train.launch import check_inputs, resolve_paths
    from instsynth.train.trainer import run_training

    cfg = resolve_paths(cfg)
    e, t = cfg.experiment, cfg.train
    if not e.originals:
        raise ConfigError("experiment.originals: give the originals output dir(s)")
    if not t.eval_root:
        raise ConfigError("train.eval_root: the experiment evaluates on a Cityscapes root's val split")
    check_inputs(cfg, e.originals + e.synthetic)
    results, names = {}, {}
    for arm, dirs in (("baseline", e.originals), ("augmented", e.originals + e.synthetic)):
        c = copy.deepcopy(cfg)  # both arms: same seed, schedule, model and evaluation
        c.train.dirs = list(dirs)
        catalog = build_catalog(dirs, t.synthetic_ratio, t.seed)
        c.train.name = names[arm] = run_name(c, arm, catalog)
        log(f"== {arm}: training {c.train.name} on {len(dirs)} dir(s)")
        result = run_training(c, log, catalog)
        res = evaluate_checkpoint(result.checkpoint.path, t.eval_root, t.eval_split, t.eval_max_images,
                                  short_edge=t.eval_short_edge)
        results[arm] = res
    base, aug = results["baseline"]["cityscapes"], results["augmented"]["cityscapes"]

    def diff(a, b):
        return None if a is None or b is None else b - a
    report = {
        "model": t.model.name, "iterations": t.iterations, "seed": t.seed, "synthetic": e.synthetic,
        "runs": names, "test_scale": results["baseline"]["test_scale"],
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
