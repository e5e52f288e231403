"""A small, tested compatibility layer around cityscapesscripts' official instance evaluation.

Why: ``evaluateImgLists`` is *the* Cityscapes instance AP, but cityscapesscripts 2.3 breaks on NumPy
2.x (``np.in1d`` is gone; its JSON writer chokes on ``np.int64``), caches ground truth in a JSON next
to its own source file, and writes ``matches.json`` into the working directory.  We run it with a
NumPy shim, a numpy-aware JSON writer, every file in a temporary directory, and the working
directory restored afterwards - without touching the library or global NumPy.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
import types

import numpy as np

from instsynth.datasets import encode_png
from instsynth.datasets.cityscapes import THING_CLASSES, THING_IDS, instance_number

#: Cityscapes label ids of the eight evaluated thing classes, in THING_CLASSES order
from instsynth.io import storage

LABEL_IDS = {name: cid for cid, name in THING_IDS.items()}
_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet(verbose: bool, *modules):
    """Silence the evaluators' prints unless ``verbose`` (``--verbose``; ``train.verbose`` in workers).  ``redirect_stdout`` alone is not enough: in a
    Ray Train worker ``print`` itself is patched to write to a logger, so ``print`` is also shadowed in
    the modules that print (pycocotools, cityscapesscripts) for the duration."""
    if verbose:
        yield
        return
    missing = object()
    saved = [(m, m.__dict__.get("print", missing)) for m in modules]
    for m in modules:
        m.print = lambda *a, **k: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for m, old in saved:
            if old is missing:
                del m.print
            else:
                m.print = old


class _NumpyShim(types.ModuleType):
    """numpy with ``in1d`` restored (as ``isin``) for code written against NumPy 1.x."""

    def __init__(self):
        super().__init__("numpy_shim")

    def __getattr__(self, name):
        if name == "in1d":
            return lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert)
        return getattr(np, name)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return o.__dict__


def _write_json(d, path):
    storage.write_bytes(path, json.dumps(d, default=_json_default, sort_keys=True, indent=1).encode())


@contextlib.contextmanager
def _in_dir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def class_name(label) -> str:
    """A prediction's class as a name; ``label`` may be a name, a class index (0-7) or a label id (24-33)."""
    if isinstance(label, str):
        return label
    return THING_IDS[label] if label > 20 else THING_CLASSES[label]


def write_predictions(pred_dir: str, stem: str, preds: list[dict]) -> str:
    """Write one image's predictions in the official format: ``<stem>.txt`` listing mask PNGs."""
    lines = []
    for k, p in enumerate(preds):
        name = f"{stem}_{k:04d}.png"
        storage.write_bytes(os.path.join(pred_dir, name), encode_png(np.asarray(p["mask"], bool).astype(np.uint8) * 255))
        lines.append(f"{name} {LABEL_IDS[class_name(p['label'])]} {float(p['score']):.6f}")
    txt = os.path.join(pred_dir, f"{stem}.txt")
    storage.write_bytes(txt, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return txt


def evaluate_cityscapes(gt_files: list[str], predictions: list[list[dict]], verbose: bool = False) -> dict:
    """Official Cityscapes instance AP / AP50 (overall and per class) for predictions on ``gt_files``.

    ``predictions[i]`` lists dicts ``{"mask": HxW bool, "label": class name or index or label id,
    "score": float}`` for the image whose instanceIds PNG is ``gt_files[i]``.
    """
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ev

    with _LOCK, tempfile.TemporaryDirectory(prefix="cs-eval-") as tmp:
        pred_dir = os.path.join(tmp, "pred")
        os.makedirs(pred_dir)
        pred_files = [write_predictions(pred_dir, f"img{i:06d}", p) for i, p in enumerate(predictions)]
        gt_files = [os.path.abspath(g) for g in gt_files]  # before changing into the temporary directory
        args = types.SimpleNamespace(**vars(ev.args))
        args.gtInstancesFile = os.path.join(tmp, "gtInstances.json")
        args.exportFile = os.path.join(tmp, "result.json")
        args.predictionPath = os.path.abspath(pred_dir)
        args.quiet = True
        args.JSONOutput = False
        saved = (ev.np, ev.writeDict2JSON)
        ev.np, ev.writeDict2JSON = _NumpyShim(), _write_json
        try:
            with _in_dir(tmp), quiet(verbose, ev):
                res = ev.evaluateImgLists(pred_files, gt_files, args)
        finally:
            ev.np, ev.writeDict2JSON = saved
    avg = res["averages"]
    per = {c: {"ap": _nan0(v["ap"]), "ap50": _nan0(v["ap50%"])} for c, v in avg["classes"].items()}
    return {"AP": _nan0(avg["allAp"]), "AP50": _nan0(avg["allAp50%"]), "per_class": per}


def _nan0(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


def evaluate_coco(gt_maps: list[np.ndarray], predictions: list[list[dict]], verbose: bool = False) -> dict:
    """COCO-style segm AP / AP50 with pycocotools, as a second opinion (group regions are crowd)."""
    import pycocotools.coco
    import pycocotools.cocoeval
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = [{"id": i + 1, "name": c} for i, c in enumerate(THING_CLASSES)]
    cat_of_label = {LABEL_IDS[c]: i + 1 for i, c in enumerate(THING_CLASSES)}
    images, anns, dets = [], [], []
    for i, (ids, preds) in enumerate(zip(gt_maps, predictions)):
        h, w = ids.shape
        images.append({"id": i + 1, "width": w, "height": h})
        for v in np.unique(ids).tolist():
            lab, is_instance = instance_number(v)
            if lab not in cat_of_label:
                continue
            rle = mask_utils.encode(np.asfortranarray((ids == v).astype(np.uint8)))
            area = float(mask_utils.area(rle))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_of_label[lab],
                         "segmentation": rle, "area": area, "bbox": list(mask_utils.toBbox(rle)),
                         "iscrowd": int(not is_instance)})
        for p in preds:
            name = class_name(p["label"])
            rle = mask_utils.encode(np.asfortranarray(np.asarray(p["mask"], np.uint8)))
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": i + 1, "category_id": THING_CLASSES.index(name) + 1, "segmentation": rle,
                         "score": float(p["score"])})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    with quiet(verbose, pycocotools.coco, pycocotools.cocoeval):
        gt.createIndex()
        if not dets:
            return {"AP": 0.0, "AP50": 0.0}
        dt = gt.loadRes(dets)
        e = COCOeval(gt, dt, "segm")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return {"AP": float(max(e.stats[0], 0.0)), "AP50": float(max(e.stats[1], 0.0))}
