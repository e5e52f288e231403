"""``instsynth preview``: a grid of synthesized crops, and original/synthetic pairs side by side.
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from instsynth.datasets import DataError, decode_image
from instsynth.output.readers import iter_tables
from instsynth.output.schema import instance_mask
from instsynth.output.sources import source_dataset
from instsynth.views.figures import fit, grid_png


def preview(out: str, n: int = 16, tile: tuple[int, int] = (384, 192), cols: int = 4) -> bytes:
    """A grid PNG of the first ``n`` committed rows: crop, instance outline, prompt."""
    tiles = []
    for t in iter_tables(out, ["image", "labels", "regions", "instance_index", "instance_id", "prompt", "work_id",
                                      "generator"]):
        for r in t.to_pylist():
            img = decode_image(r["image"], r["work_id"])
            mask = instance_mask(r)
            sx, sy = tile[0] / img.shape[1], tile[1] / img.shape[0]
            s = min(sx, sy)
            small = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))),
                               interpolation=cv2.INTER_AREA)
            canvas = np.zeros((tile[1] + 22, tile[0], 3), np.uint8)
            canvas[:small.shape[0], :small.shape[1]] = small
            if mask is not None:
                mask = cv2.resize(mask.astype(np.uint8), (small.shape[1], small.shape[0]),
                                  interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(canvas, contours, -1, (255, 255, 0), 2)
            label = r["prompt"] or f"{r['generator']}: {r['work_id']}"
            cv2.putText(canvas, label[:48], (4, tile[1] + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(canvas)
            if len(tiles) >= n:
                break
        if len(tiles) >= n:
            break
    if not tiles:
        raise DataError(f"{out}: no committed rows to preview")
    return grid_png(tiles, cols)


def compare_pairs(out: str, n: int = 8, class_name: str | None = None, generator: str | None = None):
    """(row, before, after) for the first ``n`` committed rows matching the filters: ``before`` is the
    source window (``crop_box`` of ``source_image`` under the recorded root, at the row's size),
    ``after`` the synthesized crop.  Streams unit by unit."""
    ds = source_dataset(out)
    got = 0
    cols = ["work_id", "image", "labels", "regions", "instance_index", "instance_id", "class_name", "generator",
            "prompt", "crop_box", "source_image", "gen_stats", "width", "height"]
    for t in iter_tables(out, cols):
        for r in t.to_pylist():
            if (class_name and r["class_name"] != class_name) or (generator and r["generator"] != generator):
                continue
            after = decode_image(r["image"], r["work_id"])
            x0, y0, x1, y1 = r["crop_box"]
            before = ds.read_image(r["source_image"])[max(0, y0):y1, max(0, x0):x1]
            if before.shape[:2] != after.shape[:2]:  # compose.resize: compare at the row's size
                before = cv2.resize(before, (after.shape[1], after.shape[0]), interpolation=cv2.INTER_AREA)
            yield r, before, after
            got += 1
            if got >= n:
                return


SCORE_KEYS = ("clip", "psnr_in", "changed_inside", "inside_share", "attempts")


def compare_grid(out: str, n: int = 8, class_name: str | None = None, generator: str | None = None,
                 tile: tuple[int, int] = (384, 192), cols: int = 2) -> bytes:
    """PNG grid of before/after pairs: source window | synthesized window, the instance outlined in
    both, the prompt and the per-sample scores under each pair - a generator judged at a glance."""
    text_h = 40
    tiles = []
    for r, before, after in compare_pairs(out, n, class_name, generator):
        inst = instance_mask(r)
        inst = inst if inst is not None else np.zeros(after.shape[:2], bool)
        canvas = np.zeros((tile[1] + text_h, 2 * tile[0] + 6, 3), np.uint8)
        for k, img in enumerate((before, after)):
            small = fit(img, tile)
            mask = cv2.resize(inst.astype(np.uint8), (small.shape[1], small.shape[0]),
                              interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            x = k * (tile[0] + 6)
            canvas[:small.shape[0], x:x + small.shape[1]] = small
            cv2.drawContours(canvas[:, x:x + small.shape[1]], contours, -1, (255, 255, 0), 1)
            cv2.putText(canvas, ("source", "synthesized")[k], (x + 4, 12),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        stats = json.loads(r["gen_stats"] or "{}")
        scores = "  ".join(f"{k}={stats[k]:.3g}" if isinstance(stats[k], float) else f"{k}={stats[k]}"
                           for k in SCORE_KEYS if k in stats)
        cv2.putText(canvas, f"{r['generator']}: {r['prompt']}"[:70], (4, tile[1] + 15), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(canvas, (scores or "no per-sample scores")[:80], (4, tile[1] + 33), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (200, 200, 200), 1, cv2.LINE_AA)
        tiles.append(canvas)
    if not tiles:
        what = ", ".join(f"{k} {v}" for k, v in (("class", class_name), ("generator", generator)) if v)
        raise DataError(f"{out}: no committed rows to compare" + (f" for {what}" if what else ""))
    return grid_png(tiles, cols)
