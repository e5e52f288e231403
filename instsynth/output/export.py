"""Exports for the tools people already train with.

* ``cityscapes``: the Cityscapes layout (leftImg8bit, gtFine instanceIds/labelIds/polygons) with
  Cityscapes-style names ``{city}_{seq:06d}_{frame:06d}`` - cityscapesscripts and detectron2's
  Cityscapes loader parse these names and read the polygon JSON.  Instances are renumbered so that
  cityscapesscripts' ``json2instanceImg`` on the exported JSON reproduces the exported instanceIds:
  polygons are ordered by decreasing area (enclosing regions first, so later ones paint over them)
  and each class's instances are numbered in that order.  ``export_index.csv`` maps names to work ids.
* ``coco``: COCO instance JSON with RLE masks (pycocotools), images under ``images/``.
* ``parquet``: the committed rows consolidated into few large shards with the same schema and card.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from instsynth.config import load_config
from instsynth.datasets import DataError
from instsynth.datasets.cityscapes import instance_ids, polygons_for, write_image
from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output.card import render_card
from instsynth.output.layout import part_path
from instsynth.output.ledger import Ledger
from instsynth.output.readers import iter_tables
from instsynth.output.schema import ROW_SCHEMA, labels_of, normalize
from instsynth.output.sources import label_space


def export_cityscapes(dirs: list[str], out: str, split: str = "train", log=print) -> int:
    """Write every committed row of ``dirs`` into a Cityscapes-layout tree under ``out``: the rows' own
    instanceIds maps (a Cityscapes-sourced row keeps every source id).  Rows of other label spaces are
    refused before anything is written (use ``--format coco``)."""
    space = label_space(dirs)
    if space.name != "cityscapes":
        raise DataError(f"export --format cityscapes: {dirs[0]} comes from {space.name}, not Cityscapes; "
                        "use --format coco")
    seq: dict[str, int] = defaultdict(int)
    index = io.StringIO()
    writer = csv.writer(index)
    writer.writerow(["stem", "work_id", "generator", "source_image"])
    n = 0
    for d in dirs:
        for t in iter_tables(d, ["work_id", "group", "image", "labels", "regions", "generator",
                                        "source_image"]):
            for r in t.to_pylist():
                r = normalize(r)
                city = (r["group"] or "synthetic").replace("_", "").replace("/", "")
                stem = f"{city}_{seq[city]:06d}_000019"
                seq[city] += 1
                poly, ids_new = polygons_for(instance_ids(labels_of(r)))
                write_image(out, split, city, stem, r["image"], ids_new, poly, compact_json=True)
                writer.writerow([stem, r["work_id"], r["generator"], r["source_image"]])
                n += 1
    storage.write_bytes(storage.join(out, "export_index.csv"), index.getvalue().encode())
    log(f"exported {n} images in Cityscapes layout to {out} (split {split})")
    return n


def export_coco(dirs: list[str], out: str, log=print) -> dict:
    """COCO instances JSON (RLE masks) + images: the label space's evaluated classes with the input's own
    category ids and names (Cityscapes: its eight evaluated classes), one annotation per instance or crowd
    region of those classes in every row (``iscrowd`` from the region), each naming its ``source_id``."""
    from pycocotools import mask as mask_utils

    space = label_space(dirs)
    evaluated = set(space.evaluated)
    cats = [{"id": c.id, "name": c.name, "supercategory": space.name} for c in space.classes if c.name in evaluated]
    images, anns = [], []
    for d in dirs:
        for t in iter_tables(d, ["work_id", "generator", "image", "labels", "regions", "width", "height",
                                        "source_image", "image_id"]):
            for r in t.to_pylist():
                r = normalize(r)
                image_id = len(images) + 1
                ext = "jpg" if r["image"][:3] == b"\xff\xd8\xff" else "png"
                fname = f"images/{r['generator']}/{r['work_id']}.{ext}"
                storage.write_bytes(storage.join(out, fname), r["image"])
                images.append({"id": image_id, "file_name": fname, "width": r["width"], "height": r["height"],
                               "work_id": r["work_id"], "generator": r["generator"], "source_image": r["source_image"],
                               "source_image_id": r["image_id"]})
                labels = labels_of(r)
                for reg in labels.regions:
                    if not reg["thing"] or reg["class_name"] not in evaluated:
                        continue
                    m = np.asfortranarray((labels.index == reg["index"]).astype(np.uint8))
                    rle = mask_utils.encode(m)
                    area = float(mask_utils.area(rle))
                    if not area:
                        continue
                    bbox = [float(b) for b in mask_utils.toBbox(rle)]
                    rle["counts"] = rle["counts"].decode("ascii")
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": reg["class_id"],
                                 "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": int(reg["crowd"]),
                                 "source_id": reg["source_id"]})
    coco = {"info": {"description": f"InstSynth export ({space.name})"}, "images": images,
            "annotations": anns, "categories": cats}
    storage.write_bytes(storage.join(out, "instances.json"), json.dumps(coco).encode())
    log(f"exported {len(images)} images, {len(anns)} annotations as COCO to {out}/instances.json")
    return coco


def parse_bytes(text: str, key: str = "--shard-size") -> int:
    """'500MB' / '2GB' / '64MiB' / '1000000' -> bytes; a one-line error naming ``key`` otherwise."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"{key}: {text!r} is not a size (e.g. 500MB, 2GB)")
    base = 1024 if m.group(3) and m.group(3).lower() == "ib" else 1000
    power = "kmgt".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * base ** power)


#: rows per row group of a consolidated shard: large enough for fast scans, small enough for memory
ROW_GROUP_ROWS = 256


def export_parquet(dirs: list[str], out: str, shard_size: int = 500 * 10**6, log=print) -> dict:
    """The committed rows of ``dirs`` as few large shards (``data/train-NNNNN.parquet``, same schema)
    with the same dataset card, for publishing: a Hub upload of 100k items is then ~100 files, not
    12.5k parts.  Streams unit by unit (memory: one row group plus one part); the card is written last,
    so a crashed export leaves no card and is simply run again.  Only verified units are exported."""
    if storage.exists(storage.join(out, "README.md")) or storage.list_names(storage.join(out, "data")):
        raise storage.StorageError(f"{out}: already holds an export; choose an empty --out")
    ledgers = []
    for d in dirs:
        ledger = Ledger.open(d)
        _, bad = ledger.verified()
        if bad:
            raise storage.StorageError(f"{d}: {len(bad)} damaged units (run `instsynth status {d}`); repair first")
        if not ledger.markers:
            raise storage.StorageError(f"{d}: no committed units (not an output dir?)")
        ledgers.append(ledger)
    files: list[str] = []
    state = {"writer": None, "sink": None, "ctx": None, "bytes": 0}
    buf: list[pa.Table] = []
    rows = 0

    def close_shard():
        if state["writer"] is not None:
            state["writer"].close()
            state["ctx"].__exit__(None, None, None)
            state["writer"] = None

    def flush():
        nonlocal buf
        if not buf:
            return
        if state["writer"] is None:
            name = f"train-{len(files):05d}.parquet"
            files.append(name)
            state["ctx"] = storage.open_output(storage.join(out, "data", name))
            state["sink"] = state["ctx"].__enter__()
            state["writer"] = pq.ParquetWriter(state["sink"], ROW_SCHEMA, compression="zstd")
            state["bytes"] = 0
        t = pa.concat_tables(buf)
        state["writer"].write_table(t, row_group_size=len(t))
        buf = []

    try:
        buffered = 0
        for ledger in ledgers:
            for u in sorted(ledger.markers):
                m = ledger.markers[u]
                if not m["rows"]:
                    continue
                t = read_parquet(part_path(ledger.out, u))
                t = t.cast(ROW_SCHEMA) if "labels" in t.column_names else \
                    pa.Table.from_pylist([normalize(r) for r in t.to_pylist()], schema=ROW_SCHEMA)
                buf.append(t)
                buffered += t.num_rows
                rows += t.num_rows
                state["bytes"] += m.get("data", {}).get("bytes", t.nbytes)
                if buffered >= ROW_GROUP_ROWS:
                    flush()
                    buffered = 0
                if state["bytes"] >= shard_size:
                    flush()
                    buffered = 0
                    close_shard()
        flush()
        close_shard()
    except BaseException:
        close_shard()
        raise
    classes: dict = {}
    models: set = set()
    planned = failed = 0
    for ledger in ledgers:
        tot = ledger.totals(sorted(ledger.markers))
        for c, n in tot["classes"].items():
            classes[c] = classes.get(c, 0) + n
        models |= set(tot["models"])
        failed += tot["failures"]
        planned += tot["rows"] + tot["failures"]
    gens = sorted({g for g, _, _ in models}) or ["unknown"]
    cfg_path = storage.join(dirs[0], "config.yaml")
    cfg = load_config(cfg_path) if storage.exists(cfg_path) else load_config()
    render_card(out, cfg, {"committed_rows": rows, "planned": planned, "failed_items": failed, "pending_items": 0},
                "+".join(gens), classes, sorted(models), ["data/train-*.parquet"], label_space(dirs))
    log(f"exported {rows} rows from {len(dirs)} dirs as {len(files)} Parquet shards to {out}/data "
        f"(card: {storage.join(out, 'README.md')})")
    return {"rows": rows, "files": files}
