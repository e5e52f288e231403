"""Phase 1 - instance preparation (paper section III.B.1, Eq. 1).

Per image: the top-K eligible instances by pixel count (ties by instance id), each with a 1:1
square crop around its bounding box and a binary mask holding that instance alone, so the
generator focuses on exactly one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instsynth.cityscapes import THING_CLASSES, THING_IDS

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)


@dataclass(frozen=True)
class Instance:
    instance_id: int
    class_name: str
    pixels: int
    bbox: Box


def instance_pixel_counts(ids: np.ndarray) -> np.ndarray:
    """Pixel count of every id value (index = id), one O(H*W) pass."""
    return np.bincount(ids.ravel(), minlength=1)


def bbox_of(mask: np.ndarray) -> Box:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        raise ValueError("mask is empty")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def select_instances(ids: np.ndarray, top_k: int = 3, min_pixels: int = 1024,
                     classes: list[str] | None = None) -> list[Instance]:
    """Eq. 1: the ``top_k`` largest eligible instances, largest first, ties broken by lower id.

    Eligible: an instance id (>= 1000) of one of ``classes`` (default: the eight evaluated thing
    classes; caravan, trailer and group regions are never eligible) with >= ``min_pixels`` pixels.
    """
    allowed = set(classes or THING_CLASSES)
    counts = instance_pixel_counts(ids)
    cand = np.flatnonzero(counts[1000:]) + 1000 if len(counts) > 1000 else np.array([], dtype=np.int64)
    eligible = [int(i) for i in cand
                if THING_IDS.get(int(i) // 1000) in allowed and counts[i] >= min_pixels]
    eligible.sort(key=lambda i: (-int(counts[i]), i))
    out = []
    for iid in eligible[:top_k]:
        out.append(Instance(iid, THING_IDS[iid // 1000], int(counts[iid]), bbox_of(ids == iid)))
    return out


def square_box(bbox: Box, width: int, height: int, margin: float = 0.1) -> Box:
    """A 1:1 box around ``bbox`` with ``margin`` (fraction of the longer side) of context per side.

    The square is shifted to stay inside the image; it extends outside (and the crop is padded)
    only along a dimension the square is longer than.  It always contains ``bbox``.
    """
    x0, y0, x1, y1 = bbox
    side = int(np.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = max(side, x1 - x0, y1 - y0, 1)
    sx = _place(x0, x1, side, width)
    sy = _place(y0, y1, side, height)
    return sx, sy, sx + side, sy + side


def _place(lo: int, hi: int, side: int, size: int) -> int:
    if side >= size:  # longer than the image: cover it whole, pad evenly
        return -((side - size) // 2)
    start = (lo + hi - side) // 2
    return int(min(max(start, 0), size - side))


def crop(array: np.ndarray, box: Box, fill: int = 0) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` with ``fill`` padding where the box leaves the array."""
    x0, y0, x1, y1 = box
    h, w = array.shape[:2]
    out = np.full((y1 - y0, x1 - x0) + array.shape[2:], fill, dtype=array.dtype)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix0 < ix1 and iy0 < iy1:
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = array[iy0:iy1, ix0:ix1]
    return out


def prepare_instance(image: np.ndarray, ids: np.ndarray, instance_id: int, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """(square image crop, bool mask of ``instance_id`` alone) for the given square ``box``."""
    return crop(image, box), crop(ids, box) == instance_id
