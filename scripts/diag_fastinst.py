"""Why does FastInst learn slowly on the sample?  The measurements behind docs/fastinst.md's answer.

    python scripts/diag_fastinst.py oracle [--strides 4,8,16]
    python scripts/diag_fastinst.py classes            # per class: size, E4 coverage, stride-8 ceiling
    python scripts/diag_fastinst.py rules [--crops 200]   # proposal targets vs the location rules, training crops
    python scripts/diag_fastinst.py recall --ckpt DIR [--ckpt DIR ...]   # per class: found, classified, ranked
    python scripts/diag_fastinst.py train [--iterations 600] [--every 300] [--params '{"num_queries": 100}'] [--bb 1.0]

``oracle``: the ceiling a mask predicted on a stride-S grid can reach here.  Each ground-truth mask at
the test scale (short edge 384) is area-averaged onto the stride-S grid, upsampled bilinearly and
thresholded at 0.5 - what FastInst's head does with its stride-8 mask logits - and scored by the
project's evaluator as if predicted with score 1 (AP50 on 20 train and 20 val images).

``train``: the learnability recipe of ``bench_train.py --arms fastinst:imagenet`` (same sample, crops,
batch 2, AdamW, test scale, MobileNetV2 with the bundled ImageNet weights) in one process without Ray,
so each step can be inspected.  Every 50 steps it prints the losses and, for the Hungarian matches of
the step: ``coverable`` (share of GT instances with at least one E4 (stride-16) pixel inside, the
ceiling of the location cost), ``inside`` (share of matched queries whose source pixel lies inside
their GT), ``clsacc`` (matched queries whose best foreground class is right).  At each evaluation:
AP50 (train / val, 20 images each) and, on 10 train images, the mean best mask IoU of each GT instance
(>= 100 px) over all predictions and the share with some prediction at IoU > 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_train: the protocol's samples

from bench_train import heldout_root, protocol_sample  # noqa: E402

TEST_SHORT_EDGE = 384


def ground_truth(root: str, split: str, images: bool = True, limit: int | None = None):
    """(RGB image or None, index map, things) of each image of a split, read through the dataset seam
    (``instsynth.datasets``), so that the diagnostic knows no folder layout and does no class arithmetic."""
    import itertools

    from instsynth.datasets import open_dataset, resolve, things_of

    ds = open_dataset(resolve(root))
    for ref in itertools.islice(ds.discover(split), limit):
        img, labels = ds.load(ref) if images else (None, ds.load_labels(ref))
        yield img, labels.index, things_of(labels.regions)


def oracle(root: str, stride: int, splits=("train", "val"), max_images: int | None = 20, per_class: bool = False) -> dict:
    import cv2
    import numpy as np

    from instsynth.train.data import targets_from_ids
    from instsynth.train.evaluate import evaluate_model

    def predict(img, ids):
        h, w = ids.shape
        s = TEST_SHORT_EDGE / min(h, w)
        th, tw = round(h * s), round(w * s)
        small = cv2.resize(ids, (tw, th), interpolation=cv2.INTER_NEAREST)
        masks, labels = targets_from_ids(small)
        out = []
        for m, lab in zip(masks, labels):
            full = cv2.resize(on_stride(m, stride).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            if full.any():
                out.append({"mask": full, "label": int(lab), "score": 1.0})
        return out

    def score(split):
        r = evaluate_model(None, root, split, max_images=max_images, predictor=predict)["cityscapes"]
        return {k: v["ap50"] for k, v in r["per_class"].items()} if per_class else round(r["AP50"], 3)
    return {split: score(split) for split in splits}


def on_stride(mask, stride: int):
    """The best a mask head at ``stride`` can draw of ``mask`` (H, W bool, at the test scale): the mask
    average-pooled onto the head's grid, upsampled bilinearly and thresholded at 0.5, as FastInst's masks are."""
    import torch
    import torch.nn.functional as F

    h, w = mask.shape
    g = F.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None, None], (max(1, h // stride), max(1, w // stride)))
    return F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5


def reachable(masks, short_edge: int | None, stride: int = 8):
    """Per GT mask (N, H, W, native size): can a stride-``stride`` mask head, at the test scale
    ``short_edge``, cover it at IoU > 0.5 at all (``on_stride``, scored back at the native size)?"""
    import cv2
    import numpy as np

    n, h, w = masks.shape
    s = (short_edge or min(h, w)) / min(h, w)
    th, tw = round(h * s), round(w * s)
    out = np.zeros(n, bool)
    for i, m in enumerate(masks):
        small = cv2.resize(m.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
        best = cv2.resize(on_stride(small, stride).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        out[i] = (best & m).sum() > 0.5 * max((best | m).sum(), 1)
    return out


def classes(out: str, seed: int = 1) -> dict:
    """Per class, on the protocol's held-out images (80 of sample ``seed``) at the test scale: instances,
    median area in px, ``coverable`` (share with an E4 (stride-16) query location inside, the authors'
    ``compute_coordinates`` rule: where a query may start without the location penalty) and the stride-8
    oracle's AP50 (the ceiling of FastInst's mask head); with the protocol's per-class AP50 beside it, it
    says whether a class's gap follows its size."""
    import cv2
    import numpy as np
    import torch

    from instsynth.datasets import cityscapes_space
    from instsynth.train.data import targets
    from instsynth.train.models import fastinst as fi

    root = heldout_root(out, seed)
    names = cityscapes_space().evaluated  # the model's class indices (train.data.class_ids)
    area: dict[int, list] = {}
    cover: dict[int, list] = {}
    for _, index, things in ground_truth(root, "val", images=False):
        h, w = index.shape
        sc = TEST_SHORT_EDGE / min(h, w)
        th, tw = round(h * sc), round(w * sc)
        masks, labels = targets(cv2.resize(index, (tw, th), interpolation=cv2.INTER_NEAREST), things)
        if not len(labels):
            continue
        m = torch.from_numpy(np.stack(masks))
        grid = (th // 16, tw // 16)
        inside = fi.query_inside(m, torch.arange(grid[0] * grid[1]), grid).any(0)
        for k, lab in enumerate(labels):
            area.setdefault(int(lab), []).append(int(m[k].sum()))
            cover.setdefault(int(lab), []).append(bool(inside[k]))
    ceiling = oracle(root, 8, splits=("val",), max_images=None, per_class=True)["val"]
    return {names[c]: {"instances": len(area[c]), "median_area_px": int(np.median(area[c])),
                       "coverable": round(float(np.mean(cover[c])), 3), "stride8_oracle_AP50": round(ceiling[names[c]], 3)}
            for c in sorted(area)}


def rules(orig: str, crops: int = 200) -> dict:
    """Do a query's location rule and its proposal target agree, on training crops as the trainer draws them
    (384x192 from short edge 288-480, flips; E4 = stride 16)?  The proposal loss marks every cell holding a
    pixel of a GT (``proposal_cells``, the authors' rule); the location cost then lets a query from such a
    cell match that GT only if its location is inside: the authors' ``linspace`` point, which drifts up to
    half a cell from the cell's centre toward the border, or the old nearest-grid rule (the cell's centre).
    Per class: GTs, the share of their proposal cells whose location is inside by each rule, and the share of
    GTs with no proposal cell inside by each rule (``gts_unmatchable_*``: every query the proposal head is
    taught to fire for that GT carries the location penalty for it, so it goes to any query whose location
    is inside, and only by mask and class cost when there is none)."""
    import numpy as np
    import torch

    from instsynth.config import load_config
    from instsynth.datasets import cityscapes_space
    from instsynth.train.data import build_catalog, collate, load_samples, stream_spec
    from instsynth.train.models import fastinst as fi

    cat = build_catalog([orig], seed=0)
    spec = stream_spec(load_config(None, ["train.crop=384x192", "train.short_edge=[288, 480]"]).train, 0, 0, 1)
    names = cityscapes_space().evaluated
    acc: dict[str, dict[str, list]] = {}
    for start in range(0, crops, 8):
        images, targets = collate(load_samples({"id": np.arange(start, min(start + 8, crops))}, cat, spec), cat.class_ids)
        grid = (images.shape[-2] // 16, images.shape[-1] // 16)
        for t in targets:
            if not len(t["labels"]):
                continue
            cells = fi.proposal_cells(t["masks"], grid).flatten(1)  # (T, HW)
            every = torch.arange(grid[0] * grid[1])
            authors = fi.query_inside(t["masks"], every, grid).T  # (T, HW)
            centre = fi._nearest_cells(t["masks"], grid).flatten(1)
            for k, lab in enumerate(t["labels"].tolist()):
                c = cells[k]
                for key in (names[lab], "all"):
                    a = acc.setdefault(key, {"cells": [], "authors": [], "centre": [], "gt_authors": [], "gt_centre": []})
                    a["cells"].append(int(c.sum()))
                    a["authors"].append(int((authors[k] & c).sum()))
                    a["centre"].append(int((centre[k] & c).sum()))
                    a["gt_authors"].append(bool((authors[k] & c).any()))
                    a["gt_centre"].append(bool((centre[k] & c).any()))
    return {k: {"gts": len(a["cells"]), "proposal_cells": int(np.sum(a["cells"])),
                "cells_inside_authors": round(float(np.sum(a["authors"]) / max(np.sum(a["cells"]), 1)), 3),
                "cells_inside_centre": round(float(np.sum(a["centre"]) / max(np.sum(a["cells"]), 1)), 3),
                "gts_unmatchable_authors": round(1 - float(np.mean(a["gt_authors"])), 3),
                "gts_unmatchable_centre": round(1 - float(np.mean(a["gt_centre"])), 3)}
            for k, a in sorted(acc.items(), key=lambda kv: -len(kv[1]["cells"]))}


def recall(ckpts: list[str], root: str) -> dict:
    """Where a class's AP50 is lost, per checkpoint, on the val images of ``root`` (the protocol's held-out
    images: ``heldout_root``) at the checkpoint's test scale. Per class: ``found`` (share of GTs some prediction of any class covers at IoU > 0.5: the mask head
    and the queries reached it), ``found_as_class`` (... a prediction of the right class: classification too),
    ``false_above_hit`` (median over found GTs of how many of the image's predictions of that class cover no
    GT of it at IoU > 0.5 yet score above the GT's best hit: what AP50 ranks before it) and
    ``false_per_image`` (such false predictions scoring above the class's median hit). A class with
    ``found`` high and ``found_as_class`` low loses to classification; with both high, to ranking.
    ``above_median_hit`` says what AP50 counts as false positives ahead of the median hit, per image, by kind:
    ``duplicate`` (covers a GT of its class at IoU > 0.5 that a higher-scored prediction already covers),
    ``loose`` (its best IoU with a GT of its class is in (0.1, 0.5]: a real instance, a badly fitted mask),
    ``other_class`` (covers a GT of another class at IoU > 0.5) and ``background`` (none of these);
    ``loose_on_unreachable``: the loose ones whose instance no stride-8 mask can cover at IoU > 0.5 (``reachable``:
    lost to the mask head's grid, not to its fit)."""
    import numpy as np

    from instsynth.datasets import cityscapes_space
    from instsynth.io import storage
    from instsynth.train.data import targets
    from instsynth.train.evaluate import load_checkpoint, predict_image

    names = cityscapes_space().evaluated
    res = {}
    for ckpt in ckpts:
        model, step = load_checkpoint(ckpt)
        model.eval()
        short = json.loads(storage.read_bytes(storage.join(ckpt, "model.json"))).get("recipe", {}).get("eval_short_edge")
        acc: dict[int, dict[str, list]] = {}
        images = 0
        for img, index, things in ground_truth(root, "val"):
            images += 1
            preds = predict_image(model, img, short_edge=short)
            masks, labels = targets(index, things)
            pm = np.stack([p["mask"] for p in preds]).reshape(len(preds), -1) if preds else np.zeros((0, index.size), bool)
            gm = masks.reshape(len(masks), -1)
            inter = pm.astype(np.float32) @ gm.T.astype(np.float32)  # (P, G)
            iou = inter / np.maximum(pm.sum(1)[:, None] + gm.sum(1)[None] - inter, 1)
            plab = np.array([p["label"] for p in preds], int)
            score = np.array([p["score"] for p in preds])
            reach = reachable(masks, short)
            for c in set(labels.tolist()) | set(plab.tolist()):
                a = acc.setdefault(c, {"found": [], "as_class": [], "above": [], "hit_scores": [], "false_scores": [],
                                       "kinds": []})
                mine, own = np.flatnonzero(plab == c), np.flatnonzero(labels == c)
                false = [i for i in mine if not len(own) or not (iou[i, own] > 0.5).any()]
                a["false_scores"] += [float(score[i]) for i in false]
                a["kinds"] += false_kinds(mine, own, np.flatnonzero(labels != c), iou, score, reach)
                for g in own:
                    a["found"].append(bool((iou[:, g] > 0.5).any()))
                    hits = [i for i in mine if iou[i, g] > 0.5]
                    a["as_class"].append(bool(hits))
                    if hits:
                        best = max(float(score[i]) for i in hits)
                        a["hit_scores"].append(best)
                        a["above"].append(sum(float(score[i]) > best for i in false))
        res[f"{ckpt} (step {step})"] = {names[c]: recall_row(a, images) for c, a in sorted(acc.items())}
    return res


def recall_row(a: dict, images: int) -> dict:
    """One class's ``recall`` entry from its accumulated GT flags, hit scores and false positives."""
    import numpy as np

    row = {"gts": len(a["found"]), "found": round(float(np.mean(a["found"])), 3) if a["found"] else None,
           "found_as_class": round(float(np.mean(a["as_class"])), 3) if a["as_class"] else None,
           "false_above_hit": float(np.median(a["above"])) if a["above"] else None,
           "false_per_image": None, "above_median_hit": None}
    if a["hit_scores"]:
        med = np.median(a["hit_scores"])
        ahead = [(kind, reach) for kind, s, reach in a["kinds"] if s > med]

        def per_image(n):  # numpy's rounding (6/80 -> 0.08), as the counts were rounded when first recorded
            return float(np.round(n / images, 2))
        row["false_per_image"] = per_image(sum(s > med for s in a["false_scores"]))
        row["above_median_hit"] = {k: per_image(sum(kind == k for kind, _ in ahead))
                                   for k in ("duplicate", "loose", "other_class", "background")}
        row["above_median_hit"]["loose_on_unreachable"] = per_image(sum(kind == "loose" and not r for kind, r in ahead))
    return row


def false_kinds(mine, own, other, iou, score, reach=None) -> list[tuple[str, float, bool]]:
    """(kind, score) of each prediction in ``mine`` (indices of one class's predictions; ``own``/``other``: the
    GTs of that class / of the others, columns of ``iou``) that AP50 counts as a false positive, matched
    greedily as the evaluator does: by score, a prediction takes the best free GT of its class at IoU > 0.5;
    one whose GTs are all taken is a ``duplicate``; one with none ``loose``, ``other_class`` or ``background``
    (``recall``). The flag: the GT it overlaps most is ``reach``-able (a stride-8 head can cover it at IoU > 0.5;
    all are, without ``reach``)."""
    taken, out = set(), []
    for i in sorted(mine, key=lambda i: -score[i]):
        free = [g for g in own if iou[i, g] > 0.5 and g not in taken]
        if free:
            taken.add(max(free, key=lambda g: iou[i, g]))
            continue
        if any(iou[i, g] > 0.5 for g in own):
            kind = "duplicate"
        elif any(iou[i, g] > 0.1 for g in own):
            kind = "loose"
        elif any(iou[i, g] > 0.5 for g in other):
            kind = "other_class"
        else:
            kind = "background"
        near = max(own, key=lambda g: iou[i, g]) if len(own) else None
        out.append((kind, float(score[i]), bool(reach is None or near is None or reach[near])))
    return out


def mask_quality(model, root: str, images: int = 10) -> dict:
    """Mean best IoU of each GT instance (>= 100 px) over all predictions, and the share above 0.5."""
    import numpy as np

    from instsynth.train.data import targets
    from instsynth.train.evaluate import predict_image

    best = []
    for img, index, things in ground_truth(root, "train", limit=images):
        preds = predict_image(model, img, short_edge=TEST_SHORT_EDGE)
        for m in targets(index, things)[0]:
            if m.sum() >= 100:
                best.append(max((float((p["mask"] & m).sum() / (p["mask"] | m).sum()) for p in preds), default=0.0))
    return {"mean_best_iou": round(float(np.mean(best)), 3), "iou_gt_0.5": round(float(np.mean(np.array(best) > 0.5)), 3),
            "instances": len(best)}


def train(args, root: str, orig: str) -> None:
    import numpy as np
    import torch

    from instsynth.config import load_config
    from instsynth.train.data import SampleLoader, build_catalog
    from instsynth.train.evaluate import evaluate_model
    from instsynth.train.models import build_model
    from instsynth.train.models import fastinst as fi
    from instsynth.train.recipe import make_optimizer, set_lr
    from instsynth.train.trainer import train_step

    cfg = load_config(None, [f"train.dirs=[{orig}]", f"train.iterations={args.iterations}", "train.batch_size=2",
                             f"train.lr={args.lr}", f"train.backbone_lr_mult={args.bb}", "train.warmup_iters=100",
                             "train.crop=384x192", "train.short_edge=[288, 480]"]).train
    torch.manual_seed(0)
    model = build_model("fastinst", tiny=True, backbone_weights="bundled",
                        **{"backbone": "mobilenet_v2", **json.loads(args.params)})
    opt = make_optimizer(model, cfg)
    stats: dict[str, list] = {}
    match = fi.FastInst.match

    def counted_match(self, preds, targets, idx, e4_size):
        out = match(self, preds, targets, idx, e4_size)
        # the last decoder layer only: the guided pass matches it alone; without it, losses() matches all stages
        if len(preds) not in (1, self.cfg.dec_layers + 1):
            return out
        (cls_l, _), per_image = preds[-1], out[-1]
        cells = torch.arange(e4_size[0] * e4_size[1])
        for b, (qi, ti) in enumerate(per_image):
            if len(qi):
                masks = targets[b]["masks"][ti]
                stats.setdefault("coverable", []).append(float(fi.query_inside(masks, cells, e4_size).any(0).float().mean()))
                inside = fi.query_inside(masks, idx[b][qi], e4_size).diagonal()
                stats.setdefault("inside", []).append(float(inside.float().mean()))
                right = cls_l[b][qi][:, :-1].argmax(-1) == targets[b]["labels"][ti]
                stats.setdefault("clsacc", []).append(float(right.float().mean()))
        return out

    fi.FastInst.match = counted_match  # this process only: the matching itself is unchanged
    losses: dict[str, list] = {}
    t0 = time.time()
    for step, batch in enumerate(SampleLoader(build_catalog(cfg.dirs, None, cfg.seed), cfg, 0, args.iterations, threads=1)):
        set_lr(opt, step, cfg)
        for k, v in train_step(model, opt, [batch], cfg.grad_clip, None).items():
            losses.setdefault(k, []).append(v)
        if (step + 1) % 50 == 0:
            print(f"{step + 1:>5} " + " ".join(f"{k}={np.mean(v):.3f}" for k, v in losses.items()) + " "
                  + " ".join(f"{k}={np.mean(v):.2f}" for k, v in stats.items()) + f" t={time.time() - t0:.0f}s", flush=True)
            losses.clear()
            stats.clear()
        if (step + 1) % args.every == 0 or step + 1 == args.iterations:
            with torch.no_grad():
                r = {s: round(evaluate_model(model, root, s, max_images=20, short_edge=TEST_SHORT_EDGE)["cityscapes"]["AP50"] or 0, 3)
                     for s in ("train", "val")}
                r.update(mask_quality(model, root))
            model.train()
            print(f"EVAL step {step + 1}: {r}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["oracle", "train", "classes", "rules", "recall"])
    ap.add_argument("--ckpt", action="append", default=[], help="recall: a checkpoint dir (repeatable)")
    ap.add_argument("--crops", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "instsynth-diag-fastinst"))
    ap.add_argument("--strides", default="4,8,16")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--bb", type=float, default=1.0, help="backbone LR multiplier")
    ap.add_argument("--params", default='{"num_queries": 100, "test_topk": 100}', help="FastInst params (JSON)")
    args = ap.parse_args()
    if args.mode == "classes":
        print(json.dumps(classes(args.out), indent=1))
        return
    if args.mode == "recall":
        if not args.ckpt:
            ap.error("recall needs --ckpt DIR (a trainer checkpoint; repeatable)")
        print(json.dumps(recall(args.ckpt, heldout_root(args.out, 1)), indent=1))
        return
    root, orig = protocol_sample(args.out)
    if args.mode == "rules":
        print(json.dumps(rules(orig, args.crops), indent=1))
    elif args.mode == "oracle":
        for s in args.strides.split(","):
            print(f"stride {s}: AP50 {oracle(root, int(s))}", flush=True)
    else:
        train(args, root, orig)


if __name__ == "__main__":
    main()
