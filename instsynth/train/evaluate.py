"""Evaluation: a model (or checkpoint) on a Cityscapes split or a COCO instances JSON -> AP/AP50.

Cityscapes: the official numbers from cityscapesscripts' ``evaluateImgLists`` (through ``cs_eval``'s
compatibility layer), COCO-style segm AP from pycocotools as a second opinion.  COCO-format data: mask
AP/AP50 by pycocotools' ``COCOeval`` against that JSON itself (crowd regions ignored as pycocotools does).
Every result carries ``scores`` - the data's own metric (``metric``: cityscapes or coco), AP, AP50 and
per-class AP - which training, experiments and the table read.  Output: a table shaped like the
paper's Table II and per-class AP as JSON.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from instsynth.datasets import DataError, open_dataset, resolve
from instsynth.datasets.cityscapes import (
    INSTANCE_IDS_SUFFIX,
    THING_CLASSES,
    discover,
    read_ids,
    read_image,
)
from instsynth.io import storage
from instsynth.train.cs_eval import (
    CityscapesScorer,
    CocoScorer,
    coco_summary,
    compact,
    empty_summary,
    encode_mask,
    quiet,
)
from instsynth.train.data import resize_scale
from instsynth.train.models import build_model


def at_test_scale(image: np.ndarray, short_edge: int | None, max_size: int | None = None) -> np.ndarray:
    """``image`` rescaled so its short side is ``short_edge`` (None: native), its long side capped at
    ``max_size`` (the authors' ``MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); unchanged when already so."""
    import cv2

    h, w = image.shape[:2]
    s = resize_scale(h, w, short_edge, max_size)
    if (round(h * s), round(w * s)) == (h, w):
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def scale_label(short_edge: int | None, max_size: int | None = None) -> str:
    """The test scale in words, as results and summaries name it."""
    base = f"short edge {short_edge} px" if short_edge else "native resolution"
    return base + (f", long side <= {max_size} px" if max_size else "")


def predict_image(model, image: np.ndarray, score_threshold: float = 0.0, short_edge: int | None = None,
                  max_size: int | None = None) -> list[dict]:
    """Predictions for one image; with ``short_edge`` (and ``max_size``) the model sees the image at the
    test scale (``at_test_scale``), and masks come back at the native size for scoring."""
    import cv2
    import torch

    h, w = image.shape[:2]
    x = at_test_scale(image, short_edge, max_size)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    dev = next(model.parameters()).device
    out = model(t.to(dev))[0]
    preds = []
    for m, lab, s in zip(out["masks"], out["labels"], out["scores"]):
        m = m.numpy()
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        if float(s) > score_threshold and bool(m.any()):
            preds.append({"mask": m, "label": int(lab), "score": float(s)})
    return preds


#: predictions kept per image from all its windows (the highest scores): the budget a model has on the whole
#: image (its top 100 queries), so neither scoring gets more guesses
WINDOW_KEEP = 100


def window_boxes(h: int, w: int, wh: int, ww: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of the windows of ``ww`` x ``wh`` that tile an ``h`` x ``w`` frame: a grid of
    ``ceil`` steps whose last row and column sit on the frame's edge (they overlap where it is not a multiple)."""
    def starts(n, k):
        if n <= k:
            return [0]
        steps = -(-n // k)
        return [round(i * (n - k) / (steps - 1)) for i in range(steps)]
    return [(y, x, min(h, y + wh), min(w, x + ww)) for y in starts(h, wh) for x in starts(w, ww)]


def predict_windows(model, image: np.ndarray, window: tuple[int, int], short_edge: int | None = None,
                    max_size: int | None = None) -> list[dict]:
    """Predictions made on training-sized windows (``window``: width, height at the test scale) and pasted
    back into the frame: the model sees inputs of the extent it was trained on (issue 30's train/test extent
    check against whole-image scoring, ``predict_image``).  Every window's instances are kept with their
    scores; an object cut by a window border is scored as the pieces it was predicted as."""
    import cv2

    h, w = image.shape[:2]
    x = at_test_scale(image, short_edge, max_size)
    preds = []
    for y0, x0, y1, x1 in window_boxes(x.shape[0], x.shape[1], window[1], window[0]):
        for p in predict_image(model, x[y0:y1, x0:x1]):
            full = np.zeros(x.shape[:2], bool)
            full[y0:y1, x0:x1] = p["mask"]
            if full.shape != (h, w):
                full = cv2.resize(full.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            if full.any():
                preds.append({**p, "mask": full})
    return sorted(preds, key=lambda p: -p["score"])[:WINDOW_KEEP]


def is_coco(data_root: str) -> bool:
    return str(data_root).lower().endswith(".json")


def evaluate_model(model, data_root: str, split: str = "val", max_images: int | None = None,
                   predictor=None, short_edge: int | None = None, image_root: str | None = None,
                   classes: list[str] | None = None, verbose: bool = False,
                   windows: tuple[int, int] | None = None, max_size: int | None = None) -> dict:
    """AP/AP50 of ``model`` (or of ``predictor(image, labels) -> preds``, e.g. an oracle) on a split of a
    Cityscapes root, or on a COCO instances JSON (``image_root``: its images; ``classes``: the model's
    classes by index, default Cityscapes' eight).

    ``short_edge``: the test scale (short side in pixels; None = native), ``max_size`` its long-side cap
    (None: none).  ``windows`` (width, height):
    predict on windows of that size at the test scale, pasted back (``predict_windows``).  The result names
    both.
    """
    data_root = storage.absolute(data_root)
    if windows and predictor is None:
        def predictor(img, _labels):
            return predict_windows(model, img, windows, short_edge, max_size)
    if predictor is None:
        def predictor(img, _labels):
            return predict_image(model, img, short_edge=short_edge, max_size=max_size)
    scale = scale_label(short_edge, max_size)
    if is_coco(data_root):
        return evaluate_coco_json(model, data_root, image_root, max_images, predictor, scale, classes, verbose)
    recs = list(discover(data_root, split))[: max_images or None]
    if not recs:
        raise DataError(f"{data_root}: no images in split {split!r}")
    if model is not None:
        model.eval()
    coco, agnostic = CocoScorer(), CocoScorer(agnostic=True)
    with tempfile.TemporaryDirectory(prefix="instsynth-gt-") as tmp, CityscapesScorer(verbose) as cs:
        for k, rec in enumerate(recs):  # one image at a time: what is kept of it is RLEs
            img = read_image(storage.join(data_root, rec.image))
            ids = read_ids(storage.join(data_root, rec.labels))
            path = storage.join(data_root, rec.labels)
            if storage.is_uri(path):  # the official evaluator reads local files
                local = os.path.join(tmp, f"{k:06d}{INSTANCE_IDS_SUFFIX}")
                storage.write_bytes(local, storage.read_bytes(path))
                path = local
            preds = compact(predictor(img, ids))
            cs.add(path, preds)
            coco.add(ids, preds)
            agnostic.add(ids, preds)
        cs = cs.score()
    coco, agnostic = coco.score(verbose), agnostic.score(verbose)
    if windows:
        scale += f", {windows[0]}x{windows[1]} windows pasted back"
    scores = {"metric": "cityscapes", "AP": cs["AP"], "AP50": cs["AP50"], "per_class": cs["per_class"]}
    return {"images": len(recs), "test_scale": scale, "cityscapes": cs, "coco": coco, "agnostic": agnostic,
            "scores": scores}


def evaluate_coco_json(model, source: str, image_root: str | None, max_images: int | None, predictor,
                       scale: str, classes: list[str] | None, verbose: bool = False) -> dict:
    """Mask AP/AP50 of ``predictor(image, labels)`` on a COCO-format dataset, scored by pycocotools against
    that JSON (its crowd regions ignored, its category ids): the images are read through the dataset seam.
    ``scale``: the test scale in words, for the result."""
    import pycocotools.coco
    import pycocotools.cocoeval
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = open_dataset(resolve(source, "coco", image_root))
    refs = list(ds.discover("val"))[: max_images or None]
    if not refs:
        raise DataError(f"{source}: no images with their files under {ds.spec.image_root}")
    classes = list(classes or THING_CLASSES)
    cat_of = {i: ds.label_space.by_name[c].id for i, c in enumerate(classes) if c in ds.label_space.by_name}
    if not cat_of:
        raise DataError(f"{source}: none of the model's classes {classes[:8]} is a category of this file")
    if model is not None:
        model.eval()
    dets = []
    for ref in refs:
        img, labels = ds.load(ref)
        for p in predictor(img, labels):
            if int(p["label"]) not in cat_of:
                continue
            dets.append({"image_id": int(ref.image_id), "category_id": cat_of[int(p["label"])],
                         "segmentation": encode_mask(p["mask"]), "score": float(p["score"])})
    with quiet(verbose, pycocotools.coco, pycocotools.cocoeval):
        gt = COCO(source)
        img_ids = [int(r.image_id) for r in refs]
        ap = {**empty_summary(gt.loadAnns(gt.getAnnIds(imgIds=img_ids))),
              "per_class": {c: {"ap": None, "ap50": None} for c in classes}}
        if dets:
            e = COCOeval(gt, gt.loadRes(dets), "segm")
            e.params.imgIds = img_ids
            e.evaluate()
            e.accumulate()
            e.summarize()
            prec = e.eval["precision"]  # (IoU thresholds, recall, category, area, max dets)
            for c, cid in ((classes[i], cid) for i, cid in cat_of.items()):
                k = e.params.catIds.index(cid)
                p, p50 = prec[:, :, k, 0, -1], prec[0, :, k, 0, -1]
                ap["per_class"][c] = {"ap": float(p[p > -1].mean()) if (p > -1).any() else None,
                                      "ap50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else None}
            ap.update(coco_summary(e))
    return {"images": len(refs), "test_scale": scale, "coco": ap, "dataset": source,
            "scores": {"metric": "coco", **ap}}


def scores(result: dict) -> dict:
    """The data's own metric of an evaluation result (results written before ``scores``: Cityscapes)."""
    if "scores" in result:
        return result["scores"]
    cs = result["cityscapes"]
    return {"metric": "cityscapes", "AP": cs["AP"], "AP50": cs["AP50"], "per_class": cs["per_class"]}


def format_table(results: dict[str, dict]) -> str:
    """Rows = models/runs, columns like the paper's Table II: AP, AP50 and per-class AP (Cityscapes AP with
    COCO AP beside it, or COCO mask AP for COCO-format data; at most 12 classes shown)."""
    first = scores(next(iter(results.values())))
    classes = list(first["per_class"])[:12]
    metric = first["metric"]
    extra = f"{'cocoAP':>8}" if metric == "cityscapes" else ""
    head = f"{'model':<28}{'AP':>7}{'AP50':>7}{extra}" + "".join(f"{c[:6]:>8}" for c in classes)
    lines = [head]
    for name, r in results.items():
        sc = scores(r)

        def pct(v):
            return f"{100 * v:.1f}" if v is not None else "-"
        per = "".join(f"{pct(sc['per_class'].get(c, {}).get('ap')):>8}" for c in classes)
        coco = f"{pct(r['coco']['AP']):>8}" if metric == "cityscapes" else ""
        lines.append(f"{name:<28}{pct(sc['AP']):>7}{pct(sc['AP50']):>7}{coco}{per}")
    scales = sorted({r.get("test_scale", "native resolution") for r in results.values()})
    counts = sorted({r["images"] for r in results.values()})
    def n(k):
        return f"{k} image{'' if k == 1 else 's'}"
    images = (n(counts[0]) + (" each" if len(results) > 1 else "")) if len(counts) == 1 else \
        ", ".join(f"{name}: {n(r['images'])}" for name, r in results.items())
    what = "Cityscapes AP" if metric == "cityscapes" else "COCO mask AP by pycocotools"
    lines.append(f"evaluated at test scale {' and '.join(scales)} on {images} ({what})")
    return "\n".join(lines)


def load_checkpoint(path: str):
    """Rebuild a model from a checkpoint dir written by the trainer (model.pt + model.json), local or on
    object storage (``s3://``): both files are read through ``storage``."""
    import io

    import torch

    spec = json.loads(storage.read_bytes(storage.join(path, "model.json")))
    model = build_model(spec["name"], **spec["kwargs"])
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(path, "model.pt"))), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state["model"])
    return model, state.get("step", 0)


def evaluate_checkpoint(ckpt: str, data_root: str, split: str = "val", max_images: int | None = None,
                        out_json: str | None = None, short_edge: int | None = -1,
                        image_root: str | None = None, verbose: bool = False,
                        windows: tuple[int, int] | None = None, max_size: int | None = -1) -> dict:
    """``short_edge=-1`` / ``max_size=-1``: the test scale the checkpoint was trained for (its recipe's
    ``eval_short_edge`` / ``eval_max_size``), else as given (0: native / no cap).
    ``data_root``: a Cityscapes root or a COCO JSON (``image_root``: its images); the model's classes
    come from its checkpoint (the label space it was trained on)."""
    model, step = load_checkpoint(ckpt)
    spec = json.loads(storage.read_bytes(storage.join(ckpt, "model.json")))
    if short_edge == -1:
        short_edge = spec.get("recipe", {}).get("eval_short_edge")
    if max_size == -1:
        max_size = spec.get("recipe", {}).get("eval_max_size")
    res = evaluate_model(model, data_root, split, max_images, short_edge=short_edge, image_root=image_root,
                         classes=spec["kwargs"].get("classes"), verbose=verbose, windows=windows,
                         max_size=max_size)
    res["checkpoint"], res["step"] = ckpt, step
    if out_json:
        storage.write_bytes(out_json, json.dumps(res, indent=1).encode())
    return res
