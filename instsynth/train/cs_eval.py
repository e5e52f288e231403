"""A small, tested compatibility layer around cityscapesscripts' official instance evaluation.

Why: ``evaluateImgLists`` is *the* Cityscapes instance AP, but cityscapesscripts 2.3 breaks on NumPy
2.x (``np.in1d`` is gone; its JSON writer chokes on ``np.int64``), caches ground truth in a JSON next
to its own source file, and writes ``matches.json`` into the working directory.  We run it with a
NumPy shim, a numpy-aware JSON writer, every file in a temporary directory, and the working
directory restored afterwards - without touching the library or global NumPy.  Both scorers are fed
one image at a time and keep predictions as RLEs, so evaluating a split holds no full-size masks.
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

from instsynth.datasets.cityscapes import THING_CLASSES, THING_IDS, instance_number
from instsynth.io import storage

#: Cityscapes label ids of the eight evaluated thing classes, in THING_CLASSES order
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


def encode_mask(mask: np.ndarray) -> dict:
    """A predicted mask as a COCO RLE (``counts`` as bytes): what evaluation keeps per prediction, so its
    memory grows with the masks' outlines, not their pixels (a full-resolution Cityscapes frame with 100
    predictions is 200 MB as boolean arrays and well under 1 MB as RLEs)."""
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))


def decode_mask(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(rle)


def compact(preds: list[dict]) -> list[dict]:
    """One image's predictions (``{"mask": HxW bool, "label": class name/index/label id, "score"}``) as
    ``{"rle", "class", "score"}``: the form every scorer below takes."""
    return [{"rle": encode_mask(p["mask"]), "class": class_name(p["label"]), "score": float(p["score"])}
            for p in preds]


class _MaskImages(types.ModuleType):
    """PIL's ``Image`` for the official evaluator with the predicted masks served from memory: it opens a
    prediction "file" by name and reads it back at once (``Image.open(f).convert("L")`` then ``np.array``),
    so handing it the decoded mask skips a PNG encode and decode per prediction (~60 ms each at 2048x1024)
    and gives the same pixels.  Any other path (the ground truth) opens as a file."""

    def __init__(self, masks: dict[str, dict]):
        from PIL import Image

        super().__init__("pil_image_shim")
        self._pil, self._masks = Image, masks

    def open(self, path, *a, **k):
        rle = self._masks.get(os.path.abspath(str(path)))
        return _Mask(decode_mask(rle)) if rle is not None else self._pil.open(path, *a, **k)

    def __getattr__(self, name):
        return getattr(self._pil, name)


class _Mask:
    def __init__(self, arr: np.ndarray):
        self._arr = arr

    def convert(self, mode):
        return self

    def __array__(self, dtype=None, copy=None):
        return self._arr if dtype is None else self._arr.astype(dtype)


class CityscapesScorer:
    """Official Cityscapes instance AP / AP50 (overall and per class), fed one image at a time.

    ``add(gt_file, preds)`` takes the local instanceIds PNG of an image and its ``compact`` predictions; the
    evaluator gets its prediction lists as the official ``<stem>.txt`` files (``<mask> <labelID> <score>``
    lines) in a temporary directory, and the masks they name from memory (``_MaskImages``).  Use as a
    context manager (the directory goes at exit); ``score()`` runs ``evaluateImgLists``."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._tmp = tempfile.TemporaryDirectory(prefix="cs-eval-")
        self._pred_dir = os.path.join(self._tmp.name, "pred")
        os.makedirs(self._pred_dir)
        self._gt, self._txt, self._masks = [], [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()

    def add(self, gt_file: str, preds: list[dict]) -> None:
        stem = f"img{len(self._txt):06d}"
        lines = []
        for k, p in enumerate(preds):
            name = f"{stem}_{k:04d}.png"
            self._masks[os.path.join(self._pred_dir, name)] = p["rle"]
            lines.append(f"{name} {LABEL_IDS[p['class']]} {p['score']:.6f}")
        txt = os.path.join(self._pred_dir, f"{stem}.txt")
        storage.write_bytes(txt, ("\n".join(lines) + ("\n" if lines else "")).encode())
        self._txt.append(txt)
        self._gt.append(os.path.abspath(gt_file))  # before the evaluator changes into the temporary directory

    def score(self) -> dict:
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ev

        tmp = self._tmp.name
        args = types.SimpleNamespace(**vars(ev.args))
        args.gtInstancesFile = os.path.join(tmp, "gtInstances.json")
        args.exportFile = os.path.join(tmp, "result.json")
        args.predictionPath = os.path.abspath(self._pred_dir)
        args.quiet = True
        args.JSONOutput = False
        with _LOCK:  # the shims are module globals of the evaluator
            saved = (ev.np, ev.writeDict2JSON, ev.Image)
            ev.np, ev.writeDict2JSON, ev.Image = _NumpyShim(), _write_json, _MaskImages(self._masks)
            try:
                with _in_dir(tmp), quiet(self.verbose, ev):
                    res = ev.evaluateImgLists(self._txt, self._gt, args)
            finally:
                ev.np, ev.writeDict2JSON, ev.Image = saved
        avg = res["averages"]
        per = {c: {"ap": _nan0(v["ap"]), "ap50": _nan0(v["ap50%"])} for c, v in avg["classes"].items()}
        return {"AP": _nan0(avg["allAp"]), "AP50": _nan0(avg["allAp50%"]), "per_class": per}


def _nan0(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


def coco_summary(e) -> dict:
    """A ``COCOeval``'s summary: AP, AP50, AP75 and AP by object size (COCO's small < 32^2 px, medium,
    large > 96^2 px, in ground-truth pixels; None where the data has no object of that size) - where a
    model loses its AP: a query grid too coarse for small objects shows in ``AP_small`` first."""
    s = [float(v) for v in e.stats[:6]]
    return {"AP": max(s[0], 0.0), "AP50": max(s[1], 0.0), "AP75": max(s[2], 0.0),
            **{f"AP_{k}": (v if v > -1 else None) for k, v in zip(("small", "medium", "large"), s[3:6])}}


def empty_summary(annotations: list[dict]) -> dict:
    """What :func:`coco_summary` reads for a model that found nothing (``COCOeval`` cannot run on no
    detections): every AP 0, a size None where the ground truth has no countable object of that size,
    exactly as COCOeval leaves it - so every result carries the same keys whatever the model did.
    ``annotations``: COCO ground truth (``area``, ``iscrowd``); crowd regions never count, as in COCOeval."""
    areas = [float(a["area"]) for a in annotations if not a.get("iscrowd", 0)]
    ranges = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}  # COCOeval's
    return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0,
            **{f"AP_{k}": (0.0 if any(lo <= a <= hi for a in areas) else None) for k, (lo, hi) in ranges.items()}}


class CocoScorer:
    """COCO-style segm AP / AP50 by pycocotools over Cityscapes label maps, as a second opinion, fed one
    image at a time (ground truth and detections kept as RLEs; group regions are crowd).

    ``agnostic``: every evaluated instance and prediction counts as one class, and an image's group regions
    as one crowd region - can the model find and outline instances, whatever it calls them."""

    def __init__(self, agnostic: bool = False):
        self.agnostic = agnostic
        self._images, self._anns, self._dets = [], [], []

    def add(self, ids: np.ndarray, preds: list[dict]) -> None:
        from pycocotools import mask as mask_utils

        i = len(self._images) + 1
        h, w = ids.shape
        self._images.append({"id": i, "width": w, "height": h})
        regions, crowd = [], np.zeros(ids.shape, bool)
        for v in np.unique(ids).tolist():
            lab, is_instance = instance_number(v)
            if lab not in _CAT_OF_LABEL:
                continue
            if self.agnostic and not is_instance:
                crowd |= ids == v
                continue
            regions.append((1 if self.agnostic else _CAT_OF_LABEL[lab], ids == v, not is_instance))
        if crowd.any():
            regions.append((1, crowd, True))
        for cat, m, is_crowd in regions:
            rle = encode_mask(m)
            self._anns.append({"id": len(self._anns) + 1, "image_id": i, "category_id": cat, "segmentation": rle,
                               "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                               "iscrowd": int(is_crowd)})
        for p in preds:
            cat = 1 if self.agnostic else THING_CLASSES.index(p["class"]) + 1
            self._dets.append({"image_id": i, "category_id": cat, "segmentation": p["rle"], "score": p["score"]})

    def score(self, verbose: bool = False) -> dict:
        import pycocotools.coco
        import pycocotools.cocoeval
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        cats = [{"id": 1, "name": "car"}] if self.agnostic else \
            [{"id": i + 1, "name": c} for i, c in enumerate(THING_CLASSES)]
        gt = COCO()
        gt.dataset = {"images": self._images, "annotations": self._anns, "categories": cats}
        with quiet(verbose, pycocotools.coco, pycocotools.cocoeval):
            gt.createIndex()
            if not self._dets:
                return empty_summary(self._anns)
            e = COCOeval(gt, gt.loadRes(self._dets), "segm")
            e.evaluate()
            e.accumulate()
            e.summarize()
        return coco_summary(e)


_CAT_OF_LABEL = {LABEL_IDS[c]: i + 1 for i, c in enumerate(THING_CLASSES)}
