"""The main job's stages as plain functions over a *work unit* (a few plan rows).

Why units: a unit is the smallest piece of output that is committed (one Parquet file + one
marker), so it is also what a stage receives.  These functions know nothing of Ray; ``pipeline``
wraps them in Ray Data operators and ``synth`` also runs them in a plain loop (``run.executor:
local``), which is the baseline the pipeline benchmark compares against.

A bad record never raises out of a stage: it becomes a failure ``{work_id, image_id, stage,
reason}`` carried with the unit and written to ``_failures/<unit>.parquet``.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from instsynth import storage
from instsynth.cityscapes import DataError, check_same_size, encode_ids, encode_png, read_ids, read_image
from instsynth.config import ComposeConfig, parse_size
from instsynth.phases.compose import cut_window, focused_window, paste, resize_window
from instsynth.phases.select import bbox_of, prepare_instance
from instsynth.rng import item_rng, item_seed


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


def _reason(e: BaseException) -> str:
    if isinstance(e, (DataError, storage.StorageError, ValueError)):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{e.__class__.__name__}: {e}{where}"


def prepare(unit: Unit, root: str, compose: ComposeConfig) -> Unit:
    """Decode each source image once, then Phase 1 crop + mask and the focused window per row.

    The window is drawn here, before generation, because it depends only on the instance map;
    carrying the window (not the full image) to Phase 3 keeps full frames out of the object store.
    """
    for image_path, group in groupby(unit.rows, key=lambda r: r["image_path"]):
        group = list(group)
        try:
            image = read_image(storage.join(root, image_path))
            ids = read_ids(storage.join(root, group[0]["instance_ids_path"]))
            check_same_size(image, ids, image_path, group[0]["instance_ids_path"])
        except Exception as e:  # noqa: BLE001 - any damage becomes a recorded failure
            for row in group:
                unit.fail(row, "decode", _reason(e))
            continue
        counts = np.bincount(ids.ravel(), minlength=1)
        for row in group:
            try:
                unit.items.append(prepare_row(row, image, ids, counts, compose))
            except Exception as e:  # noqa: BLE001
                unit.fail(row, "prepare", _reason(e))
    return unit


def prepare_row(row: dict, image: np.ndarray, ids: np.ndarray, counts: np.ndarray, compose: ComposeConfig) -> dict:
    iid = int(row["instance_id"])
    if iid >= len(counts) or counts[iid] == 0:
        raise DataError(f"{row['instance_ids_path']}: instance {iid} not found (map changed since planning?)")
    bbox = tuple(int(v) for v in row["bbox"])
    square = tuple(int(v) for v in row["crop_box"])
    crop, mask = prepare_instance(image, ids, iid, square)
    win = focused_window(ids, iid, bbox, item_rng(row["seed"], row["work_id"], "window"),
                         compose.lam_mean, compose.lam_sd, compose.lam_min,
                         compose.sliver_pixels, compose.sliver_redraws, counts)
    win_img, win_ids = cut_window(image, ids, win.box)
    return {"row": row, "crop": crop, "mask": mask, "window": win.box, "lam": win.lam,
            "window_image": win_img, "window_ids": win_ids, "sliver_pixels": win.sliver_pixels,
            "gen_seed": item_seed(row["seed"], row["work_id"])}


def generator_inputs(items: list[dict]) -> list[dict]:
    """What a generator sees per item: plan fields + square crop + mask (the generator protocol)."""
    return [{**it["row"], "crop": it["crop"], "mask": it["mask"], "gen_seed": it["gen_seed"]} for it in items]


def generate(unit: Unit, generator, batch_size: int) -> Unit:
    """Run the generator over the unit's items in batches; per-item errors become failures."""
    kept = []
    for start in range(0, len(unit.items), batch_size):
        batch = unit.items[start:start + batch_size]
        try:
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
            it["generated"] = img
            it["gen_stats"] = res.get("stats", {})
            kept.append(it)
    unit.items = kept
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
            ids = it["window_ids"]
            if size:
                img, ids = resize_window(img, ids, size)
            inst = ids == int(row["instance_id"])
            bbox = bbox_of(inst) if inst.any() else (0, 0, 0, 0)
            unit.out.append({
                "work_id": row["work_id"], "image_id": row["image_id"], "split": row["split"], "city": row["city"],
                "instance_id": int(row["instance_id"]), "class_name": row["class_name"],
                "image": encode_png(img), "instance_ids": encode_ids(ids),
                "width": int(img.shape[1]), "height": int(img.shape[0]), "bbox": list(bbox),
                "crop_box": [int(x0), int(y0), int(x1), int(y1)],
                "square_box": [int(v) for v in row["crop_box"]], "lam": float(it["lam"]),
                "prompt": row["prompt"], "negative_prompt": row["negative_prompt"],
                "generator": gen["generator"], "model_id": gen["model_id"], "model_revision": gen["model_revision"],
                "seed": int(row["seed"]), "gen_seed": int(it["gen_seed"]), "variant": int(row["variant"]),
                "source_image": row["image_path"], "gen_stats": json.dumps(it.get("gen_stats", {}), sort_keys=True),
            })
        except Exception as e:  # noqa: BLE001
            unit.fail(row, "compose", _reason(e))
    unit.items = []
    return unit
