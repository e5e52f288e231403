"""Evaluation: a model (or checkpoint) on a Cityscapes split -> official AP/AP50 + COCO segm AP.

The official numbers come from cityscapesscripts' ``evaluateImgLists`` (through ``cs_eval``'s
compatibility layer), COCO-style segm AP from pycocotools as a second opinion.  Output: a table
shaped like the paper's Table II and per-class AP as JSON.
"""

from __future__ import annotations

import json
import os

import numpy as np

from instsynth import storage
from instsynth.datasets.cityscapes import (
    THING_CLASSES,
    discover,
    instance_number,
    instance_value,
    read_ids,
    read_image,
)
from instsynth.train.cs_eval import evaluate_cityscapes, evaluate_coco


def predict_image(model, image: np.ndarray, score_threshold: float = 0.0, short_edge: int | None = None) -> list[dict]:
    """Predictions for one image; with ``short_edge`` the model sees the image rescaled so its short
    side has that length (the test scale), and masks come back at the native size for scoring."""
    import cv2
    import torch

    h, w = image.shape[:2]
    x = image
    if short_edge and short_edge != min(h, w):
        s = short_edge / min(h, w)
        x = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
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


def evaluate_model(model, data_root: str, split: str = "val", max_images: int | None = None,
                   predictor=None, short_edge: int | None = None) -> dict:
    """AP/AP50 of ``model`` (or of ``predictor(image, ids) -> preds``, e.g. an oracle) on a split.

    ``short_edge``: the test scale (short side in pixels; None = native).  The result names it.
    """
    data_root = storage.absolute(data_root)
    recs = list(discover(data_root, split))[: max_images or None]
    if not recs:
        raise ValueError(f"{data_root}: no images in split {split!r}")
    if model is not None:
        model.eval()
    gt_files, gt_maps, preds = [], [], []
    tmp_files = []
    for rec in recs:
        img = read_image(storage.join(data_root, rec.image))
        ids = read_ids(storage.join(data_root, rec.labels))
        path = storage.join(data_root, rec.labels)
        if storage.is_uri(path):  # the official evaluator reads local files
            import tempfile

            fd, local = tempfile.mkstemp(suffix="_gtFine_instanceIds.png")
            os.write(fd, storage.read_bytes(path))
            os.close(fd)
            tmp_files.append(local)
            path = local
        gt_files.append(path)
        gt_maps.append(ids)
        preds.append(predictor(img, ids) if predictor else predict_image(model, img, short_edge=short_edge))
    try:
        cs = evaluate_cityscapes(gt_files, preds)
    finally:
        for f in tmp_files:
            os.remove(f)
    coco = evaluate_coco(gt_maps, preds)
    agnostic = evaluate_coco(*class_agnostic(gt_maps, preds))
    scale = f"short edge {short_edge} px" if short_edge else "native resolution"
    return {"images": len(recs), "test_scale": scale, "cityscapes": cs, "coco": coco, "agnostic": agnostic}


def class_agnostic(gt_maps: list[np.ndarray], preds: list[list[dict]]):
    """Every evaluated instance and prediction as one class (car), for class-agnostic COCO AP: can
    the model find and outline instances, whatever it calls them."""
    from instsynth.train.cs_eval import LABEL_IDS

    car = LABEL_IDS["car"]
    evaluated = set(LABEL_IDS.values())
    maps = []
    for ids in gt_maps:
        out = np.zeros(ids.shape, np.int32)
        k = 0
        for v in np.unique(ids).tolist():
            lab, is_instance = instance_number(v)
            if lab not in evaluated:
                continue
            if not is_instance:
                out[ids == v] = car  # group region: crowd
            else:
                k += 1
                out[ids == v] = instance_value(car, k)
        maps.append(out)
    return maps, [[{**p, "label": "car"} for p in ps] for ps in preds]


def format_table(results: dict[str, dict]) -> str:
    """Rows = models/runs, columns like the paper's Table II: AP, AP50 and per-class AP."""
    head = f"{'model':<28}{'AP':>7}{'AP50':>7}{'cocoAP':>8}" + "".join(f"{c[:6]:>8}" for c in THING_CLASSES)
    lines = [head]
    for name, r in results.items():
        cs = r["cityscapes"]

        def pct(v):
            return f"{100 * v:.1f}" if v is not None else "-"
        per = "".join(f"{pct(cs['per_class'].get(c, {}).get('ap')):>8}" for c in THING_CLASSES)
        lines.append(f"{name:<28}{pct(cs['AP']):>7}{pct(cs['AP50']):>7}{pct(r['coco']['AP']):>8}{per}")
    scales = sorted({r.get("test_scale", "native resolution") for r in results.values()})
    counts = sorted({r["images"] for r in results.values()})
    def n(k):
        return f"{k} image{'' if k == 1 else 's'}"
    images = (n(counts[0]) + (" each" if len(results) > 1 else "")) if len(counts) == 1 else \
        ", ".join(f"{name}: {n(r['images'])}" for name, r in results.items())
    lines.append(f"evaluated at test scale {' and '.join(scales)} on {images}")
    return "\n".join(lines)


def load_checkpoint(path: str):
    """Rebuild a model from a checkpoint dir written by the trainer (model.pt + model.json)."""
    import torch

    from instsynth.train.models import build_model

    with open(os.path.join(path, "model.json")) as f:
        spec = json.load(f)
    model = build_model(spec["name"], **spec["kwargs"])
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model, state.get("step", 0)


def evaluate_checkpoint(ckpt: str, data_root: str, split: str = "val", max_images: int | None = None,
                        out_json: str | None = None, short_edge: int | None = -1) -> dict:
    """``short_edge=-1``: the test scale the checkpoint was trained for (its recipe), else as given."""
    model, step = load_checkpoint(ckpt)
    if short_edge == -1:
        with open(os.path.join(ckpt, "model.json")) as f:
            short_edge = json.load(f).get("recipe", {}).get("eval_short_edge")
    res = evaluate_model(model, data_root, split, max_images, short_edge=short_edge)
    res["checkpoint"], res["step"] = ckpt, step
    if out_json:
        storage.write_bytes(out_json, json.dumps(res, indent=1).encode())
    return res
