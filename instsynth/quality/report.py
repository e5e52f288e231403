"""`instsynth quality DIR... [--data-root ROOT]`: the paper's Table IV, computed as the metrics define.

Per generator (and per class): the stored per-sample numbers aggregated; FID and KID at the standard
299-px Inception features between synthesized focused crops and the same windows of the original
images (read from ROOT through each row's provenance); CLIPScore as Hessel et al. define it
(text-image, 100*max(cos, 0)); and, labelled as such, the image-image similarity the authors' code
reports as "CLIPScore".  Rows stream unit by unit; FID/KID update incrementally.  Metrics whose
weights are not configured are named with the weights they need; the rest is still reported.
"""

from __future__ import annotations

import json
from collections import defaultdict

import cv2
import numpy as np

from instsynth.config import QualityConfig
from instsynth.datasets import Dataset, decode_image
from instsynth.io import storage
from instsynth.output.readers import iter_tables
from instsynth.output.sources import source_dataset
from instsynth.plan.select import crop as crop_box
from instsynth.quality.metrics import PSNR_CAP, SSIM_MAX_SIDE, ClipScorer, SetMetrics, psnr, ssim_map
from instsynth.views.figures import figure_png

PER_SAMPLE = ["psnr_in", "psnr_out", "ssim_in", "ssim_out", "changed_inside", "inside_share", "clip"]


def _original_window(ds: Dataset, row: dict, cache: dict) -> np.ndarray:
    src = row["source_image"]
    if src not in cache:
        cache.clear()  # rows come grouped by source image: keep one decoded image
        cache[src] = ds.read_image(src)
    win = crop_box(cache[src], tuple(int(v) for v in row["crop_box"]))
    if win.shape[:2] != (row["height"], row["width"]):
        win = cv2.resize(win, (row["width"], row["height"]), interpolation=cv2.INTER_AREA)
    return win


class _Acc:
    def __init__(self):
        self.vals = defaultdict(list)

    def add(self, key, v):
        if v is not None:
            self.vals[key].append(float(v))

    def mean(self):
        return {k: float(np.mean(v)) for k, v in self.vals.items() if v}


def quality_report(dirs: list[str], cfg: QualityConfig, data_root: str | None = None, feature=None,
                   log=print) -> dict:
    """Table IV per generator; ``feature`` (an nn.Module) overrides the Inception weights (tests)."""
    missing = {}
    fid_feature = feature if feature is not None else cfg.inception_weights
    if fid_feature is None:
        missing["FID/KID"] = ("quality.inception_weights: the standard FID Inception weights file "
                              "(pt_inception-2015-12-05-6726825d.pth) and the torch-fidelity package")
    scorer = None
    if cfg.clip_model:
        scorer = ClipScorer(cfg.clip_model)
    else:
        missing["CLIPScore"] = "quality.clip_model: a CLIP model dir or hub id (e.g. openai/clip-vit-large-patch14)"
    per_gen: dict = {}

    for d in dirs:
        root = source_dataset(d, data_root, optional=True)
        cache: dict = {}
        for t in iter_tables(d, ["work_id", "generator", "class_name", "gen_stats", "image", "prompt",
                                        "source_image", "crop_box", "width", "height"]):
            rows = [r for r in t.to_pylist() if r["generator"] != "original"]
            if not rows:
                continue
            fakes, reals = [], []
            for r in rows:
                g = per_gen.setdefault(r["generator"], {"all": _Acc(), "classes": defaultdict(_Acc), "n": 0,
                                                        "set": None})
                g["n"] += 1
                stats = json.loads(r["gen_stats"] or "{}")
                for k in PER_SAMPLE:
                    g["all"].add(k, stats.get(k))
                    g["classes"][r["class_name"]].add(k, stats.get(k))
                fake = decode_image(r["image"], r["work_id"])
                if root:
                    real = _original_window(root, r, cache)
                    whole = np.ones(real.shape[:2], bool)
                    g["all"].add("psnr_crop", psnr(fake, real, whole))
                    g["all"].add("ssim_crop", float(ssim_map(fake, real, SSIM_MAX_SIDE).mean()))
                    reals.append(real)
                    fakes.append(fake)
                if scorer is not None:
                    g["all"].add("clipscore", scorer.text_image([fake], [r["prompt"]])[0])
                    if root:
                        g["all"].add("clip_img_img", scorer.image_image([fake], [reals[-1]])[0])
            if fid_feature is not None and fakes:
                by_gen = defaultdict(lambda: ([], []))
                for r, f, re in zip(rows, fakes, reals):
                    by_gen[r["generator"]][0].append(f)
                    by_gen[r["generator"]][1].append(re)
                for gen, (fs, rs) in by_gen.items():
                    g = per_gen[gen]
                    if g["set"] is None:
                        g["set"] = SetMetrics(fid_feature, cfg.feature_size)
                    g["set"].update(rs, fs)
        if not root:
            missing.setdefault("FID/KID/SSIM/PSNR vs originals", f"--data-root (no root recorded for {d})")
    result = {}
    for gen, g in per_gen.items():
        res = {"samples": g["n"], **g["all"].mean(),
               "per_class": {c: a.mean() for c, a in sorted(g["classes"].items())}}
        if g["set"] is not None and g["set"].count >= 2:
            res.update(g["set"].compute())
        result[gen] = res
    return {"generators": result, "missing": missing, "psnr_cap_db": PSNR_CAP}


def format_table(report: dict) -> str:
    cols = [("CLIPScore", "clipscore"), ("img-img*", "clip_img_img"), ("FID", "FID"), ("KID", "KID"),
            ("SSIM", "ssim_crop"), ("PSNR", "psnr_crop"), ("SSIMin", "ssim_in"), ("SSIMout", "ssim_out"),
            ("PSNRout", "psnr_out"), ("chg_in", "changed_inside"), ("in_share", "inside_share")]
    lines = [f"{'generator':<14}{'n':>6}" + "".join(f"{c:>10}" for c, _ in cols)]
    for gen, r in report["generators"].items():
        cells = "".join(f"{r[k]:>10.3f}" if r.get(k) is not None else f"{'-':>10}" for _, k in cols)
        lines.append(f"{gen:<14}{r['samples']:>6}" + cells)
    lines.append("* img-img: cosine of CLIP image embeddings of synthesized vs original crop (what the authors' "
                 "code reports as CLIPScore); CLIPScore: Hessel et al., text-image.")
    for metric, need in report["missing"].items():
        lines.append(f"not computed: {metric} - needs {need}")
    return "\n".join(lines)


def chart(report: dict) -> bytes | None:
    return quality_chart(report["generators"])


def quality_chart(table: dict) -> bytes | None:
    """Per-generator bars of the bounded numbers (SSIM, changed fractions), each labelled with its value
    (PNG); None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = list(table)
    keys = [k for k in ("ssim_crop", "ssim_in", "ssim_out", "changed_inside", "inside_share")
            if any(table[g].get(k) is not None for g in gens)]
    if not gens or not keys:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    w = 0.8 / len(gens)
    for i, g in enumerate(gens):
        bars = ax.bar(np.arange(len(keys)) + i * w, [table[g].get(k) or 0 for k in keys], w, label=g)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(keys)) + w * (len(gens) - 1) / 2, keys)
    ax.set_ylim(0, 1.12)
    ax.set_title("generation quality (means over samples)")
    ax.legend(fontsize=8)

    return figure_png(fig)


def write_quality(dirs, cfg, out, data_root=None, feature=None) -> tuple[str, dict]:
    rep = quality_report(dirs, cfg, data_root, feature)
    text = format_table(rep)
    storage.write_bytes(storage.join(out, "quality.json"), json.dumps(rep, indent=1).encode())
    storage.write_bytes(storage.join(out, "quality.txt"), (text + "\n").encode())
    png = chart(rep)
    if png:
        storage.write_bytes(storage.join(out, "quality.png"), png)
    return text, rep
