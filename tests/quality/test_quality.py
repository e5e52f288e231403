"""Quality metrics on known cases, the reject-and-regenerate filter, and `instsynth quality`."""

import json
import os

import numpy as np
import pytest
import torch

from instsynth.cli import main
from instsynth.config import QualityConfig, load_config
from instsynth.output.readers import iter_rows, read_failures
from instsynth.plan.rng import item_seed
from instsynth.quality.metrics import PSNR_CAP, per_sample, psnr, set_metrics, ssim_map
from instsynth.synth.stages import Unit, generate
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")


class TinyFeatures(torch.nn.Module):
    """A tiny fixed feature network standing in for Inception (FID/KID need only features)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x.float() / 255.0)


def _img(seed, size=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
    import cv2

    return cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)


def _noisy(img, sd, seed=0):
    return np.clip(img + np.random.default_rng(seed).normal(0, sd, img.shape), 0, 255).astype(np.uint8)


def test_identical_images_exact():
    a = _img(0)
    whole = np.ones(a.shape[:2], bool)
    assert psnr(a, a, whole) == PSNR_CAP
    assert ssim_map(a, a).mean() == pytest.approx(1.0)
    imgs = [_img(i) for i in range(12)]
    m = set_metrics(imgs, imgs, TinyFeatures(), size=64)
    assert abs(m["FID"]) < 1e-3 and abs(m["KID"]) < 1e-3


def test_ssim_map_is_torchmetrics_ssim():
    """The OpenCV SSIM map (no torchmetrics import in the workers) equals torchmetrics' full map."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    for seed, shape in ((3, (40, 72, 3)), (4, (33, 50, 3))):
        a = _img(seed, 96)[: shape[0], : shape[1]]
        b = _noisy(a, 20, seed)
        ta, tb = (torch.from_numpy(x).permute(2, 0, 1)[None].double() for x in (b, a))
        _, full = tm_ssim(ta, tb, data_range=255.0, return_full_image=True)
        ref = full[0].mean(0).numpy()
        got = ssim_map(b, a)
        assert got.shape == ref.shape == a.shape[:2]
        assert np.abs(got - ref).max() < 1e-5


def test_metrics_monotone_under_noise():
    a = _img(1)
    whole = np.ones(a.shape[:2], bool)
    ps = [psnr(_noisy(a, sd), a, whole) for sd in (2, 8, 32)]
    ss = [float(ssim_map(_noisy(a, sd), a).mean()) for sd in (2, 8, 32)]
    assert ps[0] > ps[1] > ps[2] and ss[0] > ss[1] > ss[2]
    real = [_img(i) for i in range(16)]
    fids = [set_metrics(real, [_noisy(x, sd, i) for i, x in enumerate(real)], TinyFeatures(), 64)["FID"]
            for sd in (4, 16, 48)]
    assert fids[0] < fids[1] < fids[2]


def test_per_sample_inside_outside():
    src = _img(2)
    mask = np.zeros(src.shape[:2], bool)
    mask[16:48, 16:48] = True
    gen = src.copy()
    gen[mask] = 255 - gen[mask]
    s = per_sample(src, gen, mask)
    assert s["psnr_out"] == PSNR_CAP and s["ssim_out"] > 0.9 and s["changed_inside"] > 0.9 and s["inside_share"] == 1.0
    assert s["psnr_in"] < 20


class _Painter:
    """Test generator: changes the instance only when asked by seed; can also paint outside the mask."""

    name = "painter"

    def __init__(self, good_seed=None, outside=False):
        self.good_seed, self.outside = good_seed, outside

    def __call__(self, batch):
        out = []
        for it in batch:
            img = it["crop"].copy()
            if self.outside:  # repaints the instance, and the scene around it too
                img = 255 - img
            elif self.good_seed is not None and it["gen_seed"] == self.good_seed:
                img[it["mask"]] = 255 - img[it["mask"]]
            out.append({"image": img, "stats": {}})
        return out


def _unit():
    crop = _img(3)
    mask = np.zeros(crop.shape[:2], bool)
    mask[16:48, 16:48] = True
    row = {"work_id": "a_000000_000019_26000_v0", "image_id": "a_000000_000019", "seed": 0, "class_name": "car",
           "prompt": "A photo of a red car", "negative_prompt": "", "crop_box": [0, 0, 64, 64], "bbox": [16, 16, 48, 48]}
    return Unit("u", [row], items=[{"row": row, "crop": crop, "mask": mask,
                                    "gen_seed": item_seed(0, row["work_id"])}])


def test_filter_rejects_untouched_and_outside_painting_then_regenerates():
    q = QualityConfig(min_changed_inside=0.5, min_inside_share=0.8, max_tries=3)
    u = generate(_unit(), _Painter(), 4, q)  # untouched instance: rejected on every try
    assert not u.items and u.failures[0]["stage"] == "filter" and "untouched" in u.failures[0]["reason"]
    assert len(json.loads(u.failures[0]["details"])["tries"]) == 3
    u = generate(_unit(), _Painter(outside=True), 4, q)  # painted outside its mask
    assert not u.items and "outside the mask" in u.failures[0]["reason"]
    wid = "a_000000_000019_26000_v0"
    u = generate(_unit(), _Painter(good_seed=item_seed(0, wid, 1)), 4, q)  # passes on try 2 (next seed)
    (it,) = u.items
    assert it["gen_stats"]["attempts"] == 2 and it["gen_seed"] == item_seed(0, wid, 1)
    assert [t["gen_seed"] for t in it["gen_stats"]["tries"]] == [item_seed(0, wid), item_seed(0, wid, 1)]


def test_quality_command_without_weights(ray_local, sample_root, tmp_path, capsys):
    from instsynth.synth.driver import run_synth

    out = str(tmp_path / "recolor")
    run_synth(sample_root, out, load_config(DEBUG, ["generator.name=recolor", "run.executor=local",
                                                    "run.progress=false"]), log=lambda *a: None)
    rows = list(iter_rows(out, ["gen_stats"]))
    assert all("ssim_in" in json.loads(r["gen_stats"]) for r in rows)  # stored per-sample numbers
    assert main(["quality", out]) == 0
    text = capsys.readouterr().out
    assert "recolor" in text and "not computed: FID/KID" in text and "not computed: CLIPScore" in text
    rep = json.load(open(os.path.join(out, "stats", "quality.json")))
    g = rep["generators"]["recolor"]
    assert 0 < g["ssim_crop"] <= 1 and g["psnr_crop"] > 0 and "FID" not in g
    assert os.path.exists(os.path.join(out, "stats", "quality.png"))
    from instsynth.quality.report import quality_report

    rep2 = quality_report([out], QualityConfig(feature_size=64), feature=TinyFeatures())
    assert rep2["generators"]["recolor"]["FID"] >= 0 and "KID" in rep2["generators"]["recolor"]


def test_tiny_clip_scores(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from instsynth.generators.tiny import write_tokenizer
    from instsynth.quality.metrics import ClipScorer

    d = str(tmp_path / "clip")
    n = write_tokenizer(d)
    cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                                  "num_hidden_layers": 2, "vocab_size": n, "bos_token_id": n - 2,
                                  "eos_token_id": n - 1, "pad_token_id": n - 1},
                     vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                                    "num_hidden_layers": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=CLIPTokenizer.from_pretrained(d)).save_pretrained(d)
    sc = ClipScorer(d)
    s = sc.text_image([_img(0), _img(1)], ["A photo of a red car", "A photo of a woman"])
    assert len(s) == 2 and all(0 <= v <= 100 for v in s)
    same = sc.image_image([_img(0)], [_img(0)])[0]
    assert same == pytest.approx(100.0, abs=1e-3)


def test_stats_show_accepted_retried_rejected(sample_root, tmp_path, capsys):
    from instsynth.synth.driver import run_synth

    out = str(tmp_path / "strict")
    s = run_synth(sample_root, out, load_config(DEBUG, [
        "generator.name=identity", "run.executor=local", "run.progress=false", "quality.min_changed_inside=0.5",
        "quality.max_tries=2", "run.limit=3"]), log=lambda *a: None)
    assert s["committed_rows"] == 0 and s["failures_by_stage"] == {"filter": 3}
    fails = read_failures(out).to_pylist()
    assert all(len(json.loads(f["details"])["tries"]) == 2 for f in fails)  # scores of every try kept
    assert main(["stats", out, "--out", str(tmp_path / "st")]) == 0
    text = capsys.readouterr().out
    assert "identity accepted/retried/rejected" in text
    rejected = sum(int(line.split("/")[-1]) for line in text.splitlines()
                   if line.split() and line.split()[0] in ("person", "rider", "car", "truck", "bus", "train",
                                                           "motorcycle", "bicycle") and line.count("/") == 2)
    assert rejected == 3
