"""The work plan: one Parquet row per (selected instance, variant), made from label maps alone.

Why a plan: it fixes *what* will be generated (instances, crop boxes, prompts, seeds) before any
GPU is touched, so a run can be sized (``synth --dry-run``), split into units, resumed, and audited.
``work_id`` is deterministic (``{image_id}_{instance_id}_v{variant}``), so every random choice keyed
on it is reproducible and independent of processing order.  The plan records its dataset (format,
source, image root) and label space in its metadata, so every later command finds the source from it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from instsynth.config import Config, to_yaml
from instsynth.datasets import (
    DataError,
    Dataset,
    DatasetSpec,
    ImageRef,
    Labels,
    LabelSpace,
    cityscapes_space,
    move,
    open_dataset,
    resolve,
)
from instsynth.datasets.cityscapes import IMAGE_WITHOUT_MAP, MAP_WITHOUT_IMAGE
from instsynth.datasets.coco import write_label_file
from instsynth.io.parquet import parquet_footer, read_parquet, write_parquet
from instsynth.plan.prompts import make_prompt
from instsynth.plan.rng import item_rng
from instsynth.plan.select import select_instances, square_box

ROOT_KEY = b"instsynth.root"
CONFIG_KEY = b"instsynth.config"
DATASET_KEY = b"instsynth.dataset"
LABELS_KEY = b"instsynth.label_space"

PLAN_SCHEMA = pa.schema([
    ("work_id", pa.string()),
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("group", pa.string()),
    ("image_path", pa.string()),
    ("label_path", pa.string()),
    ("instance_id", pa.int64()),
    ("class_id", pa.int32()),
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
#: columns of plans written before the dataset seam, and what they became
LEGACY_COLUMNS = {"city": "group", "instance_ids_path": "label_path"}

FAILURE_SCHEMA = pa.schema([("image_id", pa.string()), ("file", pa.string()), ("reason", pa.string())])
__all__ = ["IMAGE_WITHOUT_MAP", "MAP_WITHOUT_IMAGE", "make_plan", "read_plan", "plan_dataset"]


def work_id(image_id: str, instance_id: int, variant: int) -> str:
    return f"{image_id}_{instance_id}_v{variant}"


def resolve_classes(cfg: Config, space: LabelSpace) -> None:
    """``plan.classes`` defaults to every selectable class of the label space; names are checked
    against it (one line listing the valid ones)."""
    if cfg.plan.classes is None:
        cfg.plan.classes = space.selectable
    space.check_classes(cfg.plan.classes, "plan.classes")
    space.check_classes(list(cfg.plan.class_variants), "plan.class_variants")


def plan_image(ref: ImageRef, labels: Labels, cfg: Config, space: LabelSpace) -> list[dict]:
    """Plan rows for one image given its labels."""
    p = cfg.plan
    return plan_rows(ref, select_instances(labels, p.top_k, p.min_pixels, p.classes), labels.index.shape, cfg, space)


def plan_rows(ref: ImageRef, instances, shape: tuple[int, int], cfg: Config, space: LabelSpace) -> list[dict]:
    """Plan rows for one image given its selected instances and its (height, width)."""
    p = cfg.plan
    height, width = shape
    rows = []
    for inst in instances:
        for v in range(p.class_variants.get(inst.class_name, p.variants)):
            wid = work_id(ref.image_id, inst.instance_id, v)
            prompt, words = make_prompt(inst.class_name, cfg.prompts.templates, cfg.prompts.vocab,
                                        item_rng(p.seed, wid, "prompt"), noun=space.noun(inst.class_name),
                                        default=cfg.prompts.default_template)
            rows.append({
                "work_id": wid, "image_id": ref.image_id, "split": ref.split, "group": ref.group,
                "image_path": ref.image, "label_path": ref.labels,
                "instance_id": inst.instance_id, "class_id": inst.class_id, "class_name": inst.class_name,
                "pixels": inst.pixels, "bbox": list(inst.bbox),
                "crop_box": list(square_box(inst.bbox, width, height, p.margin)),
                "image_width": width, "image_height": height,
                "prompt": prompt, "prompt_words": json.dumps(words, sort_keys=True),
                "negative_prompt": cfg.prompts.negative, "seed": p.seed, "variant": v,
            })
    return rows


def iter_plan(ds: Dataset, cfg: Config) -> Iterator[tuple[ImageRef, list[dict] | None, str | None]]:
    """(image, rows or None, failure reason or None) per image, reading label maps on a few threads."""

    p = cfg.plan

    def one(ref: ImageRef):
        try:
            instances, shape = ds.select(ref, p.top_k, p.min_pixels, p.classes)
        except DataError as e:
            return ref, None, str(e)
        return ref, plan_rows(ref, instances, shape, cfg, ds.label_space), None

    with ThreadPoolExecutor(max(1, cfg.plan.workers)) as pool:
        yield from pool.map(one, ds.discover(cfg.plan.split))


def dataset_spec(source: str, cfg: Config) -> DatasetSpec:
    return resolve(source, cfg.dataset.format, cfg.dataset.image_root)


def make_plan(source: str | DatasetSpec, cfg: Config, progress=None,
              label_rows: list | None = None) -> tuple[pa.Table, pa.Table, dict]:
    """(plan table, failures table, summary) for a dataset; its spec, label space and the config go
    into the metadata.  ``label_rows`` (a list to fill, formats whose labels live in one annotation file):
    each planned image's annotations, in plan order, for the run's label file (``write_plan``); the rows'
    ``label_path`` is then the image's row in it."""
    spec = source if isinstance(source, DatasetSpec) else dataset_spec(source, cfg)
    ds = open_dataset(spec)
    resolve_classes(cfg, ds.label_space)
    rows, failures = [], []
    images = empty = 0
    sink = label_rows if label_rows is not None and hasattr(ds, "blob") else None
    for ref, rs, reason in iter_plan(ds, cfg):
        images += 1
        if reason is not None:
            failures.append({"image_id": ref.image_id, "file": ref.labels or ref.image, "reason": reason})
        elif not rs:
            empty += 1
        else:
            if sink is not None:
                for r in rs:
                    r["label_path"] = str(len(sink))
                sink.append((ref.image_id, ds.blob(ref)))
            rows.extend(rs)
        if progress:
            progress(images)
    extra = list(ds.failures(cfg.plan.split))
    failures.extend(extra)
    meta = {ROOT_KEY: spec.source.encode(), CONFIG_KEY: to_yaml(cfg).encode(), DATASET_KEY: spec.to_json().encode(),
            LABELS_KEY: ds.label_space.to_json().encode()}
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA).replace_schema_metadata(meta)
    fails = pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA)
    summary = {
        "images": images, "images_without_instances": empty, "failures": len(failures),
        "images_without_map": sum(f["reason"].startswith(IMAGE_WITHOUT_MAP) for f in failures),
        "maps_without_image": sum(f["reason"].startswith(MAP_WITHOUT_IMAGE) for f in extra),
        "bad_records": sum(not f["reason"].startswith(MAP_WITHOUT_IMAGE) for f in extra),
        "work_items": len(rows), "per_class": dict(sorted(Counter(r["class_name"] for r in rows).items())),
        "dataset": spec.format,
    }
    return table, fails, summary


def failures_path(plan_path: str) -> str:
    base = plan_path[:-len(".parquet")] if plan_path.endswith(".parquet") else plan_path
    return base + ".failures.parquet"


def labels_path(plan_path: str) -> str:
    """The run's per-image label file beside a plan (COCO: each planned image's annotations)."""
    return failures_path(plan_path)[: -len(".failures.parquet")] + ".labels.parquet"


def write_plan(plan_path: str, table: pa.Table, failures: pa.Table, label_rows: list | None = None) -> None:
    """The plan, its failures and (``label_rows``) its label file; the plan last (it names the others)."""
    write_parquet(failures, failures_path(plan_path))
    if label_rows:
        write_label_file(labels_path(plan_path), label_rows, plan_label_space(table))
    write_parquet(table, plan_path)


def _upgrade(table: pa.Table) -> pa.Table:
    """A plan written before the dataset seam, in today's columns (read only; the file is never rewritten)."""
    meta = table.schema.metadata
    names = [LEGACY_COLUMNS.get(n, n) for n in table.column_names]
    table = table.rename_columns(names)
    if "class_id" not in names:
        space = cityscapes_space()
        ids = [space.by_name[c].id if c in space.by_name else 0 for c in table.column("class_name").to_pylist()]
        table = table.append_column("class_id", pa.array(ids, pa.int32()))
    table = table.select(PLAN_SCHEMA.names).cast(PLAN_SCHEMA)
    return table.replace_schema_metadata(meta)


def read_plan(plan_path: str) -> tuple[pa.Table, str | None]:
    """(plan table, source recorded in its metadata: a Cityscapes root or a COCO JSON)."""
    table = read_parquet(plan_path)
    have = {LEGACY_COLUMNS.get(n, n) for n in table.schema.names} | {"class_id"}
    missing = [n for n in PLAN_SCHEMA.names if n not in have]
    if missing:
        raise DataError(f"{plan_path}: not an InstSynth plan (missing columns {missing})")
    if table.schema.names != PLAN_SCHEMA.names:
        table = _upgrade(table)
    meta = table.schema.metadata or {}
    root = meta.get(ROOT_KEY, b"").decode() or None
    return table, root


def read_plan_schema(plan_path: str) -> pa.Schema:
    """A plan file's schema and metadata (its dataset, label space, summary) from its footer alone: what
    the checks before a run need, without reading the plan's rows."""
    return parquet_footer(plan_path)[0].schema.to_arrow_schema()


def _meta(plan: pa.Table | pa.Schema) -> dict:
    return (plan.schema if isinstance(plan, pa.Table) else plan).metadata or {}


def plan_dataset(plan: pa.Table | pa.Schema, data_root: str | None = None,
                 image_root: str | None = None) -> DatasetSpec | None:
    """The dataset a plan (table or schema) was made from (plans before the seam: a Cityscapes root),
    moved by ``--data-root`` / ``--image-root`` when given (``datasets.move``)."""
    meta = _meta(plan)
    if DATASET_KEY in meta:
        spec = DatasetSpec.from_json(meta[DATASET_KEY])
    elif meta.get(ROOT_KEY):
        spec = DatasetSpec("cityscapes", meta[ROOT_KEY].decode())
    else:
        spec = None
    return move(spec, data_root, image_root)


def plan_label_space(plan: pa.Table | pa.Schema) -> LabelSpace:
    meta = _meta(plan)
    return LabelSpace.from_json(meta[LABELS_KEY]) if LABELS_KEY in meta else cityscapes_space()


def format_summary(summary: dict) -> str:
    lines = [f"{'class':<16}{'work items':>12}"]
    for c, n in summary["per_class"].items():
        lines.append(f"{c:<16}{n:>12}")
    extra = (f"maps without image: {summary.get('maps_without_image', 0)}" if summary.get("dataset", "cityscapes")
             == "cityscapes" else f"bad records: {summary.get('bad_records', 0)}")
    lines.append(f"images: {summary['images']}  without instances: {summary['images_without_instances']}  "
                 f"failures: {summary['failures']} (images without map: {summary.get('images_without_map', 0)}, "
                 f"{extra})  work items: {summary['work_items']}")
    return "\n".join(lines)
