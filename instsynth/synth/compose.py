"""Phase 3 - integration and focused cropping (paper section III.B.3, Eq. 2-3).

Paste the generated square back through the instance mask (so the original masks stay valid
labels), then cut a 2:1 window around the instance whose area is lambda times the instance's
2:1 box area, lambda ~ N(3, 1) clipped below at 1.

Definitions fixed here so everyone builds the same thing:

* ``A_ins`` is the area of the smallest 2:1 box containing the instance's bounding box (the
  authors' code uses this box; with the pixel count, lambda would barely matter for upright
  instances such as persons).
* ``S_N = lambda * A_ins``; ``h = sqrt(S_N / 2)``, ``w = 2h``.  Eq. 3 as printed (``h = S_N/4``)
  is dimensionally wrong - an area divided by 4 is not a length.
* A window larger than the image is clamped to the largest 2:1 window the image holds; its
  top-left is uniform over the integer positions that keep the instance box inside it.
* Another instance left with 1..63 visible pixels in the window (and more outside) is a sliver;
  the position is redrawn up to 10 times and the draw with fewest sliver pixels is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from instsynth.plan.select import Box, crop


def paste(target: np.ndarray, origin: tuple[int, int], generated: np.ndarray, mask: np.ndarray,
          square: Box, feather: int = 0) -> np.ndarray:
    """Copy of ``target`` with ``generated`` pasted through ``mask``.

    ``target`` covers image coordinates starting at ``origin`` (x, y) - the full image
    (origin 0, 0) or a window of it; ``generated``/``mask`` cover the ``square`` box.  With
    ``feather`` > 0 the blend weight ramps up over that many pixels *inside* the mask, so pixels
    outside the mask are never touched.
    """
    if generated.shape[:2] != mask.shape[:2]:
        raise ValueError(f"generated: shape {generated.shape[:2]} does not match mask {mask.shape[:2]}")
    out = target.copy()
    ox, oy = origin
    th, tw = target.shape[:2]
    sx0, sy0, sx1, sy1 = square
    x0, y0 = max(sx0, ox), max(sy0, oy)
    x1, y1 = min(sx1, ox + tw), min(sy1, oy + th)
    if x0 >= x1 or y0 >= y1:
        return out
    m = mask[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0]
    g = generated[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0]
    t = out[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    if feather > 0:
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
        alpha = np.clip(dist / float(feather), 0.0, 1.0)[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0]
        alpha = alpha[..., None] if t.ndim == 3 else alpha
        blended = t.astype(np.float32) * (1 - alpha) + g.astype(np.float32) * alpha
        t[...] = np.where(m[..., None] if t.ndim == 3 else m, np.rint(blended).astype(t.dtype), t)
    else:
        t[m] = g[m]
    return out


def box_2to1(bbox: Box) -> tuple[int, int]:
    """(width, height) of the smallest 2:1 box containing ``bbox``."""
    bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
    h = max(bh, (bw + 1) // 2, 1)
    return 2 * h, h


def window_size(bbox: Box, lam: float, width: int, height: int) -> tuple[int, int]:
    """(w, h) of the 2:1 window with area ``lam * A_ins`` (at least), clamped to the image."""
    bw2, bh2 = box_2to1(bbox)
    area = lam * bw2 * bh2
    h = max(math.ceil(math.sqrt(area / 2.0) - 1e-9), bh2)
    hmax = min(height, width // 2)
    h = min(h, hmax)
    return 2 * h, h


def _range(lo_box: int, hi_box: int, win: int, size: int) -> tuple[int, int]:
    lo, hi = max(0, hi_box - win), min(lo_box, size - win)
    if lo > hi:  # the window cannot hold the box: centre on it, inside the image
        c = min(max((lo_box + hi_box - win) // 2, 0), size - win)
        return c, c
    return lo, hi


@dataclass(frozen=True)
class Window:
    box: Box
    lam: float
    sliver_pixels: int
    draws: int


def focused_window(ids: np.ndarray, instance_id: int, bbox: Box, rng: np.random.Generator,
                   lam_mean: float = 3.0, lam_sd: float = 1.0, lam_min: float = 1.0,
                   sliver_pixels: int = 64, sliver_redraws: int = 10,
                   counts: np.ndarray | None = None, instances: np.ndarray | None = None) -> Window:
    """Draw the focused 2:1 window for one instance (Eq. 2-3, with the definitions above).

    ``ids``: an index map, ``instance_id`` the instance's value in it; ``instances``: a bool per value,
    True for the values that are instances (things, not crowd regions) - only they can be slivers
    (None: every non-zero value)."""
    height, width = ids.shape
    lam = max(lam_min, float(rng.normal(lam_mean, lam_sd)))
    w, h = window_size(bbox, lam, width, height)
    xr = _range(bbox[0], bbox[2], w, width)
    yr = _range(bbox[1], bbox[3], h, height)
    if counts is None:
        counts = np.bincount(ids.ravel(), minlength=1)
    best = None
    for draw in range(1 + max(0, sliver_redraws)):
        x = int(rng.integers(xr[0], xr[1] + 1))
        y = int(rng.integers(yr[0], yr[1] + 1))
        box = (x, y, x + w, y + h)
        s = sliver_count(ids[y:y + h, x:x + w], counts, instance_id, sliver_pixels, instances)
        if best is None or s < best[1]:
            best = (box, s, draw + 1)
        if s == 0:
            break
    return Window(best[0], lam, best[1], best[2])


def sliver_count(window_ids: np.ndarray, counts: np.ndarray, instance_id: int, threshold: int = 64,
                 instances: np.ndarray | None = None) -> int:
    """Pixels of other instances cut by the window down to 1..threshold-1 visible pixels."""
    vis = np.bincount(window_ids.ravel(), minlength=len(counts))[: len(counts)]
    idx = np.arange(len(vis))
    if instances is None:
        instances = idx > 0
    else:
        instances = np.pad(instances[: len(vis)], (0, max(0, len(vis) - len(instances))))
    cut = instances & (idx != instance_id) & (vis > 0) & (vis < threshold) & (counts > vis)
    return int(vis[cut].sum())


def resize_window(image: np.ndarray, ids: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a window to ``size`` (w, h): area (down) / Lanczos (up) for the image, nearest for ids."""
    w, h = size
    if image.shape[1] == w and image.shape[0] == h:
        return image, ids
    interp = cv2.INTER_AREA if w < image.shape[1] else cv2.INTER_LANCZOS4
    img = cv2.resize(image, (w, h), interpolation=interp)
    lab = cv2.resize(ids.astype(np.uint16), (w, h), interpolation=cv2.INTER_NEAREST).astype(ids.dtype)
    return img, lab


def cut_window(image: np.ndarray, ids: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    return crop(image, box), crop(ids, box)
