"""One command line: ``instsynth <command>``.

Every command takes ``--config FILE`` and repeated ``--set key=value``; its other flags are
aliases for config keys, so YAML, flags and the ``ray_jobs/`` entrypoints drive the same typed
config.  Known errors print one line naming the file or key; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys

from instsynth.config import Config, ConfigError, load_config, parse_size
from instsynth.datasets import DataError
from instsynth.datasets.sample import write_sample
from instsynth.errors import SynthError
from instsynth.generators import GeneratorError
from instsynth.generators.weights import prefetch
from instsynth.io import storage
from instsynth.output.export import export_cityscapes, export_coco, export_parquet, parse_bytes
from instsynth.output.lease import LeaseError
from instsynth.plan.planner import failures_path, format_summary, make_plan, write_plan
from instsynth.quality.report import write_quality
from instsynth.synth.driver import run_synth
from instsynth.synth.originals import write_originals
from instsynth.train.evaluate import evaluate_checkpoint, format_table, scores
from instsynth.train.experiment import run_experiment
from instsynth.train.launch import check_eval_root
from instsynth.train.trainer import run_training
from instsynth.views.preview import compare_grid, preview
from instsynth.views.site import check_report_out, write_report
from instsynth.views.stats import write_stats
from instsynth.views.status import check_output_dir, format_status, status

# command -> [(flag, config key, type, help)]
ALIASES: dict[str, list[tuple[str, str, type, str]]] = {
    "sample": [("--images", "sample.images", int, "number of scenes"),
               ("--size", "sample.size", str, "WIDTHxHEIGHT (default 2048x1024)"),
               ("--seed", "sample.seed", int, "random seed")],
    "plan": [("--split", "plan.split", str, "split to plan (default train)"),
             ("--top-k", "plan.top_k", int, "instances per image (Eq. 1, default 3)"),
             ("--min-pixels", "plan.min_pixels", int, "smallest eligible instance"),
             ("--variants", "plan.variants", int, "variants per instance"),
             ("--seed", "plan.seed", int, "run seed"),
             ("--image-root", "dataset.image_root", str, "where a COCO file's images lie")],
    "synth": [("--generator", "generator.name", str, "generator name (identity, recolor, sdxl-inpaint, ...)"),
              ("--seed", "plan.seed", int, "run seed"),
              ("--address", "run.address", str, "Ray address to join (default: start a local Ray)"),
              ("--data-root", "run.data_root", str, "dataset root or COCO JSON (overrides the plan's)"),
              ("--image-root", "dataset.image_root", str, "where a COCO file's images lie"),
              ("--executor", "run.executor", str, "ray (default) or local"),
              ("--limit", "run.limit", int, "run at most this many pending work items"),
              ("--rows-per-unit", "run.rows_per_unit", int, "work items per committed unit")],
}
ALIASES["originals"] = [("--split", "plan.split", str, "split (default train)"),
                        ("--image-root", "dataset.image_root", str, "where a COCO file's images lie")]
ALIASES["train"] = [("--address", "run.address", str, "Ray address to join"),
                    ("--name", "train.name", str, "run name (same name = resume)"),
                    ("--storage-path", "train.storage_path", str, "where checkpoints go (local or s3://)"),
                    ("--iterations", "train.iterations", int, "training iterations"),
                    ("--num-workers", "train.num_workers", int, "Ray Train workers")]
ALIASES["train"].append(("--verbose", "train.verbose", bool, "also print the evaluators' own dumps (pycocotools)"))
ALIASES["experiment"] = ALIASES["train"] + [("--seeds", "experiment.seeds", int,
                                              "runs per arm; run k uses train.seed + k (mean, std, paired interval)")]
ALIASES["status"] = []
#: plain words for the flags' values in --help (argparse would print the dest: ALIAS:GENERATOR.NAME)
METAVARS = {"--image-root": "DIR", "--generator": "NAME", "--address": "ADDR", "--data-root": "ROOT", "--executor": "NAME",
            "--size": "WxH", "--split": "NAME", "--name": "NAME", "--storage-path": "PATH"}


def _add_common(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set plan.top_k=5 (repeatable)")
    for flag, key, tp, help_ in ALIASES.get(command, []):
        word = METAVARS.get(flag) or {int: "N", float: "X"}.get(tp) or "VALUE"
        if tp is bool:
            p.add_argument(flag, dest="alias:" + key, action="store_const", const=True, default=None,
                           help=f"{help_} [= {key}]")
            continue
        p.add_argument(flag, dest="alias:" + key, type=tp, default=None, metavar=word, help=f"{help_} [= {key}]")


def _config(args) -> Config:
    values = {k[len("alias:"):]: v for k, v in vars(args).items() if k.startswith("alias:") and v is not None}
    return load_config(args.config, args.set, values)


def _progress(label: str, total: int | None = None):
    tty = sys.stderr.isatty()

    def report(done, total_=None):
        t = total_ or total
        last = bool(t) and done >= t
        if tty:
            print(f"\r{label}: {done}" + (f"/{t}" if t else ""), end="\n" if last else "", file=sys.stderr, flush=True)
        elif last or done % 100 == 0:
            print(f"{label}: {done}" + (f"/{t}" if t else ""), file=sys.stderr, flush=True)
    return report


def cmd_sample(args) -> int:
    cfg = _config(args)
    s = cfg.sample
    stems = write_sample(args.out, s.images, parse_size(s.size, "sample.size"), s.seed, s.val_fraction,
                         progress=_progress("sample images"), format=args.format)
    if args.format == "mapillary":
        print(f"wrote {len(stems)} synthetic scenes in Mapillary Vistas v2.0 layout to {args.out}")
    elif args.format == "coco":
        print(f"wrote {len(stems)} synthetic scenes as a COCO dataset to {args.out} "
              f"(annotations/instances_{{train,val}}.json, images in train/ and val/)")
    else:
        print(f"wrote {len(stems)} synthetic scenes in Cityscapes layout to {args.out}")
    return 0


def cmd_plan(args) -> int:
    cfg = _config(args)
    label_rows: list = []
    table, fails, summary = make_plan(args.root, cfg, progress=_progress("planned images"), label_rows=label_rows)
    write_plan(args.out, table, fails, label_rows)
    print(format_summary(summary))
    print(f"wrote {args.out} ({table.num_rows} rows) and {failures_path(args.out)} ({fails.num_rows} rows)")
    for f in fails.to_pylist():
        print(f"  failure: {f['image_id']}: {f['reason']}")
    return 0


def cmd_synth(args) -> int:
    cfg = _config(args)
    summary = run_synth(args.source, args.out, cfg, overwrite=args.overwrite, dry_run=args.dry_run,
                        repair=args.repair, force_unlock=args.force_unlock)
    if args.dry_run:
        return 0
    return 0 if summary["ok"] else 1


def cmd_originals(args) -> int:
    write_originals(args.root, args.out, _config(args))
    return 0


def cmd_status(args) -> int:
    _config(args)
    st = status(args.out_dir, verify=args.verify)
    print(format_status(st))
    return 2 if st["bad_shards"] else 1 if st["bad_rows"] else 0


def _check_dirs(dirs: list[str]) -> None:
    """Read-only commands refuse, in one line and before writing anything, a dir that is missing or
    is not an InstSynth output dir."""
    for d in dirs:
        check_output_dir(d)


def cmd_stats(args) -> int:
    _config(args)
    _check_dirs(args.dirs)
    out = args.out or storage.join(args.dirs[0], "stats")
    text, _ = write_stats(args.dirs, out)
    print(text)
    print(f"wrote {storage.join(out, 'class_counts.png')} (bar chart), class_counts.txt, class_counts.json")
    return 0


def cmd_preview(args) -> int:
    _config(args)
    _check_dirs([args.out_dir])
    if args.compare:
        out = args.out or storage.join(args.out_dir, "stats", "compare.png")
        png = compare_grid(args.out_dir, n=args.n, class_name=args.class_name, generator=args.generator_name)
    else:
        out = args.out or storage.join(args.out_dir, "stats", "preview.png")
        png = preview(args.out_dir, n=args.n)
    storage.write_bytes(out, png)
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    _config(args)
    out = args.out or storage.join(args.dirs[0], "report")
    check_report_out(out, args.dirs)
    write_report(args.dirs, out)
    return 0


def cmd_export(args) -> int:
    _config(args)
    _check_dirs(args.dirs)
    if args.format == "cityscapes":
        export_cityscapes(args.dirs, args.out, split=args.split)
    elif args.format == "parquet":
        try:
            size = parse_bytes(args.shard_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        export_parquet(args.dirs, args.out, shard_size=size)
    else:
        export_coco(args.dirs, args.out)
    return 0


def cmd_train(args) -> int:
    result = run_training(_config(args))
    return 0 if result.error is None else 1


def cmd_evaluate(args) -> int:
    import json

    _config(args)

    ckpt, root = storage.absolute(args.checkpoint), storage.absolute(args.data_root)
    if not storage.exists(storage.join(ckpt, "model.json")):
        raise ConfigError(f"--checkpoint: {args.checkpoint} has no model.json (not a checkpoint dir)")
    image_root = storage.absolute(args.image_root)
    check_eval_root(root, args.split, "--data-root", image_root)
    name = "coco" if root.lower().endswith(".json") else args.split
    out = args.out or storage.join(ckpt, f"eval_{name}.json")
    res = evaluate_checkpoint(ckpt, root, args.split, args.max_images, out, args.short_edge, image_root,
                              verbose=bool(args.verbose), max_size=args.max_size)
    print(format_table({f"step {res['step']}": res}))
    print(json.dumps({c: v for c, v in scores(res)["per_class"].items()}))
    print(f"wrote {out}")
    return 0


def cmd_experiment(args) -> int:
    run_experiment(_config(args))
    return 0


def cmd_models(args) -> int:
    prefetch(_config(args), offline=True if args.offline else None)
    return 0


def cmd_quality(args) -> int:
    cfg = _config(args)
    _check_dirs(args.dirs)
    out = args.out or storage.join(args.dirs[0], "stats")
    text, _ = write_quality(args.dirs, cfg.quality, out, args.data_root)
    print(text)
    print(f"wrote {storage.join(out, 'quality.json')}, quality.txt, quality.png")
    return 0


COMMANDS = {
    "sample": ("write the synthetic sample in Cityscapes layout", cmd_sample),
    "plan": ("Phase 1 selection -> work plan (Parquet)", cmd_plan),
    "synth": ("run (or resume) the synthesis job", cmd_synth),
    "originals": ("write the original training images as rows (generator 'original')", cmd_originals),
    "status": ("committed vs planned units and failures of an output dir", cmd_status),
    "stats": ("per-class instance counts (table + bar chart PNG)", cmd_stats),
    "preview": ("a grid PNG of samples with prompt and instance outline", cmd_preview),
    "report": ("a browsable HTML report: summary, classes, quality, runs, failures, every sample", cmd_report),
    "export": ("export output dirs as Cityscapes layout, COCO JSON or consolidated Parquet shards", cmd_export),
    "train": ("train a segmenter on output dirs with Ray Train (resumes by name)", cmd_train),
    "evaluate": ("Cityscapes AP/AP50 (+ COCO segm AP), or COCO mask AP on a COCO JSON, of a checkpoint",
                 cmd_evaluate),
    "experiment": ("baseline vs augmented training, same schedule, with an AP report", cmd_experiment),
    "quality": ("Table IV metrics (FID, KID, CLIPScore, SSIM, PSNR) per generator", cmd_quality),
    "models": ("prefetch (online) or verify (offline) the weights a config names", cmd_models),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instsynth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == "sample":
            p.add_argument("--out", required=True, help="dataset root to write")
            p.add_argument("--format", choices=["cityscapes", "coco", "mapillary"], default="cityscapes",
                           help="Cityscapes layout (default), a COCO dataset (instances JSON + JPEG images) or "
                                "Mapillary Vistas v2.0's layout")
        elif name == "plan":
            p.add_argument("root", metavar="SOURCE", help="Cityscapes root or COCO instances .json")
            p.add_argument("--out", required=True, help="plan .parquet to write")
        elif name == "synth":
            p.add_argument("source", help="Cityscapes root, COCO instances .json, or an existing plan .parquet")
            p.add_argument("--out", required=True, help="output dir (local path or s3:// gs:// URI)")
            p.add_argument("--dry-run", action="store_true", help="print work size and GPU-hours; write nothing")
            p.add_argument("--overwrite", action="store_true", help="discard an existing output dir")
            p.add_argument("--repair", action="store_true",
                           help="only redo units whose shards do not match their markers (every file hashed)")
            p.add_argument("--force-unlock", action="store_true",
                           help="take the writer lease even from a live-looking holder (its owner must be gone)")
        elif name == "originals":
            p.add_argument("root", metavar="SOURCE", help="Cityscapes root or COCO instances .json")
            p.add_argument("--out", required=True, help="output dir")
        elif name == "status":
            p.add_argument("out_dir", metavar="OUT", help="output dir")
            p.add_argument("--verify", action="store_true",
                           help="hash every shard against its marker and decode every PNG; lists every bad one")
        elif name == "stats":
            p.add_argument("dirs", nargs="+", metavar="DIR", help="output dirs (originals and generators)")
            p.add_argument("--out", help="where to write the tables and chart (default: DIR/stats)")
        elif name == "preview":
            p.add_argument("out_dir", metavar="OUT", help="output dir")
            p.add_argument("--out", help="PNG to write (default: OUT/stats/preview.png)")
            p.add_argument("--n", type=int, default=16, help="number of samples")
            p.add_argument("--compare", action="store_true",
                           help="before/after pairs: source window | synthesized window, outline, prompt, scores "
                                "(default OUT/stats/compare.png)")
            p.add_argument("--class", dest="class_name", help="only rows of this class (with --compare)")
            p.add_argument("--generator", dest="generator_name", help="only rows of this generator (with --compare)")
        elif name == "report":
            p.add_argument("dirs", nargs="+", metavar="DIR",
                           help="output dirs (several generators sharing a plan line up by work id)")
            p.add_argument("--out", help="folder to write index.html into (default: DIR/report)")
        elif name == "export":
            p.add_argument("dirs", nargs="+", metavar="DIR", help="output dirs to export")
            p.add_argument("--format", choices=["cityscapes", "coco", "parquet"], required=True,
                           help="cityscapes layout, COCO JSON, or parquet: few large shards + card, for publishing")
            p.add_argument("--out", required=True, help="export root")
            p.add_argument("--shard-size", default="500MB", help="with --format parquet: bytes per shard (500MB)")
            p.add_argument("--split", default="train", help="split name in the Cityscapes layout")
        elif name == "quality":
            p.add_argument("dirs", nargs="+", metavar="DIR", help="output dirs")
            p.add_argument("--data-root", help="the source dataset (root or COCO JSON; default: from the plan)")
            p.add_argument("--out", help="where to write quality.json/.txt/.png (default: DIR/stats)")
        elif name == "models":
            p.add_argument("action", choices=["prefetch"])
            p.add_argument("--offline", action="store_true", help="only verify the local cache (HF_HUB_OFFLINE)")
        elif name == "evaluate":
            p.add_argument("--checkpoint", required=True, help="checkpoint dir (model.pt + model.json)")
            p.add_argument("--data-root", required=True, help="Cityscapes root or COCO instances .json")
            p.add_argument("--image-root", help="a COCO JSON's images (default <root>/<name>/ for "
                                                "<root>/annotations/instances_<name>.json)")
            p.add_argument("--split", default="val")
            p.add_argument("--max-images", type=int, default=None)
            p.add_argument("--short-edge", type=int, default=-1,
                           help="test scale: short side in px (default: the checkpoint's eval_short_edge; 0 = native)")
            p.add_argument("--max-size", type=int, default=-1,
                           help="test scale: long-side cap in px (default: the checkpoint's eval_max_size; 0 = none)")
            p.add_argument("--out", help="JSON to write (default: CHECKPOINT/eval_<split>.json)")
            p.add_argument("--verbose", action="store_true", help="also print the evaluators' own dumps")
        _add_common(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (ConfigError, DataError, storage.StorageError, GeneratorError, LeaseError) as e:
        print(f"instsynth {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        if isinstance(e, SynthError):
            print(f"instsynth {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
