"""The main job's driver: plan -> units -> stages -> committed shards, resumable.

Why a driver separate from the executors: everything that decides *what* to run (plan, config
check, which units are left, failure budget, run record) is the same whether the stages run in a
plain loop (``executors/local.py``) or on Ray Data (``executors/ray.py``); only the executor differs.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time

from instsynth.config import Config, to_yaml
from instsynth.datasets import DataError, DatasetSpec, open_dataset
from instsynth.errors import SynthError  # noqa: F401 - raised here, importable from here
from instsynth.generators import GeneratorError, check_generator, generator_class
from instsynth.generators.diffusion import is_local_path
from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output.card import write_card
from instsynth.output.layout import plan_path
from instsynth.output.ledger import Ledger, committed_work_ids
from instsynth.output.session import WriterSession, check_config, path_inside
from instsynth.output.sources import write_dataset_info
from instsynth.plan.planner import (
    FAILURE_SCHEMA,
    dataset_spec,
    failures_path,
    labels_path,
    make_plan,
    plan_dataset,
    plan_label_space,
    read_plan,
    read_plan_schema,
    resolve_classes,
    write_plan,
)
from instsynth.synth.executors import run_units
from instsynth.synth.stages import PendingUnits, Unit, generate, prepare, setup_generator

__all__ = ["SynthError", "run_synth", "summarize", "path_inside", "check_config", "input_dataset"]

SUMMARY_KEY = b"instsynth.summary"


def is_plan_file(source: str) -> bool:
    return str(source).endswith(".parquet") and not storage.is_dir(source)


def input_dataset(source: str, cfg: Config) -> DatasetSpec:
    """The dataset a run reads (read-only): a plan file's recorded dataset, or ``source`` - a Cityscapes
    root or a COCO JSON - moved by ``--data-root``/``--image-root`` when given."""
    if is_plan_file(source):
        spec = plan_dataset(read_plan_schema(source), cfg.run.data_root, cfg.dataset.image_root)
        if spec is None:
            raise DataError(f"{source}: plan has no dataset in its metadata; pass --data-root")
        return spec
    if not str(source).lower().endswith((".json", ".parquet")) and not storage.is_dir(source):
        raise DataError(f"{source}: no such dataset (a Cityscapes root, a COCO .json or a plan .parquet file)")
    return dataset_spec(cfg.run.data_root or source, cfg)


def preflight(source: str, out: str, cfg: Config, overwrite: bool) -> DatasetSpec:
    """Every check that needs no write, before anything is written; returns the input dataset.  Also
    resolves ``plan.classes`` from the label space (so the stored config names the classes)."""
    check_generator(cfg.generator)  # bad parameters, a missing model path: the parameter object, no model
    spec = input_dataset(source, cfg)
    for tree in (spec.source, spec.image_root):
        if tree and path_inside(out, tree):
            raise SynthError(f"--out {out} lies inside the input tree {tree}; synth never writes there")
    if is_plan_file(source):
        space = plan_label_space(read_plan_schema(source))
    else:
        space = open_dataset(spec).label_space
    resolve_classes(cfg, space)
    check_config(out, cfg, overwrite)
    return spec


def prepare_out(source: str, out: str, cfg: Config, overwrite: bool, log=print):
    """Resolve the plan into ``out`` (making it from the dataset if needed); returns (plan table, dataset
    spec, summary).  Runs under the writer lease, after ``preflight``."""
    if overwrite and storage.exists(out):
        for sub in ("data", "_commits", "_ledger", "_failures", "_claims", "_runs", "stats", "report", "plan.parquet",
                    "plan.failures.parquet", "plan.labels.parquet", "config.yaml", "README.md", "dataset.json"):
            storage.remove_tree(storage.join(out, sub))
    plan_file = plan_path(out)
    spec = input_dataset(source, cfg)
    if is_plan_file(source):
        table, _ = read_plan(source)
        if not storage.exists(plan_file):
            fails = failures_path(source)
            if storage.exists(labels_path(source)):
                storage.write_bytes(labels_path(plan_file), storage.read_bytes(labels_path(source)))
            write_plan(plan_file, table,
                       read_parquet(fails) if storage.exists(fails) else _empty_failures())
    elif storage.exists(plan_file):
        table, _ = read_plan(plan_file)
    else:
        label_rows: list = []
        table, fails, summary = make_plan(spec, cfg, label_rows=label_rows)
        meta = dict(table.schema.metadata or {})
        meta[SUMMARY_KEY] = json.dumps(summary).encode()
        table = table.replace_schema_metadata(meta)
        write_plan(plan_file, table, fails, label_rows)
        del label_rows
        log(f"planned {summary['work_items']} work items from {summary['images']} images "
            f"({summary['images_without_instances']} without instances, {summary['failures']} input failures)")
    storage.write_bytes(storage.join(out, "config.yaml"), to_yaml(cfg).encode())
    if is_plan_file(source) or cfg.run.data_root or cfg.dataset.image_root:
        spec = plan_dataset(table, cfg.run.data_root, cfg.dataset.image_root) or spec
    write_dataset_info(out, plan_dataset(table) or spec, plan_label_space(table))
    if spec.format == "coco" and storage.exists(labels_path(plan_file)):  # tasks read their images' rows only
        spec = dataclasses.replace(spec, labels=labels_path(plan_file))
    meta = table.schema.metadata or {}
    summary = json.loads(meta[SUMMARY_KEY]) if SUMMARY_KEY in meta else None
    return table, spec, summary


def _empty_failures():
    return FAILURE_SCHEMA.empty_table()


def run_synth(source: str, out: str, cfg: Config, overwrite: bool = False, dry_run: bool = False,
              log=print, repair: bool = False, force_unlock: bool = False, lease: bool = True) -> dict:
    """Run (or resume) the synthesis job; returns the summary dict (``ok`` False past the failure budget).

    Order: read-only checks (``preflight``), then a writer session (``session.py``: lease, config check
    again, tidy-up).  A refused command leaves OUT as it was.  Under the lease, units whose shards do
    not match their markers are re-queued (``repair``: only those run, every file is read once and
    hashed), then pending units run.  The driver never re-reads data: markers are fetched once, commits
    arrive with their markers, and the summary and card are made from them.
    ``lease=False`` skips the lease (tests of the work-id claims: the second line of defence)."""
    if dry_run:
        return dry_run_report(source, out, cfg, log)
    preflight(source, out, cfg, overwrite)
    with WriterSession(out, cfg, log, lease=lease, force_unlock=force_unlock, overwrite=overwrite) as session:
        return _run_held(source, out, cfg, overwrite, repair, session, log)


def _run_held(source, out, cfg, overwrite, repair, session: WriterSession, log) -> dict:
    requeued = session.requeue_damaged(full=repair) if session.ledger.markers else set()
    table, spec, plan_summary = prepare_out(source, out, cfg, overwrite, log)
    if overwrite:
        session.ledger.scan()
    work_ids = table.column("work_id").to_pylist()
    done = session.ledger.covered_ids()
    units = PendingUnits.of(table, done, cfg.run.rows_per_unit, limit=None if repair else cfg.run.limit,
                            only=requeued if repair else None)
    log(f"{len(work_ids)} work items, {len(done)} already committed, {len(units)} units to run "
        f"({cfg.generator.name}, executor {cfg.run.executor}{', repair only' if repair else ''})")
    if units:  # a card naming only committed shards while new part files appear
        session.before_commits()
        write_card(out, cfg, summarize(out, work_ids, plan_summary, cfg, session), session.ledger, glob=False)
    record = run_units(units, spec, out, cfg, log, session.run_id, session.on_commit)
    record.update({"generator": cfg.generator.name, "units_run": len(units), "repair": repair,
                   "requeued_items": len(requeued)})
    session.finish(record)
    summary = summarize(out, work_ids, plan_summary, cfg, session)
    write_card(out, cfg, summary, session.ledger)
    log(format_run_summary(summary))
    return summary


def _plan_failures(out: str) -> int:
    try:
        return read_parquet(storage.join(out, "plan.failures.parquet")).num_rows
    except storage.StorageError:
        return 0


def summarize(out: str, plan, plan_summary: dict | None, cfg: Config, session: WriterSession | None = None) -> dict:
    """Counts from verified markers only (a unit whose files do not match is counted as damaged, not
    committed); pending = planned work ids no good marker covers, so it is never negative.
    ``plan``: the planned work ids (or plan rows).  Nothing but markers is read: their ``stats``
    carry failures by stage and the failed images."""
    ledger = Ledger.open(out) if session is None else session.ledger
    good, bad = ledger.verified()
    work_ids = [w["work_id"] if isinstance(w, dict) else w for w in plan]
    tot = ledger.totals(sorted(good))
    plan_fail = _plan_failures(out)
    images = plan_summary["images"] if plan_summary else \
        len({w["image_id"] for w in plan if isinstance(w, dict)}) + plan_fail
    bad_images = len(tot["failed_images"]) + plan_fail
    frac = bad_images / images if images else 0.0
    done = ledger.covered_ids(good)
    return {
        "out": out, "planned": len(work_ids), "committed_rows": tot["rows"], "failed_items": tot["failures"],
        "pending_items": sum(1 for w in work_ids if w not in done), "units": len(good),
        "damaged_units": sorted(bad), "source_images": images,
        "images_without_instances": plan_summary.get("images_without_instances", 0) if plan_summary else None,
        "images_with_failures": bad_images, "failure_fraction": frac,
        "ok": frac <= cfg.run.max_failure_fraction and not bad,
        "failures_by_stage": tot["failure_stages"],
    }


def format_run_summary(s: dict) -> str:
    lines = [f"committed {s['committed_rows']} rows in {s['units']} units; {s['failed_items']} failed items; "
             f"{s['pending_items']} pending (of {s['planned']} planned)",
             f"source images: {s['source_images']}, with failures: {s['images_with_failures']} "
             f"({100 * s['failure_fraction']:.1f}%)"]
    if s.get("damaged_units"):
        lines.append(f"DAMAGED: {len(s['damaged_units'])} units do not match their markers "
                     f"({', '.join(s['damaged_units'][:5])}); re-run synth (or synth --repair) to redo them")
    if s["failures_by_stage"]:
        lines.append("failures by stage: " + ", ".join(f"{k}={v}" for k, v in s["failures_by_stage"].items()))
    if not s["ok"]:
        lines.append("FAILED: failure fraction above run.max_failure_fraction")
    return "\n".join(lines)


def measure_cost(rows: list[dict], spec: DatasetSpec, cfg: Config, n: int = 3) -> float:
    """Seconds per work item of the configured generator, timed here on up to ``n`` plan items
    (after one warm-up item), through the real prepare and generate stages."""
    gen, batch_size, scorer = setup_generator(cfg.generator, cfg.quality)
    unit = prepare(Unit("dry-run", rows[: n + 1]), spec, cfg.compose)
    if len(unit.items) < 2:
        raise DataError("too few readable items to time the generator")
    warm = Unit("warm", [], items=unit.items[:1])
    generate(warm, gen, 1, cfg.quality, scorer)
    timed = Unit("timed", [], items=unit.items[1:])
    t0 = time.perf_counter()
    generate(timed, gen, batch_size, cfg.quality, scorer)
    return (time.perf_counter() - t0) / len(unit.items[1:])


def dry_run_report(source: str, out: str, cfg: Config, log=print) -> dict:
    """Work size and estimated GPU-hours, from the generator's per-item cost; writes nothing.

    The cost is ``generator.cost_s_per_item`` when given, else measured here on a few items when the
    generator can run on this machine (CPU generators, local weights), else the generator's documented
    estimate - the report says which.
    """
    spec = input_dataset(source, cfg)
    if is_plan_file(source):
        table, _ = read_plan(source)
        rows, images = table.num_rows, len(set(table.column("image_id").to_pylist()))
    else:
        table, _, summary = make_plan(spec, cfg)
        rows, images = table.num_rows, summary["images"]
    done = len(committed_work_ids(out)) if storage.exists(out) else 0
    todo = max(rows - done, 0)
    cost, basis = cfg.generator.cost_s_per_item, "the configured generator.cost_s_per_item"
    if cost is None:
        cls = generator_class(cfg.generator.name)
        model = cfg.generator.params.get("model") or getattr(cls, "default_model", "")
        try:
            if model and not is_local_path(model):  # never download weights for a dry run
                raise GeneratorError(f"weights {model} are not local")
            cost = measure_cost(table.slice(0, 4).to_pylist(), spec, cfg)
            basis = f"timed on this machine, {socket.gethostname()}, over {min(3, table.num_rows - 1)} items"
        except (GeneratorError, DataError, storage.StorageError, OSError) as e:
            cost = getattr(generator_class(cfg.generator.name), "cost_s_per_item", None)
            basis = (f"the generator's documented estimate; it could not be timed here: "
                     f"{str(e).splitlines()[0][:120]}")
    gpu_h = todo * cost / 3600 if cost is not None else None
    report = {"images": images, "work_items": rows, "already_committed": done, "to_run": todo,
              "cost_s_per_item": cost, "cost_basis": basis, "gpu_hours": gpu_h, "generator": cfg.generator.name}
    est = (f"{gpu_h:.3g} GPU-hours at {cost:.3g} s/item, cost from {basis}" if gpu_h is not None
           else "no per-item cost known")
    log(f"dry run of generator {cfg.generator.name}: {images} images, {rows} work items, {done} committed, "
        f"{todo} to run; {est}")
    return report
