"""Mapillary Vistas v2.0: its folder layout, its 16-bit instance PNGs and ``config_v2.0.json``.

    <root>/config_v2.0.json                         labels: [{"name", "readable", "instances", ...}]
    <root>/{training,validation}/images/<key>.jpg
    <root>/{training,validation}/v2.0/instances/<key>.png   pixel // 256: label index, pixel % 256: instance

``plan.split: train`` / ``val`` read ``training`` / ``validation``.  Labels with ``"instances": true`` are
things (selectable, evaluated); the label named ``unlabeled`` is no region.  Every distinct value of a map
is one region whose ``source_id`` is that value (Vistas has no crowd regions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from instsynth.datasets.base import (
    ClassInfo,
    DataError,
    Dataset,
    DatasetSpec,
    ImageRef,
    Labels,
    LabelSpace,
    read_map,
    region,
)
from instsynth.io import storage

CONFIG = "config_v2.0.json"
SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
UNLABELED = "unlabeled"


def is_root(path: str) -> bool:
    return storage.exists(storage.join(path, CONFIG))


def label_space_of(config: dict, source: str) -> LabelSpace:
    if not isinstance(config.get("labels"), list):
        raise DataError(f"{source}: not a Mapillary Vistas config (no 'labels' list)")
    classes = []
    for i, lb in enumerate(config["labels"]):
        thing = bool(lb.get("instances"))
        name = str(lb.get("name", f"label-{i}"))
        classes.append(ClassInfo(i, name, thing=thing, selectable=thing, evaluated=thing,
                                 noun=str(lb.get("readable") or name.rsplit("--", 1)[-1]).lower()))
    return LabelSpace("mapillary-vistas-v2.0", classes)


class MapillaryDataset(Dataset):
    format = "mapillary"

    def __init__(self, spec: DatasetSpec):
        self.spec, self.root = spec, spec.source
        path = storage.join(self.root, CONFIG)
        try:
            config = json.loads(storage.read_bytes(path))
        except storage.StorageError as e:
            raise DataError(str(e)) from None
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
        self.label_space = label_space_of(config, path)
        self._unlabeled = {c.id for c in self.label_space.classes if c.name == UNLABELED}

    def folder(self, split: str) -> str:
        if split not in SPLITS:
            raise DataError(f"plan.split: {split!r} is not a Mapillary split; valid: train, val")
        return SPLITS[split]

    def discover(self, split: str) -> Iterator[ImageRef]:
        folder = self.folder(split)
        base = storage.join(self.root, folder, "images")
        if not storage.is_dir(base):
            raise DataError(f"{base}: not a directory (expected the Mapillary layout {folder}/images/)")
        for path in storage.walk(base, ".jpg"):
            key = storage.relpath(path, base).replace("\\", "/")[: -len(".jpg")]
            if "/" in key:
                continue
            yield ImageRef(key, split, "", f"{folder}/images/{key}.jpg", f"{folder}/v2.0/instances/{key}.png")

    def failures(self, split: str) -> Iterator[dict]:
        """Instance maps whose image is missing."""
        folder = self.folder(split)
        base = storage.join(self.root, folder, "v2.0", "instances")
        if not storage.is_dir(base):
            return
        images = {r.image_id for r in self.discover(split)}
        for path in storage.walk(base, ".png"):
            key = storage.relpath(path, base).replace("\\", "/")[: -len(".png")]
            if key not in images:
                f = f"{folder}/v2.0/instances/{key}.png"
                yield {"image_id": key, "file": f, "reason": f"instance map without its image: no image for {f}"}

    def load_labels(self, ref: ImageRef) -> Labels:
        values = read_map(self.root, ref.labels, "image without its instance map")
        counts = np.bincount(values.ravel(), minlength=1)
        lut = np.zeros(len(counts), np.uint16)
        regions = []
        for v in np.flatnonzero(counts).tolist():
            label = v // 256
            if label in self._unlabeled:
                continue
            info = self.label_space.by_id.get(label)
            lut[v] = len(regions) + 1
            regions.append(region(len(regions) + 1, v, info, label, crowd=False))
        return Labels(lut[values], regions)

    def image_path(self, rel: str) -> str:
        return storage.join(self.root, rel)
