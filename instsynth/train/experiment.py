"""The paired experiment: baseline (originals only) vs augmented (originals + generators).

Both runs share seed, schedule, model and evaluation; only ``train.dirs`` differs.  The report holds
both APs per class and their difference, like the paper's Tables II-III.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

from instsynth.config import Config, ConfigError, to_dict
from instsynth.io import storage
from instsynth.train.data import build_catalog
from instsynth.train.evaluate import evaluate_checkpoint, format_table, scores
from instsynth.train.launch import check_inputs, resolve_paths
from instsynth.train.stats import mean_std, paired_interval
from instsynth.train.trainer import checkpoint_uri, run_training


def run_name(cfg: Config, arm: str, catalog, k: int = 0) -> str:
    """``<name>-<arm>-<hash>`` (seed k > 0: ``<name>-<arm>-seed<seed>-<hash>``): the hash covers what this
    arm trains on - its data (every committed row address) and the training config - so a changed
    experiment never resumes a stale run and an unchanged one resumes.  An arm without synthetic rows
    does not depend on ``train.synthetic_ratio``, so its hash sees that key at its default: changing
    the synthetic side reuses finished baseline runs."""
    t = to_dict(cfg)["train"]
    # where, how loudly and how the samples arrive (the same samples either way), not what is trained
    for key in ("dirs", "name", "storage_path", "verbose", "max_failures", "ingest", "ingest_cpus", "placement"):
        t.pop(key, None)
    defaults = to_dict(Config())["train"]
    for key in ("eval_image_root", "schedule", "lr_steps", "lr_gamma", "mapper", "max_size",
                "eval_max_size"):  # keys added later: at their
        if t.get(key) == defaults.get(key):  # defaults, names made before them stay valid
            t.pop(key, None)
    if not catalog.synth:  # hashed at its default, so names made before this rule stay valid
        t["synthetic_ratio"] = to_dict(Config())["train"]["synthetic_ratio"]
    h = hashlib.sha1(json.dumps({"data": catalog.fingerprint(), "train": t}, sort_keys=True).encode())
    seed = f"-seed{cfg.train.seed}" if k else ""  # seed 0 keeps the names runs had before --seeds
    return f"{cfg.train.name}-{arm}{seed}-{h.hexdigest()[:8]}"


def final_checkpoint(result, iterations: int) -> str:
    """The run's last checkpoint, which must be at ``iterations``: the paired comparison scores it,
    never ``best/`` (chosen on the same val split the report scores: a selection bias)."""
    path = checkpoint_uri(result.checkpoint)
    step = json.loads(storage.read_bytes(storage.join(path, "model.json")))["step"] if path else None
    if step != iterations:
        raise ConfigError(f"train.iterations: the run's last checkpoint is at step {step}, not {iterations}")
    return path


def run_experiment(cfg: Config, log=print) -> dict:
    """Both arms for each of ``experiment.seeds`` seeds (run k: ``train.seed + k``), resumable run by run;
    the final checkpoints are scored; the report gives per-arm mean +- std over seeds and the paired
    difference with its 95% interval."""
    cfg = resolve_paths(cfg)
    e, t = cfg.experiment, cfg.train
    if not e.originals:
        raise ConfigError("experiment.originals: give the originals output dir(s)")
    if not t.eval_root:
        raise ConfigError("train.eval_root: the experiment evaluates on a Cityscapes root's val split or a COCO JSON")
    if e.seeds < 1:
        raise ConfigError(f"experiment.seeds: {e.seeds}: give 1 or more")
    check_inputs(cfg, e.originals + e.synthetic)
    arms = (("baseline", e.originals), ("augmented", e.originals + e.synthetic))
    per_seed, names = [], {a: [] for a, _ in arms}
    for k in range(e.seeds):
        seed = t.seed + k
        row = {"seed": seed}
        for arm, dirs in arms:
            c = copy.deepcopy(cfg)  # both arms of a seed: same init, sample order, crops, schedule, evaluation
            c.train.dirs = list(dirs)
            c.train.seed = seed
            catalog = build_catalog(dirs, t.synthetic_ratio, seed)
            c.train.name = run_name(c, arm, catalog, k)
            names[arm].append(c.train.name)
            log(f"== seed {seed} ({k + 1}/{e.seeds}), {arm}: {c.train.name} on {len(dirs)} dir(s)")
            result = run_training(c, log, catalog)
            row[arm] = evaluate_checkpoint(final_checkpoint(result, t.iterations), t.eval_root, t.eval_split,
                                           t.eval_max_images, short_edge=t.eval_short_edge,
                                           max_size=t.eval_max_size,
                                           image_root=t.eval_image_root, verbose=t.verbose)
        per_seed.append(row)

    def diff(a, b):
        return None if a is None or b is None else b - a
    first = per_seed[0]
    base, aug = scores(first["baseline"]), scores(first["augmented"])
    report = {
        "model": t.model.name, "iterations": t.iterations, "seed": t.seed, "seeds": [r["seed"] for r in per_seed],
        "synthetic": e.synthetic, "checkpoint": f"final (step {t.iterations}); best/ is not used",
        "runs": {a: n[0] for a, n in names.items()}, "seed_runs": names,
        "test_scale": first["baseline"]["test_scale"], "images": first["baseline"]["images"],
        "baseline": first["baseline"], "augmented": first["augmented"],
        "delta": {"AP": diff(base["AP"], aug["AP"]), "AP50": diff(base["AP50"], aug["AP50"]),
                  "per_class": {c: diff(base["per_class"][c]["ap"], aug["per_class"][c]["ap"])
                                for c in base["per_class"]}},
        "metric": base["metric"],
        "per_seed": [{"seed": r["seed"], **{a: {m: scores(r[a])[m] or 0.0 for m in ("AP", "AP50")}
                                            for a, _ in arms}} for r in per_seed],
    }
    report["arms"] = {a: {m: dict(zip(("mean", "std"), mean_std([r[a][m] for r in report["per_seed"]])))
                          for m in ("AP", "AP50")} for a, _ in arms}
    report["paired"] = {m: paired_interval([r["baseline"][m] for r in report["per_seed"]],
                                           [r["augmented"][m] for r in report["per_seed"]]) for m in ("AP", "AP50")}
    text = format_report(report, {f"{t.model.name} (original)": first["baseline"],
                                  f"{t.model.name} (+ {', '.join(os.path.basename(s.rstrip('/')) for s in e.synthetic)})":
                                  first["augmented"]})
    storage.write_bytes(storage.join(e.out, "report.json"), json.dumps(report, indent=1).encode())
    storage.write_bytes(storage.join(e.out, "report.md"), f"```\n{text}\n```\n".encode())
    log(text)
    return report


def format_report(report: dict, first: dict) -> str:
    """Seed 0's Table II-style rows, then the seeds: per-arm mean +- std and the paired difference."""
    def pts(v):
        return "-" if v is None else f"{100 * v:.2f}"
    lines = [format_table(first), "",
             f"{len(report['seeds'])} seed(s) {report['seeds']}, scored at the {report['checkpoint']}:"]
    lines.append(f"{'arm':<12}{'AP mean':>9}{'AP std':>8}{'AP50 mean':>11}{'AP50 std':>10}")
    for arm, v in report["arms"].items():
        lines.append(f"{arm:<12}{pts(v['AP']['mean']):>9}{pts(v['AP']['std']):>8}"
                     f"{pts(v['AP50']['mean']):>11}{pts(v['AP50']['std']):>10}")
    for m in ("AP", "AP50"):
        p = report["paired"][m]
        ci = f"[{pts(p['lo'])}, {pts(p['hi'])}]" if p["lo"] is not None else "(no interval)"
        lines.append(f"augmented - baseline, {m}: {pts(p['mean'])} points, 95% interval {ci}; "
                     f"per seed {', '.join(pts(d) for d in p['diffs'])}: {p['verdict']}")
    return "\n".join(lines)
