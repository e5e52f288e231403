"""The work plan: one Parquet row per (selected instance, variant), made from instance maps alone.

Why a plan: it fixes *what* will be generated (instances, crop boxes, prompts, seeds) before any
GPU is touched, so a run can be sized (``synth --dry-run``), split into units, resumed, and audited.
``work_id`` is deterministic (``{image_id}_{instance_id}_v{variant}``), so every random choice keyed
on it is reproducible and independent of processing order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from instsynth import storage
from instsynth.cityscapes import DataError, SampleRecord, discover, read_ids
from instsynth.config import Config, to_yaml
from instsynth.phases.prompts import make_prompt
from instsynth.phases.select import select_instances, square_box
from instsynth.rng import item_rng

ROOT_KEY = b"instsynth.root"
CONFIG_KEY = b"instsynth.config"

PLAN_SCHEMA = pa.schema([
    ("work_id", pa.string()),
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("city", pa.string()),
    ("image_path", pa.string()),
    ("instance_ids_path", pa.string()),
    ("instance_id", pa.int32()),
    ("class_name", pa.string()),
    ("pixels", pa.int64()),
    ("bbox", pa.list_(pa.int32(), 4)),
    ("crop_box", pa.list_(pa.int32(), 4)),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("prompt", pa.string()),
    ("prompt_words", pa.string()),
    ("negative_prompt", pa.string()),
    ("seed", pa.int64()),
    ("variant", pa.int32()),
])

FAILURE_SCHEMA = pa.schema([("image_id", pa.string()), ("file", pa.string()), ("reason", pa.string())])
IMAGE_WITHOUT_MAP = "image without its gtFine instance map"
MAP_WITHOUT_IMAGE = "instance map without its image"


def work_id(image_id: str, instance_id: int, variant: int) -> str:
    return f"{image_id}_{instance_id}_v{variant}"


def plan_image(rec: SampleRecord, ids, cfg: Config) -> list[dict]:
    """Plan rows for one image given its decoded instance map."""
    p = cfg.plan
    height, width = ids.shape
    rows = []
    for inst in select_instances(ids, p.top_k, p.min_pixels, p.classes):
        for v in range(p.class_variants.get(inst.class_name, p.variants)):
            wid = work_id(rec.image_id, inst.instance_id, v)
            prompt, words = make_prompt(inst.class_name, cfg.prompts.templates, cfg.prompts.vocab,
                                        item_rng(p.seed, wid, "prompt"))
            rows.append({
                "work_id": wid, "image_id": rec.image_id, "split": rec.split, "city": rec.city,
                "image_path": rec.image, "instance_ids_path": rec.instance_ids,
                "instance_id": inst.instance_id, "class_name": inst.class_name, "pixels": inst.pixels,
                "bbox": list(inst.bbox), "crop_box": list(square_box(inst.bbox, width, height, p.margin)),
                "image_width": width, "image_height": height,
                "prompt": prompt, "prompt_words": json.dumps(words, sort_keys=True),
                "negative_prompt": cfg.prompts.negative, "seed": p.seed, "variant": v,
            })
    return rows


def iter_plan(root: str, cfg: Config) -> Iterator[tuple[SampleRecord, list[dict] | None, str | None]]:
    """(record, rows or None, failure reason or None) per image, decoding maps on a few threads."""
    recs = discover(root, cfg.plan.split)

    def one(rec: SampleRecord):
        path = storage.join(root, rec.instance_ids)
        try:
            ids = read_ids(path)
        except DataError as e:
            if not storage.exists(path):
                return rec, None, f"{IMAGE_WITHOUT_MAP}: {rec.instance_ids} is missing"
            return rec, None, str(e)
        return rec, plan_image(rec, ids, cfg), None

    with ThreadPoolExecutor(max(1, cfg.plan.workers)) as pool:
        yield from pool.map(one, recs)


def orphan_maps(root: str, split: str) -> Iterator[tuple[str, str]]:
    """(image_id, instance map path) of every gtFine instance map whose leftImg8bit image is missing."""
    base = storage.join(root, "gtFine", split)
    if not storage.is_dir(base):
        return
    images = {r.image_id for r in discover(root, split)}
    for path in storage.walk(base, "_gtFine_instanceIds.png"):
        rel = storage.relpath(path, base).replace("\\", "/")
        parts = rel.split("/")
        if len(parts) != 2:
            continue
        stem = parts[1][: -len("_gtFine_instanceIds.png")]
        if stem not in images:
            yield stem, f"gtFine/{split}/{rel}"


def make_plan(root: str, cfg: Config, progress=None) -> tuple[pa.Table, pa.Table, dict]:
    """(plan table, failures table, summary) for ``root``; the root and config go into the metadata."""
    rows, failures = [], []
    images = empty = 0
    for rec, rs, reason in iter_plan(root, cfg):
        images += 1
        if reason is not None:
            failures.append({"image_id": rec.image_id, "file": rec.instance_ids, "reason": reason})
        elif not rs:
            empty += 1
        else:
            rows.extend(rs)
        if progress:
            progress(images)
    orphans = 0
    for image_id, path in orphan_maps(root, cfg.plan.split):
        orphans += 1
        failures.append({"image_id": image_id, "file": path,
                         "reason": f"{MAP_WITHOUT_IMAGE}: no leftImg8bit image for {path}"})
    meta = {ROOT_KEY: str(root).encode(), CONFIG_KEY: to_yaml(cfg).encode()}
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA).replace_schema_metadata(meta)
    fails = pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA)
    summary = {
        "images": images, "images_without_instances": empty, "failures": len(failures),
        "images_without_map": sum(f["reason"].startswith(IMAGE_WITHOUT_MAP) for f in failures),
        "maps_without_image": orphans,
        "work_items": len(rows), "per_class": dict(sorted(Counter(r["class_name"] for r in rows).items())),
    }
    return table, fails, summary


def failures_path(plan_path: str) -> str:
    base = plan_path[:-len(".parquet")] if plan_path.endswith(".parquet") else plan_path
    return base + ".failures.parquet"


def write_plan(plan_path: str, table: pa.Table, failures: pa.Table) -> None:
    storage.write_parquet(failures, failures_path(plan_path))
    storage.write_parquet(table, plan_path)


def read_plan(plan_path: str) -> tuple[pa.Table, str | None]:
    """(plan table, root recorded in its metadata)."""
    table = storage.read_parquet(plan_path)
    missing = [n for n in PLAN_SCHEMA.names if n not in table.schema.names]
    if missing:
        raise DataError(f"{plan_path}: not an InstSynth plan (missing columns {missing})")
    meta = table.schema.metadata or {}
    root = meta.get(ROOT_KEY, b"").decode() or None
    return table, root


def format_summary(summary: dict) -> str:
    lines = [f"{'class':<12}{'work items':>12}"]
    for c, n in summary["per_class"].items():
        lines.append(f"{c:<12}{n:>12}")
    lines.append(f"images: {summary['images']}  without instances: {summary['images_without_instances']}  "
                 f"failures: {summary['failures']} (images without map: {summary.get('images_without_map', 0)}, "
                 f"maps without image: {summary.get('maps_without_image', 0)})  work items: {summary['work_items']}")
    return "\n".join(lines)
