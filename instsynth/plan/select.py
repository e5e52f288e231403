"""Phase 1 - instance preparation (paper section III.B.1, Eq. 1).

Per image: the top-K selectable instances by pixel count (ties by the dataset's instance id), each
with a 1:1 square crop around its bounding box and a binary mask holding that instance alone, so the
generator focuses on exactly one object.  Instances are regions of a dataset's index map (see
``instsynth.datasets``): things that are not crowd regions, of a class in ``classes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the selector works on any dataset's Labels; it needs no dataset code to run
    from instsynth.datasets.base import Labels

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)


@dataclass(frozen=True)
class Instance:
    instance_id: int   # the dataset's own id (Cityscapes: the instanceIds value; COCO: the annotation id)
    index: int         # its value in the index map
    class_id: int
    class_name: str
    pixels: int
    bbox: Box


def bbox_of(mask: np.ndarray) -> Box:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        raise ValueError("mask is empty")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def select_instances(labels: Labels, top_k: int = 3, min_pixels: int = 1024,
                     classes: list[str] | None = None) -> list[Instance]:
    """Eq. 1: the ``top_k`` largest eligible instances, largest first, ties broken by lower instance id.

    Eligible: a thing region that is not a crowd region, of one of ``classes`` (None: every thing
    class), with >= ``min_pixels`` pixels in the index map.
    """
    allowed = None if classes is None else set(classes)
    counts = labels.counts()
    eligible = [r for r in labels.regions
                if r["thing"] and not r["crowd"] and (allowed is None or r["class_name"] in allowed)
                and counts[r["index"]] >= min_pixels]
    eligible.sort(key=lambda r: (-int(counts[r["index"]]), r["source_id"]))
    return [Instance(r["source_id"], r["index"], r["class_id"], r["class_name"], int(counts[r["index"]]),
                     bbox_of(labels.index == r["index"])) for r in eligible[:top_k]]


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


def prepare_instance(image: np.ndarray, index: np.ndarray, k: int, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """(square image crop, bool mask of region ``k`` alone) for the given square ``box``."""
    return crop(image, box), crop(index, box) == k
