"""Cityscapes: its on-disk layout, its ``classId*1000+k`` instance maps and its label table.

Why its own module: the readers must work unchanged on the real dataset and on our synthetic sample,
and no other module may know the layout or the id arithmetic:

    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_{instanceIds,labelIds,color}.png, _polygons.json

Instance maps are 16-bit PNGs: ``classId*1000+k`` for instances, bare ``classId`` for stuff and for
crowd/group regions.  Names, ids and colours come from ``cityscapesscripts.helpers.labels``.  Each
distinct value of a map becomes one region (its value is the region's ``source_id``), so the map can be
rebuilt from an index map exactly (``instance_ids``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import id2label, labels, name2label

from instsynth.datasets.base import (
    ClassInfo,
    DataError,
    Dataset,
    DatasetSpec,
    ImageRef,
    Labels,
    LabelSpace,
    decode_image,
    decode_index,
    encode_index,
    encode_png,
    read_map,
    region,
)
from instsynth.io import storage

#: classes evaluated by Cityscapes instance AP (caravan/trailer have instances but are ignored)
THING_CLASSES = [lb.name for lb in labels if lb.hasInstances and not lb.ignoreInEval]
THING_IDS = {name2label[c].id: c for c in THING_CLASSES}

#: Cityscapes' label space: every label id 0..33; things are the classes with instances, the eight
#: evaluated ones are selectable (caravan and trailer instances stay labels, never selected)
LABEL_SPACE_NAME = "cityscapes"


def label_space():
    return LabelSpace(LABEL_SPACE_NAME, [
        ClassInfo(lb.id, lb.name, thing=lb.hasInstances, selectable=lb.hasInstances and not lb.ignoreInEval,
                  evaluated=lb.hasInstances and not lb.ignoreInEval, noun=lb.name)
        for lb in labels if lb.id >= 0])


def gt_paths(split: str, city: str, stem: str) -> dict[str, str]:
    base = f"gtFine/{split}/{city}/{stem}_gtFine_"
    return {
        "image": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
        "instance_ids": base + "instanceIds.png",
        "label_ids": base + "labelIds.png",
        "color": base + "color.png",
        "polygons": base + "polygons.json",
    }


#: the file-name ending of an instanceIds map (the official evaluator matches predictions by it too)
INSTANCE_IDS_SUFFIX = "_gtFine_instanceIds.png"


def split_dir(root: str, split: str) -> str:
    """The folder of a split's images."""
    return storage.join(root, "leftImg8bit", split)


def check_split(root: str, split: str) -> None:
    """A root that has the split's image folder (one-line DataError otherwise)."""
    if not storage.is_dir(split_dir(root, split)):
        raise DataError(f"{root} has no leftImg8bit/{split} (not a Cityscapes root)")


def is_root(path: str) -> bool:
    return storage.is_dir(storage.join(path, "leftImg8bit"))


def discover(root: str, split: str = "train") -> Iterator[ImageRef]:
    """Every image of ``split`` under ``root`` (sorted by city and stem)."""
    base = storage.join(root, "leftImg8bit", split)
    if not storage.is_dir(base):
        raise DataError(f"{base}: not a directory (expected the Cityscapes layout leftImg8bit/{split}/<city>/)")
    for path in storage.walk(base, "_leftImg8bit.png"):
        rel = storage.relpath(path, base).replace("\\", "/")
        parts = rel.split("/")
        if len(parts) != 2:
            continue
        city, fname = parts
        stem = fname[: -len("_leftImg8bit.png")]
        p = gt_paths(split, city, stem)
        yield ImageRef(stem, split, city, p["image"], p["instance_ids"])


IMAGE_WITHOUT_MAP = "image without its gtFine instance map"
MAP_WITHOUT_IMAGE = "instance map without its image"


def regions_from_ids(ids: np.ndarray, space=None) -> Labels:
    """An instanceIds map as an index map: one region per distinct non-zero value, in value order."""
    space = space or _SPACE
    counts = np.bincount(ids.ravel(), minlength=1)
    vals = np.flatnonzero(counts)
    vals = vals[vals > 0]
    lut = np.zeros(len(counts), np.uint16)
    regions = []
    for k, v in enumerate(vals.tolist(), 1):
        lut[v] = k
        cid = v // 1000 if v >= 1000 else v
        info = space.by_id.get(cid)
        regions.append(region(k, v, info, cid, crowd=bool(info and info.thing and v < 1000)))
    return Labels(lut[ids], regions)


def instance_ids(labels: Labels) -> np.ndarray:
    """The instanceIds map (int32) an index map of Cityscapes regions came from (exact inverse)."""
    lut = np.zeros(max(len(labels.regions), int(labels.index.max(initial=0))) + 1, np.int32)
    for r in labels.regions:
        lut[r["index"]] = r["source_id"]
    return lut[labels.index]


def instance_number(value: int) -> tuple[int, bool]:
    """(label id, is an instance) of an instanceIds value."""
    return (value // 1000, True) if value >= 1000 else (value, False)


def instance_value(label_id: int, k: int) -> int:
    """The instanceIds value of instance ``k`` of class ``label_id``."""
    return label_id * 1000 + k


def read_image(path: str) -> np.ndarray:
    """An image file as RGB (DataError naming it when unreadable)."""
    try:
        return decode_image(storage.read_bytes(path), path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None


def label_ids_from_instance_ids(ids: np.ndarray) -> np.ndarray:
    """labelIds map (uint8) from an instanceIds map: instance ids carry their class in the thousands."""
    out = np.where(ids >= 1000, ids // 1000, ids)
    return out.astype(np.uint8)


def label_name(label_id: int) -> str | None:
    lb = id2label.get(label_id)
    return lb.name if lb else None


def read_ids(path: str) -> np.ndarray:
    try:
        return decode_index(storage.read_bytes(path), path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    except DataError as e:  # name the encoding: 8 bits cannot hold classId*1000+k
        raise DataError(str(e).replace("expected 16-bit", "Cityscapes instanceIds are 16-bit (classId*1000+k)")) \
            from None


def read_label_ids(path: str) -> np.ndarray:
    """A gtFine labelIds map (8-bit, label ids 0-33) as HxW uint8."""
    import cv2

    try:
        data = storage.read_bytes(path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None or arr.ndim != 2:
        raise DataError(f"{path}: cannot decode label map (truncated, not a PNG or not single-channel)")
    return arr


def write_image(out: str, split: str, city: str, stem: str, image_bytes: bytes, ids: np.ndarray,
                polygons: dict | None = None, color: np.ndarray | None = None,
                label_ids: np.ndarray | None = None, compact_json: bool = False) -> dict[str, str]:
    """One image in the Cityscapes layout under ``out``: leftImg8bit, instanceIds, labelIds (made from the
    instanceIds unless given), + polygon JSON and colour map when given; returns its paths."""
    import json

    p = gt_paths(split, city, stem)
    if polygons is not None:
        storage.write_bytes(storage.join(out, p["polygons"]),
                            json.dumps(polygons, indent=None if compact_json else 1).encode())
    storage.write_bytes(storage.join(out, p["instance_ids"]), encode_index(ids))
    storage.write_bytes(storage.join(out, p["label_ids"]),
                        encode_png(label_ids if label_ids is not None else label_ids_from_instance_ids(ids)))
    if color is not None:
        storage.write_bytes(storage.join(out, p["color"]), encode_png(color))
    storage.write_bytes(storage.join(out, p["image"]), image_bytes)
    return p


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


class CityscapesDataset(Dataset):
    format = "cityscapes"

    def __init__(self, spec: DatasetSpec):
        if not is_root(spec.source):
            raise DataError(f"{spec.source}: not a Cityscapes root (no leftImg8bit/)")
        self.spec, self.root, self.label_space = spec, spec.source, _SPACE

    def discover(self, split: str) -> Iterator[ImageRef]:
        return discover(self.root, split)

    def failures(self, split: str) -> Iterator[dict]:
        """Every gtFine instance map whose leftImg8bit image is missing."""
        base = storage.join(self.root, "gtFine", split)
        if not storage.is_dir(base):
            return
        images = {r.image_id for r in discover(self.root, split)}
        for path in storage.walk(base, INSTANCE_IDS_SUFFIX):
            rel = storage.relpath(path, base).replace("\\", "/")
            parts = rel.split("/")
            if len(parts) != 2:
                continue
            stem = parts[1][: -len(INSTANCE_IDS_SUFFIX)]
            if stem not in images:
                f = f"gtFine/{split}/{rel}"
                yield {"image_id": stem, "file": f, "reason": f"{MAP_WITHOUT_IMAGE}: no leftImg8bit image for {f}"}

    def load_labels(self, ref: ImageRef) -> Labels:
        try:
            ids = read_map(self.root, ref.labels, IMAGE_WITHOUT_MAP)
        except DataError as e:  # name the encoding: 8 bits cannot hold classId*1000+k
            raise DataError(str(e).replace("expected 16-bit", "Cityscapes instanceIds are 16-bit (classId*1000+k)")) \
                from None
        return regions_from_ids(ids, self.label_space)

    def image_path(self, rel: str) -> str:
        return storage.join(self.root, rel)


_SPACE = label_space()
