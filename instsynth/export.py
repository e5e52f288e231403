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

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cityscapesscripts.helpers.labels import id2label

from instsynth import shards, storage
from instsynth.cityscapes import (
    THING_IDS,
    decode_ids,
    encode_ids,
    encode_png,
    gt_paths,
    label_ids_from_instance_ids,
)


def _region_polygon(mask: np.ndarray) -> list[list[int]] | None:
    """One polygon for a region: its components' outer contours, chained through their first points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = sorted((c[:, 0, :] for c in contours), key=lambda c: -len(c))
    if not contours:
        return None
    poly: list[list[int]] = []
    anchor = None
    for c in contours:
        pts = c.tolist()
        if anchor is not None:
            poly.append(anchor)
        poly.extend(pts + [pts[0]])
        anchor = anchor or pts[0]
    if len(poly) < 3:  # a single pixel or a line: make it a degenerate triangle PIL still fills
        x, y = poly[0]
        poly = [[x, y], [x, y], [x, y]]
    return poly


def polygons_for(ids: np.ndarray) -> tuple[dict, np.ndarray]:
    """(Cityscapes polygon JSON, instanceIds renumbered to the JSON's instance order)."""
    h, w = ids.shape
    vals, counts = np.unique(ids, return_counts=True)
    order = sorted(zip(vals.tolist(), counts.tolist()), key=lambda vc: (-vc[1], vc[0]))
    objects, renum = [], {}
    k_per_class: dict[int, int] = defaultdict(int)
    for v, _ in order:
        cid = v // 1000 if v >= 1000 else v
        lb = id2label.get(cid)
        if lb is None or lb.id <= 0:
            continue  # unlabeled/unknown: left to the background value
        poly = _region_polygon(ids == v)
        if poly is None:
            continue
        if v >= 1000:
            label = lb.name
            renum[v] = cid * 1000 + k_per_class[cid]
            k_per_class[cid] += 1
        else:
            label = lb.name + "group" if lb.hasInstances else lb.name
            renum[v] = v
        objects.append({"label": label, "polygon": poly})
    lut = np.arange(int(ids.max(initial=0)) + 1, dtype=np.int32)
    for v, nv in renum.items():
        lut[v] = nv
    new = lut[ids]
    return {"imgHeight": int(h), "imgWidth": int(w), "objects": objects}, new.astype(np.int32)


def export_cityscapes(dirs: list[str], out: str, split: str = "train", log=print) -> int:
    """Write every committed row of ``dirs`` into a Cityscapes-layout tree under ``out``."""
    seq: dict[str, int] = defaultdict(int)
    index = io.StringIO()
    writer = csv.writer(index)
    writer.writerow(["stem", "work_id", "generator", "source_image"])
    n = 0
    for d in dirs:
        for t in shards.iter_tables(d):
            for r in t.to_pylist():
                city = r["city"].replace("_", "")
                stem = f"{city}_{seq[city]:06d}_000019"
                seq[city] += 1
                ids = decode_ids(r["instance_ids"], r["work_id"])
                poly, ids_new = polygons_for(ids)
                p = gt_paths(split, city, stem)
                storage.write_bytes(storage.join(out, p["image"]), r["image"])
                storage.write_bytes(storage.join(out, p["instance_ids"]), encode_ids(ids_new))
                storage.write_bytes(storage.join(out, p["label_ids"]), encode_png(label_ids_from_instance_ids(ids_new)))
                storage.write_bytes(storage.join(out, p["polygons"]), json.dumps(poly).encode())
                writer.writerow([stem, r["work_id"], r["generator"], r["source_image"]])
                n += 1
    storage.write_bytes(storage.join(out, "export_index.csv"), index.getvalue().encode())
    log(f"exported {n} images in Cityscapes layout to {out} (split {split})")
    return n


def export_coco(dirs: list[str], out: str, log=print) -> dict:
    """COCO instances JSON (RLE masks) + images; group regions become iscrowd=1 annotations."""
    from pycocotools import mask as mask_utils

    cats = [{"id": cid, "name": name, "supercategory": "cityscapes"} for cid, name in sorted(THING_IDS.items())]
    images, anns = [], []
    for d in dirs:
        for t in shards.iter_tables(d):
            for r in t.to_pylist():
                image_id = len(images) + 1
                fname = f"images/{r['generator']}/{r['work_id']}.png"
                storage.write_bytes(storage.join(out, fname), r["image"])
                images.append({"id": image_id, "file_name": fname, "width": r["width"], "height": r["height"],
                               "work_id": r["work_id"], "generator": r["generator"]})
                ids = decode_ids(r["instance_ids"], r["work_id"])
                for v in np.unique(ids).tolist():
                    cid = v // 1000 if v >= 1000 else v
                    if cid not in THING_IDS:
                        continue
                    m = np.asfortranarray((ids == v).astype(np.uint8))
                    rle = mask_utils.encode(m)
                    area = float(mask_utils.area(rle))
                    bbox = [float(b) for b in mask_utils.toBbox(rle)]
                    rle["counts"] = rle["counts"].decode("ascii")
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid,
                                 "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": int(v < 1000)})
    coco = {"info": {"description": "IS-Cityscapes export (InstSynth)"}, "images": images,
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
    from instsynth.card import render_card
    from instsynth.config import load_config

    if storage.exists(storage.join(out, "README.md")) or storage.list_names(storage.join(out, "data")):
        raise storage.StorageError(f"{out}: already holds an export; choose an empty --out")
    ledgers = []
    for d in dirs:
        ledger = shards.Ledger(d)
        ledger.scan()
        bad = ledger.verify_sizes()
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
            state["writer"] = pq.ParquetWriter(state["sink"], shards.ROW_SCHEMA, compression="zstd")
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
                t = storage.read_parquet(shards.part_path(ledger.out, u)).cast(shards.ROW_SCHEMA)
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
                "+".join(gens), classes, sorted(models), ["data/train-*.parquet"])
    log(f"exported {rows} rows from {len(dirs)} dirs as {len(files)} Parquet shards to {out}/data "
        f"(card: {storage.join(out, 'README.md')})")
    return {"rows": rows, "files": files}
