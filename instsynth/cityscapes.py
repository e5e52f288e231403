"""Cityscapes on-disk layout: discovery, lossless decoding, and the label table.

Why its own module: the readers must work unchanged on the real dataset and on our synthetic
sample, so the layout rules live in one place:

    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_{instanceIds,labelIds,color}.png, _polygons.json

Instance maps are 16-bit PNGs: ``classId*1000+k`` for instances, bare ``classId`` for stuff and for
crowd/group regions.  Names, ids and colours come from ``cityscapesscripts.helpers.labels``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import labels, name2label

from instsynth import storage

cv2.setNumThreads(1)

#: classes evaluated by Cityscapes instance AP (caravan/trailer have instances but are ignored)
THING_CLASSES = [lb.name for lb in labels if lb.hasInstances and not lb.ignoreInEval]
THING_IDS = {name2label[c].id: c for c in THING_CLASSES}
INSTANCE_CLASS_IDS = {lb.id for lb in labels if lb.hasInstances}


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class SampleRecord:
    """One image of the dataset: paths relative to the root."""

    image_id: str
    split: str
    city: str
    image: str
    instance_ids: str
    label_ids: str
    polygons: str


def gt_paths(split: str, city: str, stem: str) -> dict[str, str]:
    base = f"gtFine/{split}/{city}/{stem}_gtFine_"
    return {
        "image": f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
        "instance_ids": base + "instanceIds.png",
        "label_ids": base + "labelIds.png",
        "color": base + "color.png",
        "polygons": base + "polygons.json",
    }


def discover(root: str, split: str = "train") -> Iterator[SampleRecord]:
    """Yield every image of ``split`` under ``root`` (sorted by city and stem)."""
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
        yield SampleRecord(stem, split, city, p["image"], p["instance_ids"], p["label_ids"], p["polygons"])


def decode_image(data: bytes, name: str) -> np.ndarray:
    """PNG/JPEG bytes -> HxWx3 uint8 RGB; DataError naming ``name`` when it cannot be decoded."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if arr is None:
        raise DataError(f"{name}: cannot decode image (truncated or not an image)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_ids(data: bytes, name: str) -> np.ndarray:
    """16-bit PNG bytes -> HxW uint16 id map, lossless (uint16: half the bytes of int32 through every
    stage and the object store).  Any other depth is refused naming the file and its bit depth."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise DataError(f"{name}: cannot decode id map (truncated or not a PNG)")
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a single-channel 16-bit instance map, got shape {arr.shape}")
    if arr.dtype != np.uint16:  # 8 bits cannot hold classId*1000+k: its instances would silently vanish
        bits = arr.dtype.itemsize * 8
        raise DataError(f"{name}: instance map is {bits}-bit ({arr.dtype}); Cityscapes instanceIds are 16-bit "
                        "(classId*1000+k)")
    return arr


def read_label_ids(path: str) -> np.ndarray:
    """A gtFine labelIds map (8-bit, label ids 0-33) as HxW uint8."""
    try:
        data = storage.read_bytes(path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None or arr.ndim != 2:
        raise DataError(f"{path}: cannot decode label map (truncated, not a PNG or not single-channel)")
    return arr


def read_image(path: str) -> np.ndarray:
    try:
        return decode_image(storage.read_bytes(path), path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None


def read_ids(path: str) -> np.ndarray:
    try:
        return decode_ids(storage.read_bytes(path), path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None


def check_same_size(image: np.ndarray, ids: np.ndarray, image_name: str, ids_name: str) -> None:
    if image.shape[:2] != ids.shape[:2]:
        raise DataError(
            f"{image_name}: size {image.shape[1]}x{image.shape[0]} does not match "
            f"{ids_name} {ids.shape[1]}x{ids.shape[0]}")


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes, or a 2-D uint16/uint8 id map -> 16/8-bit PNG bytes (lossless)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError("cannot encode PNG")
    return buf.tobytes()


def encode_ids(ids: np.ndarray) -> bytes:
    if ids.min(initial=0) < 0 or ids.max(initial=0) > 65535:
        raise DataError("id map values must lie in 0..65535")
    return encode_png(ids.astype(np.uint16))


def label_ids_from_instance_ids(ids: np.ndarray) -> np.ndarray:
    """labelIds map (uint8) from an instanceIds map: instance ids carry their class in the thousands."""
    out = np.where(ids >= 1000, ids // 1000, ids)
    return out.astype(np.uint8)
