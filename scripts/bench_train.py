"""Training benchmarks: can the shipped trainer make a model learn, and how fast is a step.

    python scripts/bench_train.py [--scale tiny] [--iterations 1500] [--every 500] [--out DIR]
    python scripts/bench_train.py --arms fastinst:imagenet,maskrcnn:imagenet,fastinst:scratch,maskrcnn:scratch \\
        --iterations 1000 --every 500 --out DIR               # the four curves of FastInst vs the reference
    python scripts/bench_train.py --plot DIR/curve-*.json --out DIR   # one figure from arms run separately
    python scripts/bench_train.py --plot docs/bench_train_*_published_*.json --out DIR  # the protocol, from docs/
    python scripts/bench_train.py --arms fastinst:imagenet --revert all --recipe ours ...  # the ablation's old model
    python scripts/bench_train.py --scale full [--iters 30]      # on a GPU machine
    python scripts/bench_train.py --mapper-cost [--iters 6] --out DIR  # a step on crops vs the authors' mapper

``--scale tiny`` (learnability, CPU): the unmodified ``write_sample(images=80, size=1024x512, seed=0)``;
the shipped trainer (Ray Train, tiny FastInst from scratch) on its train rows; at fixed checkpoints,
AP50 on every train image (does the model fit?) and on every val image (does it generalise?), per
class and class-agnostic, plus seconds per iteration.  Targets (30 minutes, 2-core CPU): train-split
AP50 >= 0.5 and held-out AP50 >= 0.25.  Writes ``curve.json`` and ``curve.png`` into ``--out``.

``--scale full`` (GPU): FastInst R50-D3 at 360x720, batch 4, random weights, on crops of full-size
sample scenes: seconds per iteration in fp32 and under bf16 autocast, and GPU utilisation sampled
with nvidia-smi.  Target: bf16 not slower than fp32, <= 0.066 s/iter.

``--mapper-cost``: what ``train.mapper: fastinst`` (FastInst's authors' mapper: whole images or crops
resized back) costs a step against the default 384x192 crops, FastInst at its published width on the
bundled MobileNetV2, batch 2, the two kinds of step interleaved (after one warm-up each) so that other
load on the machine hits both alike; median seconds per step and mean padded pixels per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs"
    except Exception:  # noqa: BLE001
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU"


# -- learnability ------------------------------------------------------------------------------

#: FastInst's published optimisation (its Base-COCO config): LR 1e-4, backbone x0.1, no gradient clipping,
#: a 10-iteration warmup from x1.0 (none, in effect), constant LR with x0.1 steps at 89% and 96%
OFFICIAL_RECIPE = ["train.lr=1e-4", "train.backbone_lr_mult=0.1", "train.grad_clip=0", "train.warmup_iters=10",
                   "train.warmup_factor=1.0", "train.schedule=step"]

#: Mask2Former's published optimisation (its Cityscapes config): AdamW 1e-4, weight decay 0.05, backbone x0.1,
#: full-model clipping at 0.01, poly(0.9), no warmup
M2F_RECIPE = ["train.lr=1e-4", "train.backbone_lr_mult=0.1", "train.grad_clip=0.01", "train.warmup_iters=0",
              "train.schedule=poly"]


def published_recipe(model: str) -> list[str]:
    """Each family on its own published recipe (``--recipe official``); Mask R-CNN keeps the benchmark's."""
    return {"fastinst": OFFICIAL_RECIPE, "mask2former": M2F_RECIPE}.get(model, [])


def mask2former_arm(width: str) -> str:
    """The reference arm: transformers' Mask2Former on the package's MobileNetV2 (hidden 256 at the published
    width, 128 otherwise), 100 queries, 3 deformable encoder layers, 3 masked-attention layers, 12,544 points."""
    d = 256 if width == "published" else 128
    return (f"{{backbone: mobilenet_v2, feature_size: {d}, mask_feature_size: {d}, hidden_dim: {d}, "
            f"encoder_layers: 3, decoder_layers: 4, num_queries: 100, train_num_points: 12544}}")


def reverts(spec: str | None) -> list[str]:
    """``--revert``: FastInst's fixed deviations to restore (``all`` = the old model), checked by name."""
    from instsynth.train.models.fastinst import REVERTS

    names = list(REVERTS) if spec == "all" else [n for n in (spec or "").split(",") if n]
    bad = [n for n in names if n not in REVERTS]
    if bad:
        raise SystemExit(f"--revert: unknown {bad[0]!r}; valid: all, {', '.join(REVERTS)}")
    return names


def heldout_root(out: str, seed: int) -> str:
    """80 held-out images from another sample seed, all in ``val`` (``--heldout-seed``): scenes the training
    sample never drew, twice as many as its own 20 val images."""
    from instsynth.datasets.sample import write_sample

    root = os.path.join(out, f"heldout-seed{seed}")
    if not os.path.isdir(root):
        write_sample(root, images=80, size=(1024, 512), seed=seed, val_fraction=1.0)
    return root


def protocol_sample(out: str) -> tuple[str, str]:
    """The training sample (``write_sample(images=80, size=1024x512, seed=0)``) and its originals, written
    once into ``out`` (``cityscapes/``, ``original/``): what every arm, the mapper timing and
    ``diag_fastinst.py`` train on."""
    from instsynth.config import load_config
    from instsynth.datasets.sample import write_sample
    from instsynth.synth.originals import write_originals

    out = os.path.abspath(out)
    root, orig = os.path.join(out, "cityscapes"), os.path.join(out, "original")
    if not os.path.isdir(root):
        write_sample(root, images=80, size=(1024, 512), seed=0)
    if not os.path.isdir(orig):
        write_originals(root, orig, load_config(None), log=lambda *a: None)
    return root, orig


def mapper_cost(args, tiny: bool = False) -> dict:
    """``--mapper-cost`` (module docstring); ``tiny``: the tiny FastInst (the smoke test's)."""
    import numpy as np
    import torch

    from instsynth.config import load_config
    from instsynth.train.data import build_catalog, collate, load_samples, stream_spec
    from instsynth.train.models import build_model
    from instsynth.train.trainer import train_step

    _, orig = protocol_sample(args.out)
    cat = build_catalog([orig], seed=0)
    base = ["train.crop=384x192", "train.short_edge=[288, 480]", "train.batch_size=2"]
    mappers = ("crop", "fastinst")
    specs = {m: stream_spec(load_config(None, base + [f"train.mapper={m}"]).train, 0, 0, 1) for m in mappers}
    torch.manual_seed(0)
    model = build_model("fastinst", tiny=tiny, backbone="mobilenet_v2", num_classes=len(cat.classes))
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    times, pixels = {m: [] for m in mappers}, {m: [] for m in mappers}
    for k in range(args.iters + 1):
        for m in mappers:
            images, targets = collate(load_samples({"id": np.arange(2 * k, 2 * k + 2)}, cat, specs[m]), cat.class_ids)
            t = time.perf_counter()
            train_step(model, opt, [(images, targets)])
            if k:  # the first of each is the warm-up
                times[m].append(time.perf_counter() - t)
                pixels[m].append(images.shape[-2] * images.shape[-1])
    res = {"machine": machine(), "model": f"FastInst, {'tiny' if tiny else 'published width'}, MobileNetV2, batch 2",
           "steps": args.iters,
           **{m: {"median_s_per_step": float(np.median(times[m])), "mean_batch_pixels": float(np.mean(pixels[m]))}
              for m in mappers}}
    res["time_ratio"] = res["fastinst"]["median_s_per_step"] / res["crop"]["median_s_per_step"]
    res["pixel_ratio"] = res["fastinst"]["mean_batch_pixels"] / res["crop"]["mean_batch_pixels"]
    print(f"{res['machine']}: a step on the authors' mapper takes {res['time_ratio']:.2f}x a 384x192 crop step "
          f"({res['crop']['median_s_per_step']:.2f} -> {res['fastinst']['median_s_per_step']:.2f} s; "
          f"{res['pixel_ratio']:.1f}x the pixels)")
    return res


def tiny(args) -> dict:
    from instsynth.config import load_config
    from instsynth.ray_runtime import QUIET_HOOK
    from instsynth.train.evaluate import evaluate_checkpoint
    from instsynth.train.trainer import run_training

    out = os.path.abspath(args.out)
    root, orig = protocol_sample(out)
    model, init = (args.arm or "fastinst:scratch").split(":")
    arm = [f"train.model.name={model}", "train.model.tiny=true"]
    if args.arm:  # the four-curve comparison: one backbone for all, ImageNet weights or none
        # FastInst with the published 100 queries (the tiny twin has 20): with 20, only 46% of the matched
        # queries start inside their object here, 65% with 100 (the stride-16 grid allows 67%;
        # scripts/diag_fastinst.py); AP50 at 1,000 iterations was about the same either way
        q = f", num_queries: {args.queries}, test_topk: {args.queries}" if model == "fastinst" else ""
        if model == "fastinst" and args.revert:  # the ablation: named pre-issue-30 deviations restored
            q += f", revert: [{', '.join(reverts(args.revert))}]"
        if model == "fastinst" and args.width == "published":  # FastInst's own widths (FastInstConfig defaults):
            arm = [f"train.model.name={model}", "train.model.tiny=false"]  # hidden 256, 8 heads, FFN 1024, 3 layers
        if model == "mask2former":
            arm = [f"train.model.name={model}", "train.model.tiny=false", f"train.model.params={mask2former_arm(args.width)}"]
        else:
            arm += [f"train.model.params={{backbone: mobilenet_v2{q}}}"]
        if init == "imagenet":
            arm += ["train.model.backbone_weights=bundled"]
    sets = [f"train.dirs=[{orig}]", f"train.storage_path={out}/runs", f"train.name={args.name}",
            *arm, f"train.iterations={args.iterations}",
            f"train.checkpoint_every={args.checkpoint_every or args.every}", "train.keep_checkpoints=100",
            "train.num_workers=1",
            f"train.cpus_per_worker={os.cpu_count() or 2}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
            "train.backbone_lr_mult=1.0", f"train.warmup_iters={args.warmup}", "train.crop=384x192",
            "train.short_edge=[288, 480]", "train.eval_short_edge=384", "train.eval_every=1000000",
            *(published_recipe(model) if args.recipe == "official" else []), *args.set]
    heldout = heldout_root(out, args.heldout_seed) if args.heldout_seed is not None else root
    cfg = load_config(None, sets)
    import ray

    # the trainer takes every core; one extra logical CPU lets the Ray Data decode tasks run beside it
    ray.init(num_cpus=(os.cpu_count() or 2) + 1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": QUIET_HOOK})  # Ray Train's cleaner: a warning a second
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    t0 = time.time()
    starts = os.path.join(out, "runs", args.name, "starts.jsonl")
    before = len(_lines(starts))
    result = run_training(cfg, log=print)
    train_s = time.time() - t0
    ray.shutdown()  # scoring needs no Ray (and Ray's placement-group cleaner would log every few s meanwhile)
    resumed_from = launch_start(starts, before)
    ckpts = sorted((c for c, _ in result.best_checkpoints), key=lambda c: c.path)
    curve = []
    for c in ckpts:
        step = json.load(open(os.path.join(c.path, "model.json")))["step"]
        if not scored(step, args.every, args.iterations):
            continue
        point = {"step": step}
        for split, data in (("train", root), ("val", heldout)):
            r = evaluate_checkpoint(c.path, data, split, max_images=args.eval_images)
            point[split] = {"AP50": r["cityscapes"]["AP50"], "AP": r["cityscapes"]["AP"],
                            "agnostic_AP50": r["agnostic"]["AP50"], "images": r["images"],
                            "per_class_AP50": {k: v["ap50"] for k, v in r["cityscapes"]["per_class"].items()}}
            if args.check_windows:  # issue 30 item 6: the same checkpoint on training-sized windows pasted back
                from instsynth.train.data import parse_size

                w = evaluate_checkpoint(c.path, data, split, max_images=args.eval_images,
                                        windows=parse_size(cfg.train.crop, "train.crop"))
                point[split]["windows"] = {"AP50": w["cityscapes"]["AP50"], "AP": w["cityscapes"]["AP"],
                                           "agnostic_AP50": w["agnostic"]["AP50"], "test_scale": w["test_scale"]}
        curve.append(point)
        print(f"step {step:>5}: train AP50 {point['train']['AP50'] or 0:.3f} (agnostic "
              f"{point['train']['agnostic_AP50']:.3f}), val AP50 {point['val']['AP50'] or 0:.3f} "
              f"(agnostic {point['val']['agnostic_AP50']:.3f})"
              + (f"; on windows pasted back: train {point['train']['windows']['AP50'] or 0:.3f}, val "
                 f"{point['val']['windows']['AP50'] or 0:.3f}" if args.check_windows else ""), flush=True)
    report = {"machine": machine(), "arm": args.arm or "fastinst:scratch", "config": sets, "train_seconds": train_s,
              "name": args.name, "revert": reverts(args.revert), "recipe": args.recipe,
              "heldout": (f"write_sample(images=80, size=1024x512, seed={args.heldout_seed}), all 80"
                          if args.heldout_seed is not None else "the training sample's val split (20 images)"),
              "resumed_from": resumed_from, "s_per_iter": train_s / max(args.iterations - resumed_from, 1),
              "total_seconds": time.time() - t0, "curve": curve}
    stem = f"curve-{args.arm.replace(':', '-')}" if args.arm else "curve"
    stem += f"-seed{args.seed}" if args.seed else ""
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot(report, os.path.join(out, f"{stem}.png"))
    last = curve[-1]
    print(f"\n{report['machine']}: {args.iterations} iterations in {train_s:.0f} s "
          f"({report['s_per_iter']:.2f} s/iter, incl. start-up); total {report['total_seconds']:.0f} s")
    print(f"final: train-split AP50 {last['train']['AP50'] or 0:.3f} (target >= 0.5), "
          f"held-out AP50 {last['val']['AP50'] or 0:.3f} (target >= 0.25)")
    return report


def _lines(path: str) -> list[str]:
    return open(path).read().splitlines() if os.path.exists(path) else []


def launch_start(starts: str, before: int) -> int:
    """The step this launch began at: the first line it appended to the run's ``starts.jsonl`` (a run killed
    midway, e.g. by a session's end, resumes from its last ``--checkpoint-every`` save; time only this part)."""
    new = _lines(starts)[before:]
    return int(json.loads(new[0])["start_step"]) if new else 0


def scored(step: int, every: int, iterations: int) -> bool:
    """A checkpoint is a curve point at every ``--every`` and at the end; the others are saves to resume from."""
    return step % every == 0 or step == iterations


def run_label(r: dict) -> str:
    """A run's short name (``--name`` less the arm and seed: ``fi-lr5e-4``) and its arm."""
    run = r.get("name", "").split("-" + r["arm"].replace(":", "-"))[0]
    return f"{run}: {r['arm']}" if run and run != "learnability" else r["arm"]


def seed_of(r: dict) -> int:
    """A run's training seed: its report's, else its config's last ``train.seed`` (a curve file alone)."""
    seeds = [c.split("=", 1)[1] for c in r.get("config", []) if c.startswith("train.seed=")]
    return int(r.get("seed", seeds[-1] if seeds else 0))


def setting(r: dict) -> tuple:
    """What a run trained, less its seed, where it wrote and how often it saved: runs of one setting differ
    only by seed."""
    skip = ("train.seed=", "train.name=", "train.storage_path=", "train.dirs=", "train.checkpoint_every=",
            "train.keep_checkpoints=")
    effective = dict(c.split("=", 1) for c in r.get("config", []) if not c.startswith(skip))  # the last value wins
    return (r["arm"], *sorted(f"{k}={v}" for k, v in effective.items()))


def mean_heldout(reports: list[dict]) -> dict:
    """{setting: {step: mean held-out AP50 over its seeds, "seeds": n}} (the fair protocol's figure); a
    setting is labelled by its seed-0 run. Only steps every seed scored count (one seed's extra, not annealed
    midpoint is no mean over the seeds)."""
    acc: dict = {}
    for r in sorted(reports, key=seed_of):
        entry = acc.setdefault(setting(r), {"label": run_label(r), "seeds": 0, "steps": {}})
        entry["seeds"] += 1
        for p in r["curve"]:
            entry["steps"].setdefault(p["step"], []).append(p["val"]["AP50"] or 0.0)
    return {e["label"]: {**{k: sum(v) / len(v) for k, v in sorted(e["steps"].items()) if len(v) == e["seeds"]},
                         "seeds": e["seeds"]} for e in acc.values()}


def plot_reports(paths: list[str]) -> list[dict]:
    """The runs behind --plot: a curve-*.json is one run; a --json result (what docs/ keeps of every protocol
    run) holds its runs under "arms", so the committed results alone redraw the figure and the table."""
    reports = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        runs = data["arms"] if isinstance(data, dict) and "arms" in data else [data]
        for r in runs:
            if not isinstance(r, dict) or "curve" not in r:
                raise SystemExit(f"{path}: not a curve-*.json or a bench_train --json result (no 'curve')")
        reports += runs
    return reports


def by_setting(reports: list[dict]) -> dict:
    """{setting: its runs, seed order}: a row of summary.md, a bar of settings.png."""
    groups: dict = {}
    for r in sorted(reports, key=seed_of):
        groups.setdefault(setting(r), []).append(r)
    return groups


def summary_table(reports: list[dict]) -> str:
    """The protocol's results as one Markdown table, a row per setting (its seeds averaged) at its last,
    fully annealed checkpoint: what the README's tables copy, so a number there is never typed by hand."""
    groups = by_setting(reports)

    def mean(vals):
        m = _mean(vals)
        return "-" if m is None else f"{m:.3f}"

    rows = ["| run | arm | recipe | restored deviations | iterations | seeds | train AP50 | held-out AP50 (AP) "
            "| held-out AP50 by seed | held-out AP50: person / car / bicycle |", "|---|---|---|---|---|---|---|---|---|---|"]
    for runs in sorted(groups.values(), key=lambda runs: run_label(runs[0])):  # the same order from any files
        last = [r["curve"][-1] for r in runs]
        val = [p["val"] for p in last]
        recipe = runs[0].get("recipe") or "-"
        recipe += ", authors' mapper" if "train.mapper=fastinst" in runs[0].get("config", []) else ""
        lr = [c.split("=", 1)[1] for c in runs[0].get("config", []) if c.startswith("train.lr=")]
        recipe += f", LR {lr[-1]}" if lr else ""  # the last: a --set override comes after the default
        classes = " / ".join(mean([(v.get("per_class_AP50") or {}).get(c) for v in val])
                             for c in ("person", "car", "bicycle"))
        rows.append(f"| {run_label(runs[0]).split(':')[0]} | {runs[0]['arm']} | {recipe} "
                    f"| {', '.join(runs[0].get('revert') or []) or '-'} | {last[0]['step']} "
                    f"| {', '.join(str(seed_of(r)) for r in runs)} | {mean([p['train']['AP50'] for p in last])} "
                    f"| **{mean([v['AP50'] for v in val])}** ({mean([v['AP'] for v in val])}) "
                    f"| {' / '.join(mean([v['AP50']]) for v in val)} | {classes} |")
    return "\n".join(rows) + "\n"


def print_means(means: dict) -> None:
    for label, by_step in means.items():
        n = by_step["seeds"]
        print(f"{label}: mean held-out AP50 over {n} seed{'s' if n > 1 else ''}: "
              + ", ".join(f"{v:.3f} at {k}" for k, v in by_step.items() if k != "seeds"))


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in report["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("val", "--")):
        ax.plot(steps, [p[split]["AP50"] or 0 for p in report["curve"]], "o" + style, label=f"{split} AP50")
        ax.plot(steps, [p[split]["agnostic_AP50"] for p in report["curve"]], "x" + style,
                label=f"{split} class-agnostic AP50")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.axhline(0.25, color="grey", lw=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP50")
    ax.set_title(f"tiny FastInst on the 80-image sample ({report['machine']})", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_arms(reports: list[dict], path: str) -> None:
    """Train and held-out AP50 of every arm (model x init) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split, title in ((axes[0], "train", "train split"), (axes[1], "val", "held-out (val)")):
        for i, r in enumerate(reports):  # tab20: a protocol has more runs than the default 10 colours
            colour = plt.get_cmap("tab20")(i % 20)
            steps = [p["step"] for p in r["curve"]]
            style = {"fastinst": "-", "mask2former": ":"}.get(r["arm"].split(":")[0], "--")
            marker = "o" if r["arm"].endswith("imagenet") else "x"
            vals = [p[split]["AP50"] or 0 for p in r["curve"]]
            tag = f" revert {'+'.join(r['revert'])}" if r.get("revert") else ""
            tag += f", {r['recipe']} recipe" if r.get("recipe") else ""
            tag += ", authors' mapper" if "train.mapper=fastinst" in r.get("config", []) else ""
            ax.plot(steps, vals, marker + style, color=colour,
                    label=f"{run_label(r)}{tag}, seed {seed_of(r)} ({r['s_per_iter']:.2f} s/it)")
            for x, y in zip(steps, vals):
                ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title(f"AP50, {title}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP50")
    handles, labels = axes[1].get_legend_handles_labels()
    rows = -(-len(labels) // 2)  # the legend under the plots, two columns: it never hides a point
    fig.suptitle(f"FastInst and its references (Mask R-CNN, Mask2Former), MobileNetV2, 80-image sample "
                 f"({reports[0]['machine']})",
                 fontsize=9)
    height = 4 + 0.15 * rows
    fig.set_size_inches(11, height)
    fig.tight_layout(rect=(0, (0.15 * rows + 0.1) / height, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the two-column legend may be wider than the axes


def plot_settings(reports: list[dict], path: str, targets: dict[int, float] | None = None) -> None:
    """One bar per setting (its seeds averaged, at its last checkpoint: the rows of summary.md), held-out
    AP50, each seed a dot, FastInst and Mask2Former apart by colour, the targets per schedule length as
    lines: the protocol at a glance, where the curves figure is a cloud of points at 1,000 iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(by_setting(reports).values(), key=lambda runs: (runs[0]["curve"][-1]["step"],
                                                     -(_mean([x["curve"][-1]["val"]["AP50"] for x in runs]) or 0.0)))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * len(rows)))
    colours = {"fastinst": "tab:blue", "mask2former": "tab:orange"}
    for y, runs in enumerate(rows):
        vals = [x["curve"][-1]["val"]["AP50"] or 0.0 for x in runs]
        step = runs[0]["curve"][-1]["step"]
        ax.barh(y, _mean(vals), color=colours.get(runs[0]["arm"].split(":")[0], "tab:gray"),
                alpha=0.5 if step < 2000 else 0.9)
        ax.plot(vals, [y] * len(vals), "k.", ms=4)
        # the label right of the bar and of every seed's dot, so that no dot sits on a digit
        ax.annotate(f"{_mean(vals):.3f}", (max(_mean(vals), *vals), y), xytext=(4, -3), textcoords="offset points",
                    fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{run_label(runs[0]).split(':')[0]} ({runs[0]['curve'][-1]['step']} it, "
                                     f"{len(runs)} seed{'s' if len(runs) > 1 else ''})" for runs in rows], fontsize=7)
    ax.invert_yaxis()
    for step, value in (targets or {}).items():
        ax.axvline(value, ls="--", lw=1, color="k" if step >= 2000 else "gray")
        ax.annotate(f"target at {step}", (value, len(rows) - 0.5), rotation=90, fontsize=7, va="bottom",
                    xytext=(2, 0), textcoords="offset points")
    ax.set_xlabel("held-out AP50 at the last, fully annealed checkpoint (bar: mean of seeds, dots: each seed)")
    ax.set_title(f"Every protocol setting (blue FastInst, orange Mask2Former; pale 1,000 iterations, dark "
                 f"2,000) - {reports[0]['machine']}", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def schedule_curves(reports: list[dict]) -> dict:
    """{label: {length: {"train": [AP50 by seed], "val": [...]}}} for every setting run at more than one
    schedule length: the protocol's learning curves. Each length is its own fully annealed run, so a curve
    joins the last checkpoints of runs that differ only by ``train.iterations`` (and seed); a setting run at
    one length alone (the LR sweep, the ablation) is a bar of the settings figure, not a curve."""
    families: dict = {}
    for runs in by_setting(reports).values():
        key = tuple(k for k in setting(runs[0]) if not k.startswith("train.iterations="))
        fam = families.setdefault(key, {"label": None, "lengths": {}})
        last = [r["curve"][-1] for r in runs]
        if not fam["lengths"] or last[0]["step"] < min(fam["lengths"]):  # named by its shortest run
            r = runs[0]
            fam["label"] = (f"{r['arm']}, {r.get('recipe') or 'default'} recipe, "
                            + ("authors' mapper" if "train.mapper=fastinst" in r.get("config", []) else "crops")
                            + (f", revert {'+'.join(r['revert'])}" if r.get("revert") else "")
                            + f" ({run_label(r).split(':')[0]})")
        fam["lengths"][last[0]["step"]] = {split: [p[split]["AP50"] or 0.0 for p in last]
                                           for split in ("train", "val")}
    return {f["label"]: dict(sorted(f["lengths"].items())) for f in families.values() if len(f["lengths"]) > 1}


def plot_schedules(reports: list[dict], path: str, targets: dict[int, float] | None = None) -> None:
    """Train and held-out AP50 against schedule length (the mean of seeds joined by a line, each seed a dot,
    the targets as crosses): the curves of ``schedule_curves``; with none (no setting at two lengths) every
    run's own curve (``plot_arms``)."""
    curves = schedule_curves(reports)
    if not curves:
        plot_arms(reports, path)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, split, title in ((axes[0], "train", "train split"), (axes[1], "val", "held-out")):
        for i, (label, lengths) in enumerate(curves.items()):
            colour = plt.get_cmap("tab10")(i % 10)
            xs = list(lengths)
            means = [_mean(v[split]) for v in lengths.values()]
            seeds = max(len(v[split]) for v in lengths.values())
            ax.plot(xs, means, "-", color=colour, label=f"{label}, up to {seeds} seed{'s' if seeds > 1 else ''}")
            for x, v, m in zip(xs, lengths.values(), means):
                ax.plot([x] * len(v[split]), v[split], ".", color=colour, ms=5)
                ax.annotate(f"{m:.3f}", (x, m), textcoords="offset points", xytext=(5, -3), fontsize=7,
                            color=colour)
        if split == "val" and targets:
            ax.plot(list(targets), list(targets.values()), "kx", ms=8, label="FastInst target")
        ax.set_title(f"AP50, {title} (fully annealed, a run per length)")
        ax.set_xlabel("schedule length (iterations)")
        ax.set_xticks(sorted({x for lengths in curves.values() for x in lengths}))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP50 (line: mean of seeds, dots: each seed)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Learning curves of the settings run at several lengths - {reports[0]['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _mean(vals: list) -> float | None:
    """The mean of the values present (a run not scored on a split has None there); None if none are."""
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


#: issue 30's targets for FastInst's held-out AP50, by schedule length (drawn on the settings figure)
PROTOCOL_TARGETS = {1000: 0.17, 2000: 0.30}


# -- full-size step time on a GPU ----------------------------------------------------------------

class GpuSampler:
    """nvidia-smi utilisation every 0.1 s while running."""

    def __init__(self):
        self.values, self._stop = [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                    "-i", "0"], capture_output=True, text=True, timeout=5)
                self.values.append(float(r.stdout.strip().splitlines()[0]))
            except Exception:  # noqa: BLE001
                return
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=10)

    @property
    def mean(self):
        return sum(self.values) / len(self.values) if self.values else None


def full(args) -> dict:
    import numpy as np
    import torch

    from instsynth.config import load_config
    from instsynth.datasets.cityscapes import discover
    from instsynth.datasets.sample import write_sample
    from instsynth.train.data import augment, collate, crop_rng
    from instsynth.train.models import build_model
    from instsynth.train.recipe import make_optimizer
    from instsynth.train.trainer import train_step

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = (2048, 1024) if dev.type == "cuda" else (512, 256)
    crop = (720, 360) if dev.type == "cuda" else (256, 128)
    root = tempfile.mkdtemp(prefix="bench-train-")
    write_sample(root, images=8, size=size, seed=0)
    from instsynth.io import storage

    rows = []
    for i, rec in enumerate(discover(root, "train")):
        row = {"work_id": rec.image, "image": storage.read_bytes(storage.join(root, rec.image)),
               "labels": storage.read_bytes(storage.join(root, rec.labels))}
        rows.append(augment(row, (size[1], size[1]), crop, True, crop_rng(0, 0, f"{i}")))
    batches = []
    for k in range(4):
        pick = [rows[(k * 4 + j) % len(rows)] for j in range(4)]
        images, targets = collate({"image": np.stack([p["image"] for p in pick]),
                                   "ids": np.stack([p["ids"] for p in pick])})
        batches.append((images.to(dev), [{kk: v.to(dev) for kk, v in t.items()} for t in targets]))
    cfg = load_config(None).train
    out = {"machine": machine(), "crop": f"{crop[0]}x{crop[1]}", "batch": 4, "model": "FastInst R50-D3 (random weights)"}
    tiny_model = dev.type != "cuda"
    runs = (("fp32", None, False), ("bf16", torch.bfloat16, False), ("bf16_channels_last", torch.bfloat16, True))
    for name, amp, nhwc in runs:
        torch.manual_seed(0)
        model = build_model("fastinst", tiny=tiny_model).to(dev)
        if nhwc:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, cfg)
        for i in range(3):
            train_step(model, opt, [batches[i % 4]], cfg.grad_clip, amp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        with GpuSampler() as gpu:
            t = time.perf_counter()
            for i in range(args.iters):
                train_step(model, opt, [batches[i % 4]], cfg.grad_clip, amp)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / args.iters
        out[name] = {"s_per_iter": dt, "gpu_util_pct": gpu.mean}
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for i in range(3):
                    train_step(model, opt, [batches[i % 4]], cfg.grad_clip, amp)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            with open(os.path.join(args.profile, f"profile_{name}.txt"), "w") as f:
                f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        print(f"{name}: {dt:.4f} s/iter, GPU busy {gpu.mean if gpu.mean is not None else '-'}%", flush=True)
        del model, opt
    out["bf16_vs_fp32"] = out["fp32"]["s_per_iter"] / out["bf16"]["s_per_iter"]
    print(f"{out['machine']}: bf16 is {out['bf16_vs_fp32']:.2f}x fp32 speed; target <= 0.066 s/iter, "
          f"bf16 not slower than fp32")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "instsynth-bench-train"))
    ap.add_argument("--name", default="learnability")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--every", type=int, default=500, help="score a checkpoint every this many iterations")
    ap.add_argument("--checkpoint-every", type=int, help="save one this often (default --every): a run killed "
                    "midway resumes from its last save when run again; only --every's are scored")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--iters", type=int, default=30, help="--scale full: timed iterations per precision")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--profile", help="--scale full: write torch profiler tables (3 steps) into this dir")
    ap.add_argument("--set", action="append", default=[], help="extra train config overrides")
    ap.add_argument("--arms", help="--scale tiny: MODEL:INIT,... (fastinst|maskrcnn|mask2former : scratch|imagenet), each on "
                    "MobileNetV2 with the same rows, crops, batch, iterations and test scale; one figure of all")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--queries", type=int, default=100, help="--arms: FastInst's number of queries")
    ap.add_argument("--width", choices=["tiny", "published"], default="tiny",
                    help="--arms: FastInst at the tiny widths (64/4/128) or its published ones (256/8/1024)")
    ap.add_argument("--recipe", choices=["ours", "official"], default="ours",
                    help="official: FastInst's published optimisation (overrides --lr/--warmup; no clipping)")
    ap.add_argument("--seeds", default="0", help="--arms: training seeds (train.seed), one run each; the "
                    "figure and JSON carry every run and the mean held-out AP50 per arm and length")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--heldout-seed", type=int, help="score held-out AP50 on 80 images of this sample seed "
                    "(the fair protocol: 1) instead of the training sample's 20 val images")
    ap.add_argument("--eval-images", type=int, help="score at most this many images per split (smoke runs)")
    ap.add_argument("--check-windows", action="store_true", help="also score every checkpoint on crop-sized "
                    "windows pasted back into the frame (train/test extent check)")
    ap.add_argument("--revert", help="--arms, FastInst only (the ablation): restore these fixed deviations from "
                    "the authors' code, comma-separated (proposal, location, points, ppm, guided; all = the old model)")
    ap.add_argument("--mapper-cost", action="store_true", help="time a step on crops vs the authors' mapper")
    ap.add_argument("--plot", nargs="+", help="redraw the learning curves (--out/curves.png), the settings "
                    "figure (settings.png) and summary.md from curve-*.json files or --json results")
    args = ap.parse_args()
    reverts(args.revert)  # a bad name is refused before anything is written
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.mapper_cost:
        res = mapper_cost(args)
    elif args.plot:
        reports = plot_reports(args.plot)
        os.makedirs(args.out, exist_ok=True)
        plot_schedules(reports, os.path.join(args.out, "curves.png"), PROTOCOL_TARGETS)
        plot_settings(reports, os.path.join(args.out, "settings.png"), PROTOCOL_TARGETS)
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write(f"# Every run, at its last checkpoint ({reports[0]['machine']})\n\n"
                    "Train = the training images; held-out = the `--heldout-seed` sample (or the val split); "
                    "AP50 and AP: Cityscapes' evaluator. Written by `scripts/bench_train.py --plot`.\n\n"
                    + summary_table(reports))
        res = {"arms": reports, "mean_heldout_AP50": mean_heldout(reports)}
        print_means(res["mean_heldout_AP50"])
        print(f"wrote {os.path.join(args.out, 'curves.png')}, settings.png and summary.md")
    elif args.arms:
        reports = []
        for arm, seed in ((a, int(sd)) for a in args.arms.split(",") for sd in args.seeds.split(",")):
            r = subprocess.run([sys.executable, __file__, "--scale", "tiny", "--out", args.out, "--arm", arm,
                                "--seed", str(seed), "--set", f"train.seed={seed}",
                                *(["--heldout-seed", str(args.heldout_seed)] if args.heldout_seed is not None else []),
                                *(["--check-windows"] if args.check_windows else []),
                                *(["--eval-images", str(args.eval_images)] if args.eval_images else []),
                                "--name", f"{args.name}-{arm.replace(':', '-')}-seed{seed}",
                                "--iterations", str(args.iterations),
                                "--every", str(args.every),
                                *(["--checkpoint-every", str(args.checkpoint_every)] if args.checkpoint_every else []),
                                "--batch", str(args.batch), "--lr", str(args.lr),
                                "--warmup", str(args.warmup), "--queries", str(args.queries), "--width", args.width,
                                "--recipe", args.recipe, *(["--revert", args.revert] if args.revert else [])]
                               + sum((["--set", x] for x in args.set), []))
            if r.returncode:
                raise SystemExit(f"arm {arm} failed ({r.returncode})")
            stem = f"curve-{arm.replace(':', '-')}" + (f"-seed{seed}" if seed else "")
            reports.append({**json.load(open(os.path.join(args.out, f"{stem}.json"))), "seed": seed})
        plot_arms(reports, os.path.join(args.out, "curves.png"))
        res = {"arms": reports, "mean_heldout_AP50": mean_heldout(reports)}
        print_means(res["mean_heldout_AP50"])
        print(f"wrote {os.path.join(args.out, 'curves.png')}")
    else:
        res = tiny(args) if args.scale == "tiny" else full(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
