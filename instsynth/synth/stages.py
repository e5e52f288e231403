"""The main job's stages as plain functions over a *work unit* (a few plan rows).

Why units: a unit is the smallest piece of output that is committed (one Parquet file + one
marker), so it is also what a stage receives.  These functions know nothing of Ray;
``executors/ray.py`` wraps them in Ray Data operators and ``executors/local.py`` runs them in a plain
loop (``run.executor: local``), the baseline the pipeline benchmark compares against.

A bad record never raises out of a stage: it becomes a failure ``{work_id, image_id, stage,
reason}`` carried with the unit and written to ``_failures/<unit>.parquet``.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from instsynth.config import ComposeConfig, parse_size
from instsynth.datasets import DataError, DatasetSpec, ImageRef, Labels, compact, encode_png, open_dataset
from instsynth.generators import build_generator, resolve_batch_size
from instsynth.io import storage
from instsynth.output.layout import unit_name
from instsynth.output.schema import make_row
from instsynth.plan.rng import item_rng, item_seed
from instsynth.plan.select import bbox_of, prepare_instance
from instsynth.quality.filter import build_scorer
from instsynth.quality.metrics import per_sample, region_image
from instsynth.synth.compose import cut_window, focused_window, paste, resize_window


@dataclass
class Unit:
    """A work unit in flight: its plan rows, per-item working data, output rows and failures."""

    name: str
    rows: list[dict]
    items: list[dict] = field(default_factory=list)
    out: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    generator: dict = field(default_factory=lambda: {"generator": "", "model_id": "", "model_revision": ""})

    def fail(self, row: dict, stage: str, reason: str, **extra) -> None:
        self.failures.append({"work_id": row["work_id"], "image_id": row["image_id"], "stage": stage,
                              "reason": reason, "details": json.dumps(extra, sort_keys=True) if extra else ""})


def setup_generator(gen_cfg, quality_cfg):
    """(generator, batch size, CLIP scorer or None): what every place that runs Phase 2 builds once
    (the local loop, each Ray generator actor, the dry run's timing)."""
    gen = build_generator(gen_cfg)
    return gen, resolve_batch_size(gen, gen_cfg.batch_size), build_scorer(quality_cfg)


class PendingUnits:
    """The units a run will execute, kept in Arrow: the pending plan rows in unit order and each
    unit's name.  Why not a list of dicts: at 1M planned items those cost ~3 KB each on the driver;
    the Arrow rows are a few hundred bytes, and an executor turns one unit into dicts only when it
    runs it (``rows(i)``) or ships whole blocks of units (``blocks``)."""

    def __init__(self, names: list[str], table, rows_per_unit: int):
        self.names, self.table, self.rows_per_unit = names, table, rows_per_unit

    @classmethod
    def of(cls, plan, done: set[str], rows_per_unit: int, limit: int | None = None,
           only: set[str] | None = None) -> PendingUnits:
        """The one unit splitter: the rows of ``plan`` (an Arrow table or a list of dicts with ``work_id``)
        not in ``done`` (and in ``only``), in plan order, ``limit`` at most, ``rows_per_unit`` to a unit;
        a unit is named by the plan index of its first row, so a resumed run names its units as an
        uninterrupted one would."""
        import pyarrow as pa

        table = plan if isinstance(plan, pa.Table) else pa.Table.from_pylist(plan)
        todo = [i for i, w in enumerate(table.column("work_id").to_pylist())
                if w not in done and (only is None or w in only)]
        if limit is not None:
            todo = todo[:limit]
        names = [unit_name(todo[s]) for s in range(0, len(todo), rows_per_unit)]
        return cls(names, table.take(pa.array(todo, pa.int64())), rows_per_unit)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, i: int) -> list[dict]:
        return self.table.slice(i * self.rows_per_unit, self.rows_per_unit).to_pylist()

    def __iter__(self):
        for i, name in enumerate(self.names):
            yield name, self.rows(i)

    def blocks(self, units_per_block: int):
        """Arrow tables of ``units_per_block`` units each: columns ``unit`` and ``rows`` (the unit's
        plan rows as a list of structs)."""
        import pyarrow as pa

        rpu = self.rows_per_unit
        for b in range(0, len(self.names), units_per_block):
            names = self.names[b:b + units_per_block]
            part = self.table.slice(b * rpu, len(names) * rpu).combine_chunks()
            n = part.num_rows
            offsets = pa.array([min(i * rpu, n) for i in range(len(names) + 1)], pa.int32())
            structs = pa.StructArray.from_arrays([c.combine_chunks() for c in part.columns], names=part.column_names)
            yield pa.table({"unit": pa.array(names, pa.string()),
                            "rows": pa.ListArray.from_arrays(offsets, structs)})


def _reason(e: BaseException) -> str:
    if isinstance(e, (DataError, storage.StorageError, ValueError)):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{e.__class__.__name__}: {e}{where}"


def image_ref(row: dict) -> ImageRef:
    """The source image of a plan row."""
    return ImageRef(row["image_id"], row["split"], row["group"], row["image_path"], row["label_path"],
                    int(row["image_width"]), int(row["image_height"]))


def prepare(unit: Unit, source: DatasetSpec, compose: ComposeConfig) -> Unit:
    """Decode each source image once, then Phase 1 crop + mask and the focused window per row.

    The window is drawn here, before generation, because it depends only on the label map;
    carrying the window (not the full image) to Phase 3 keeps full frames out of the object store.
    """
    try:  # once per unit: a COCO dataset's open checks its label file's size (a request on object stores)
        ds = open_dataset(source)
    except Exception as e:  # noqa: BLE001 - an unreachable source fails the unit's rows, not the job
        for row in unit.rows:
            unit.fail(row, "decode", _reason(e))
        return unit
    for _, group in groupby(unit.rows, key=lambda r: r["image_path"]):
        group = list(group)
        try:
            image, labels = ds.load(image_ref(group[0]))
        except Exception as e:  # noqa: BLE001 - any damage becomes a recorded failure
            for row in group:
                unit.fail(row, "decode", _reason(e))
            continue
        counts, instances = labels.counts(), labels.instances()
        for row in group:
            try:
                unit.items.append(prepare_row(row, image, labels, counts, instances, compose, ds))
            except Exception as e:  # noqa: BLE001
                unit.fail(row, "prepare", _reason(e))
    return unit


def prepare_row(row: dict, image: np.ndarray, labels: Labels, counts: np.ndarray, instances: np.ndarray,
                compose: ComposeConfig, ds) -> dict:
    iid = int(row["instance_id"])
    k = labels.index_of(iid)
    if k == 0 or counts[k] == 0:
        raise DataError(f"{row['label_path'] or row['image_path']}: instance {iid} not found (labels changed since "
                        "planning?)")
    bbox = tuple(int(v) for v in row["bbox"])
    square = tuple(int(v) for v in row["crop_box"])
    crop, mask = prepare_instance(image, labels.index, k, square)
    win = focused_window(labels.index, k, bbox, item_rng(row["seed"], row["work_id"], "window"),
                         compose.lam_mean, compose.lam_sd, compose.lam_min,
                         compose.sliver_pixels, compose.sliver_redraws, counts, instances)
    win_img, win_index = cut_window(image, labels.index, win.box)
    present = np.flatnonzero(np.bincount(win_index.ravel(), minlength=1))
    return {"row": row, "crop": crop, "mask": mask, "window": win.box, "lam": win.lam,
            "window_image": win_img, "window_index": win_index, "sliver_pixels": win.sliver_pixels,
            "regions": {int(v): labels.regions[v - 1] for v in present.tolist() if v > 0},
            "dataset": ds.format, "class_label": ds.label_space.position(row["class_name"]),
            "gen_seed": item_seed(row["seed"], row["work_id"])}


def generator_inputs(items: list[dict]) -> list[dict]:
    """What a generator sees per item: plan fields + square crop + mask (the generator protocol)."""
    return [{**it["row"], "crop": it["crop"], "mask": it["mask"], "gen_seed": it["gen_seed"]} for it in items]


def filter_reason(stats: dict, q) -> str | None:
    """Why a generated sample fails the quality thresholds (None: it passes)."""
    if q is None:
        return None
    checks = [("changed_inside", q.min_changed_inside, lambda v, t: v >= t, "instance left (nearly) untouched"),
              ("inside_share", q.min_inside_share, lambda v, t: v >= t, "changes outside the mask"),
              ("psnr_in", q.max_psnr_inside, lambda v, t: v <= t, "instance too close to the source"),
              ("clip", q.min_clip, lambda v, t: v >= t, "region CLIP score below threshold")]
    for key, t, ok, why in checks:
        if t is not None and stats.get(key) is not None and not ok(stats[key], t):
            return f"{why}: {key}={stats[key]} (threshold {t})"
    return None


def _score(it: dict, img: np.ndarray, res: dict, q, scorer) -> dict:
    stats = dict(res.get("stats", {}))
    if q is None or not q.per_sample:
        return stats
    stats.update(per_sample(it["crop"], img, it["mask"], q.change_threshold))
    if scorer is not None:
        sx, sy = int(it["row"]["crop_box"][0]), int(it["row"]["crop_box"][1])
        bx0, by0, bx1, by1 = (int(v) for v in it["row"]["bbox"])
        region = region_image(img, it["mask"], (bx0 - sx, by0 - sy, bx1 - sx, by1 - sy))
        stats["clip"] = round(scorer.text_image([region], [it["row"]["prompt"]])[0], 3)
    return stats


def generate(unit: Unit, generator, batch_size: int, quality=None, scorer=None, lock=None) -> Unit:
    """Run the generator over the unit's items in batches; per-item errors become failures.

    ``lock``: held only around the generator call, so a second unit's host work (unpickling, scoring,
    pickling) can run in another thread while this one's batch is on the GPU.

    With ``quality`` thresholds, a rejected sample is regenerated up to ``quality.max_tries`` times,
    try t drawing from ``[seed, crc32(work_id), t]``; every try's numbers go into the row's
    ``gen_stats["tries"]``; samples that never pass become failures (stage ``filter``) with their scores.
    """
    kept = []
    tries = max(1, quality.max_tries) if quality is not None else 1
    # a generator with a ``model_lock`` takes the lock itself, around its model call only (its own
    # host work - resizing to the working resolution and back, checks - then overlaps the other thread's)
    inner = lock is not None and hasattr(generator, "model_lock")
    if inner:
        generator.model_lock = lock
    outer = lock if lock is not None and not inner else contextlib.nullcontext()
    pending = unit.items
    for attempt in range(tries):
        retry = []
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            try:
                with outer:
                    results = generator(generator_inputs(batch))
            except Exception as e:  # noqa: BLE001 - a crashing batch fails its items, not the job
                results = [{"error": _reason(e)} for _ in batch]
            for it, res in zip(batch, results):
                if res.get("error"):
                    unit.fail(it["row"], "generate", res["error"], **res.get("stats", {}))
                    continue
                img = res["image"]
                if img.shape != it["crop"].shape:
                    unit.fail(it["row"], "generate", f"generated shape {img.shape} != crop shape {it['crop'].shape}")
                    continue
                stats = _score(it, img, res, quality, scorer)
                it.setdefault("tries", []).append({"gen_seed": it["gen_seed"], **stats})
                why = filter_reason(stats, quality)
                if why is None:
                    it["generated"] = img
                    it["gen_stats"] = {**stats, "attempts": attempt + 1, "tries": it["tries"]}
                    kept.append(it)
                elif attempt + 1 < tries:
                    it["gen_seed"] = item_seed(it["row"]["seed"], it["row"]["work_id"], attempt + 1)
                    retry.append(it)
                else:
                    unit.fail(it["row"], "filter", why, generator=getattr(generator, "name", ""),
                              class_name=it["row"]["class_name"], tries=it["tries"])
        pending = retry
    unit.items = [it for it in unit.items if "generated" in it]
    unit.generator = {"generator": getattr(generator, "name", type(generator).__name__),
                      "model_id": getattr(generator, "model_id", ""),
                      "model_revision": getattr(generator, "model_revision", "")}
    return unit


def compose(unit: Unit, cfg: ComposeConfig) -> Unit:
    """Phase 3: paste back into the window, optional resize, PNG-encode, attach provenance."""
    size = parse_size(cfg.resize, "compose.resize") if cfg.resize else None
    gen = unit.generator
    for it in unit.items:
        row = it["row"]
        try:
            x0, y0, x1, y1 = it["window"]
            img = paste(it["window_image"], (x0, y0), it["generated"], it["mask"],
                        tuple(int(v) for v in row["crop_box"]), cfg.feather)
            index = it["window_index"]
            if size:
                img, index = resize_window(img, index, size)
            labels = compact(index, it["regions"])
            k = next((r["index"] for r in labels.regions if r["source_id"] == int(row["instance_id"])), 0)
            bbox = bbox_of(labels.index == k) if k else (0, 0, 0, 0)
            unit.out.append(make_row(
                work_id=row["work_id"], image_id=row["image_id"], split=row["split"], group=row["group"],
                dataset=it["dataset"], instance_id=int(row["instance_id"]), instance_index=k,
                class_id=int(row["class_id"]), class_name=row["class_name"], class_label=it["class_label"],
                image=encode_png(img), labels=labels, bbox=bbox, crop_box=(x0, y0, x1, y1),
                square_box=row["crop_box"], lam=it["lam"], prompt=row["prompt"],
                negative_prompt=row["negative_prompt"], generator=gen, seed=row["seed"], gen_seed=it["gen_seed"],
                variant=row["variant"], source_image=row["image_path"], gen_stats=it.get("gen_stats", {})))
        except Exception as e:  # noqa: BLE001
            unit.fail(row, "compose", _reason(e))
    unit.items = []
    return unit
