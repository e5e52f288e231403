"""The main job's driver: plan -> units -> stages -> committed shards, resumable.

Why a driver separate from the pipeline: everything that decides *what* to run (plan, config
check, which units are left, failure budget, run record) is the same whether the stages run in a
plain loop (``run.executor: local``) or on Ray Data (``pipeline``); only the executor differs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid

import yaml

from instsynth import __version__, shards, storage
from instsynth.cityscapes import DataError
from instsynth.config import Config, ConfigError, result_differences, to_dict, to_yaml
from instsynth.lease import acquire
from instsynth.plan import failures_path, make_plan, read_plan, write_plan

SUMMARY_KEY = b"instsynth.summary"


class SynthError(RuntimeError):
    pass


def path_inside(child: str, parent: str) -> bool:
    if storage.is_uri(child) != storage.is_uri(parent):
        return False
    c = child if storage.is_uri(child) else os.path.realpath(child)
    p = parent if storage.is_uri(parent) else os.path.realpath(parent)
    return c.rstrip("/") == p.rstrip("/") or c.startswith(p.rstrip("/") + "/")


def is_plan_file(source: str) -> bool:
    return str(source).endswith(".parquet") and not storage.is_dir(source)


def check_config(out: str, cfg: Config, overwrite: bool) -> None:
    """Refuse to mix configs in one output dir (execution-only keys aside)."""
    path = storage.join(out, "config.yaml")
    if not storage.exists(path):
        return
    old = yaml.safe_load(storage.read_bytes(path).decode()) or {}
    diffs = result_differences(old, to_dict(cfg))
    if diffs and not overwrite:
        raise ConfigError(
            f"{out} was made with a different config (differing keys: {', '.join(diffs)}); "
            "use a new --out, or --overwrite to discard it")


def input_root(source: str, cfg: Config) -> str:
    """The Cityscapes root a run reads (read-only: a plan file's recorded root, or ``source``)."""
    if is_plan_file(source):
        _, root = read_plan(source)
        root = cfg.run.data_root or root
        if not root:
            raise DataError(f"{source}: plan has no root in its metadata; pass --data-root")
        return root
    if not storage.is_dir(storage.join(source, "leftImg8bit")):
        raise DataError(f"{source}: not a Cityscapes root (no leftImg8bit/) and not a plan .parquet file")
    return cfg.run.data_root or source


def preflight(source: str, out: str, cfg: Config, overwrite: bool) -> str:
    """Every check that needs no write, before anything is written; returns the input root."""
    from instsynth.generators import check_generator

    check_generator(cfg.generator)  # bad parameters, a missing model path: the parameter object, no model
    root = input_root(source, cfg)
    if path_inside(out, root):
        raise SynthError(f"--out {out} lies inside the input tree {root}; synth never writes there")
    check_config(out, cfg, overwrite)
    return root


def prepare_out(source: str, out: str, cfg: Config, overwrite: bool, log=print):
    """Resolve the plan into ``out`` (making it from a root if needed); returns (plan table, root, summary).
    Runs under the writer lease, after ``preflight``."""
    if overwrite and storage.exists(out):
        for sub in ("data", "_commits", "_failures", "_claims", "_runs", "stats", "plan.parquet",
                    "plan.failures.parquet", "config.yaml", "README.md"):
            storage.remove(storage.join(out, sub))
    plan_file = shards.plan_path(out)
    root = input_root(source, cfg)
    if is_plan_file(source):
        table, _ = read_plan(source)
        if not storage.exists(plan_file):
            fails = failures_path(source)
            write_plan(plan_file, table,
                       storage.read_parquet(fails) if storage.exists(fails) else _empty_failures())
    elif storage.exists(plan_file):
        table, _ = read_plan(plan_file)
    else:
        table, fails, summary = make_plan(source, cfg)
        meta = dict(table.schema.metadata or {})
        meta[SUMMARY_KEY] = json.dumps(summary).encode()
        table = table.replace_schema_metadata(meta)
        write_plan(plan_file, table, fails)
        log(f"planned {summary['work_items']} work items from {summary['images']} images "
            f"({summary['images_without_instances']} without instances, {summary['failures']} input failures)")
    storage.write_bytes(storage.join(out, "config.yaml"), to_yaml(cfg).encode())
    meta = table.schema.metadata or {}
    summary = json.loads(meta[SUMMARY_KEY]) if SUMMARY_KEY in meta else None
    return table, root, summary


def _empty_failures():
    from instsynth.plan import FAILURE_SCHEMA

    return FAILURE_SCHEMA.empty_table()


def pending_units(plan_rows: list[dict], done: set[str], rows_per_unit: int, limit: int | None = None,
                  index: dict[str, int] | None = None):
    """[(unit name, rows)] over the plan rows not yet committed, in plan order; a unit is named by
    the plan index of its first row (``index``: work id -> plan index, when ``plan_rows`` is a subset)."""
    todo = [(index[r["work_id"]] if index else i, r) for i, r in enumerate(plan_rows) if r["work_id"] not in done]
    if limit is not None:
        todo = todo[:limit]
    units = []
    for s in range(0, len(todo), rows_per_unit):
        chunk = todo[s:s + rows_per_unit]
        units.append((shards.unit_name(chunk[0][0]), [r for _, r in chunk]))
    return units


def run_synth(source: str, out: str, cfg: Config, overwrite: bool = False, dry_run: bool = False,
              log=print, repair: bool = False, force_unlock: bool = False, lease: bool = True) -> dict:
    """Run (or resume) the synthesis job; returns the summary dict (``ok`` False past the failure budget).

    Order: read-only checks (``preflight``), the writer lease, the config check again under it, then
    writes.  A refused command leaves OUT as it was (a lease or folder it created is removed).  Under
    the lease: files no marker vouches for are removed, units whose shards do not match their
    markers are re-queued (``repair``: only those run, every file is hashed), then pending units run.
    ``lease=False`` skips the lease (tests of the work-id claims: the second line of defence)."""
    if dry_run:
        return dry_run_report(source, out, cfg, log)
    preflight(source, out, cfg, overwrite)
    existed = storage.exists(out)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    held = acquire(out, run_id, force=force_unlock) if lease else None
    if held is not None and held.took_over:
        log(f"took over the writer lease of {held.took_over}")
    try:
        try:
            check_config(out, cfg, overwrite)  # again: another run may have finished between the checks
        except ConfigError:
            if held is not None:
                held.release()
            if not existed:
                storage.remove(out)
            raise
        return _run_held(source, out, cfg, overwrite, repair, run_id, held is not None, log)
    finally:
        if held is not None:
            held.release()


def _run_held(source, out, cfg, overwrite, repair, run_id, leased, log) -> dict:
    if leased and storage.exists(out):
        _tidy(out, log)
    requeued = _requeue_damaged(out, full=repair, log=log) if storage.exists(out) else set()
    table, root, plan_summary = prepare_out(source, out, cfg, overwrite, log)
    plan_rows = table.to_pylist()
    done = shards.committed_work_ids(out)
    todo = [r for r in plan_rows if r["work_id"] in requeued] if repair else plan_rows
    units = pending_units(todo, done, cfg.run.rows_per_unit, None if repair else cfg.run.limit,
                          index={r["work_id"]: i for i, r in enumerate(plan_rows)})
    log(f"{len(plan_rows)} work items, {len(done)} already committed, {len(units)} units to run "
        f"({cfg.generator.name}, executor {cfg.run.executor}{', repair only' if repair else ''})")
    started = time.time()
    if cfg.run.executor == "local":
        record = run_local(units, root, out, cfg, log, writer=run_id)
    else:
        from instsynth.pipeline import run_ray

        record = run_ray(units, root, out, cfg, log, writer=run_id)
    ended = time.time()
    new_rows = sum(r["rows"] for r in record.get("units", []))
    record.update({"run": run_id, "start": started, "end": ended, "generator": cfg.generator.name,
                   "units_run": len(units), "rows_committed": new_rows, "repair": repair,
                   "requeued_items": len(requeued),
                   "rows_per_s": new_rows / max(ended - started, 1e-9), "version": __version__,
                   "argv": sys.argv})
    storage.write_bytes(storage.join(out, "_runs", f"{run_id}.json"), json.dumps(record, indent=1).encode())
    if leased:
        _tidy(out, log)
    summary = summarize(out, plan_rows, plan_summary, cfg)
    from instsynth.card import write_card

    write_card(out, cfg, summary)
    log(format_run_summary(summary))
    return summary


def _tidy(out: str, log) -> None:
    removed = shards.remove_uncommitted(out)
    if any(removed.values()):
        log("removed uncommitted files: " + ", ".join(f"{k}={v}" for k, v in removed.items() if v))


def _requeue_damaged(out: str, full: bool, log) -> set[str]:
    """Uncommit every unit whose files do not match its marker; returns their work ids."""
    markers = shards.committed_units(out)
    ids: set[str] = set()
    for unit, problems in shards.verify(out, full=full, markers=markers).items():
        log(f"re-queued unit {unit}: " + "; ".join(problems))
        shards.uncommit(out, unit, markers[unit])
        ids.update(markers[unit]["work_ids"] + markers[unit]["failed"])
    return ids


def run_local(units, root, out, cfg, log, writer: str | None = None) -> dict:
    """The plain single-process loop over the same stage functions (debugging, baseline)."""
    from instsynth.generators import build_generator, resolve_batch_size
    from instsynth.quality.filter import build_scorer
    from instsynth.stages import Unit, compose, generate, prepare

    gen = build_generator(cfg.generator)
    batch_size = resolve_batch_size(gen, cfg.generator.batch_size)
    scorer = build_scorer(cfg.quality)
    results = []
    for n, (name, rows) in enumerate(units, 1):
        u = prepare(Unit(name, rows), root, cfg.compose)
        u = compose(generate(u, gen, batch_size, cfg.quality, scorer), cfg.compose)
        marker = shards.commit_unit(out, u.name, u.out, u.failures, writer=writer)
        results.append({"unit": name, "rows": marker["rows"], "failures": marker["failures"]})
        if cfg.run.progress:
            log(f"  unit {n}/{len(units)} committed ({marker['rows']} rows, {marker['failures']} failures)")
    host = socket.gethostname()
    return {"executor": "local", "hosts": {"prepare": [host], "generate": [host], "compose": [host],
                                           "commit": [host]}, "units": results}


def summarize(out: str, plan_rows: list[dict], plan_summary: dict | None, cfg: Config) -> dict:
    """Counts from verified markers only (a unit whose files do not match is counted as damaged, not
    committed); pending = planned work ids no good marker covers, so it is never negative."""
    good, damaged = shards.verified(out)
    committed = sum(m["rows"] for m in good.values())
    failures = [f for u, m in sorted(good.items()) if m["failures"]
                for f in storage.read_parquet(shards.failures_path(out, u)).to_pylist()]
    plan_fail = storage.read_parquet(storage.join(out, "plan.failures.parquet")).num_rows \
        if storage.exists(storage.join(out, "plan.failures.parquet")) else 0
    images = plan_summary["images"] if plan_summary else len({r["image_id"] for r in plan_rows}) + plan_fail
    bad_images = len({f["image_id"] for f in failures}) + plan_fail
    frac = bad_images / images if images else 0.0
    done = shards.covered_ids(good)
    return {
        "out": out, "planned": len(plan_rows), "committed_rows": committed, "failed_items": len(failures),
        "pending_items": sum(1 for r in plan_rows if r["work_id"] not in done), "units": len(good),
        "damaged_units": sorted(damaged), "source_images": images,
        "images_without_instances": plan_summary.get("images_without_instances", 0) if plan_summary else None,
        "images_with_failures": bad_images, "failure_fraction": frac,
        "ok": frac <= cfg.run.max_failure_fraction and not damaged,
        "failures_by_stage": _count(f["stage"] for f in failures),
    }


def _count(it):
    out: dict = {}
    for k in it:
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


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


def measure_cost(rows: list[dict], root: str, cfg: Config, n: int = 3) -> float:
    """Seconds per work item of the configured generator, timed here on up to ``n`` plan items
    (after one warm-up item), through the real prepare and generate stages."""
    from instsynth.generators import build_generator, resolve_batch_size
    from instsynth.quality.filter import build_scorer
    from instsynth.stages import Unit, generate, prepare

    gen = build_generator(cfg.generator)
    batch_size = resolve_batch_size(gen, cfg.generator.batch_size)
    scorer = build_scorer(cfg.quality)
    unit = prepare(Unit("dry-run", rows[: n + 1]), root, cfg.compose)
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
    if is_plan_file(source):
        table, root = read_plan(source)
        root = cfg.run.data_root or root
        rows, images = table.num_rows, len(set(table.column("image_id").to_pylist()))
    else:
        table, _, summary = make_plan(source, cfg)
        root = source
        rows, images = table.num_rows, summary["images"]
    done = len(shards.committed_work_ids(out)) if storage.exists(out) else 0
    todo = max(rows - done, 0)
    cost, basis = cfg.generator.cost_s_per_item, "generator.cost_s_per_item"
    if cost is None:
        from instsynth.generators import GeneratorError, generator_class
        from instsynth.generators.diffusion import is_local_path

        cls = generator_class(cfg.generator.name)
        model = cfg.generator.params.get("model") or getattr(cls, "default_model", "")
        try:
            if model and not is_local_path(model):  # never download weights for a dry run
                raise GeneratorError(f"weights {model} are not local")
            cost = measure_cost(table.slice(0, 4).to_pylist(), root, cfg)
            basis = f"measured here ({socket.gethostname()})"
        except (GeneratorError, DataError, storage.StorageError, OSError) as e:
            cost = getattr(generator_class(cfg.generator.name), "cost_s_per_item", None)
            basis = f"the generator's estimate (could not time it here: {str(e).splitlines()[0][:120]})"
    gpu_h = todo * cost / 3600 if cost is not None else None
    report = {"images": images, "work_items": rows, "already_committed": done, "to_run": todo,
              "cost_s_per_item": cost, "cost_basis": basis, "gpu_hours": gpu_h, "generator": cfg.generator.name}
    est = (f"{gpu_h:.3g} GPU-hours at {cost:.3g} s/item ({basis})" if gpu_h is not None
           else "no per-item cost known")
    log(f"dry run: {images} images, {rows} work items, {done} committed, {todo} to run; {est}")
    return report
