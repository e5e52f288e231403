"""The evaluation path: official Cityscapes AP (compat layer) and COCO AP; oracle, corrupted oracle, overfit."""

import json
import os

import numpy as np
import pytest
import torch

from instsynth.cli import main
from instsynth.datasets.cityscapes import THING_IDS, discover, read_ids, read_image
from instsynth.datasets.sample import write_sample
from instsynth.io import storage
from instsynth.train.cs_eval import _NumpyShim
from instsynth.train.data import collate
from instsynth.train.evaluate import evaluate_model, load_checkpoint
from instsynth.train.models import build_model
from instsynth.train.trainer import save_checkpoint, train_step


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("small"))
    write_sample(root, images=8, size=(256, 128), seed=0)
    return root


def oracle(img, ids, corrupt=False):
    out = []
    for v in np.unique(ids).tolist():
        if v >= 1000 and v // 1000 in THING_IDS:
            m = ids == v
            if corrupt:
                m = np.roll(m, 6, axis=1)
            out.append({"mask": m, "label": THING_IDS[v // 1000], "score": 1.0})
    return out


def test_oracle_scores_one_and_corruption_scores_less(small_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = evaluate_model(None, small_root, "val", predictor=oracle)
    assert res["cityscapes"]["AP"] == 1.0 and res["cityscapes"]["AP50"] == 1.0
    assert res["coco"]["AP"] == pytest.approx(1.0) and res["coco"]["AP50"] == pytest.approx(1.0)
    assert all(res["coco"][f"AP_{k}"] in (None, pytest.approx(1.0)) for k in ("small", "medium", "large"))
    bad = evaluate_model(None, small_root, "val", predictor=lambda i, d: oracle(i, d, corrupt=True))
    assert bad["cityscapes"]["AP"] < 1.0 and bad["coco"]["AP"] < 1.0
    # by size: predicting only the objects of 32^2 px and more costs exactly the small ones
    big = evaluate_model(None, small_root, "val",
                         predictor=lambda i, d: [p for p in oracle(i, d) if p["mask"].sum() >= 32 ** 2])
    assert big["coco"]["AP_small"] == 0.0 and big["coco"]["AP_medium"] == pytest.approx(1.0)
    assert big["coco"]["AP"] < 1.0
    # a model that finds nothing: the same keys, 0 where the data has objects of that size (as COCOeval reads)
    none = evaluate_model(None, small_root, "val", predictor=lambda i, d: [])
    for k in ("coco", "agnostic"):
        assert none[k].keys() == res[k].keys()
        assert all(none[k][m] == (None if res[k][m] is None else 0.0) for m in res[k] if m.startswith("AP"))
    assert os.listdir(tmp_path) == []  # nothing (matches.json, gtInstances.json) left in the working dir


def test_numpy_shim_restores_in1d():
    shim = _NumpyShim()
    assert shim.in1d(np.array([[1, 2], [3, 4]]), [2, 4]).tolist() == [False, True, False, True]
    assert shim.arange is np.arange


def test_overfit_two_images_reaches_ap50(small_root, tmp_path):
    recs = list(discover(small_root, "val"))[:2]
    imgs = np.stack([read_image(storage.join(small_root, r.image)) for r in recs])
    ids = np.stack([read_ids(storage.join(small_root, r.labels)) for r in recs])
    images, targets = collate({"image": imgs, "ids": ids})
    torch.manual_seed(0)
    model = build_model("fastinst", tiny=True, num_points=2048)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    best = 0.0
    for step in range(1, 201):  # step cap
        train_step(model, opt, [(images, targets)])
        if step % 50 == 0:
            res = evaluate_model(model, small_root, "val", max_images=2)
            best = max(best, res["cityscapes"]["AP50"] or 0.0)
            if best >= 0.5:
                break
    assert best >= 0.5
    # the checkpoint round-trips through `instsynth evaluate`
    ck = str(tmp_path / "ck")
    save_checkpoint(ck, model, opt, step, {"name": "fastinst", "kwargs": {"tiny": True, "num_points": 2048}}, {})
    again, s = load_checkpoint(ck)
    assert s == step
    assert main(["evaluate", "--checkpoint", ck, "--data-root", small_root, "--max-images", "2"]) == 0
    res = json.load(open(os.path.join(ck, "eval_val.json")))
    assert res["cityscapes"]["AP50"] >= 0.5 and set(res["cityscapes"]["per_class"]) == set(THING_IDS.values())


def test_windows_tile_the_frame_and_predictions_are_pasted_back():
    """Issue 30's train/test extent check: predictions made on crop-sized windows land where the window was
    in the frame, and an image keeps at most WINDOW_KEEP of them (the whole image's budget)."""
    from instsynth.train.evaluate import WINDOW_KEEP, predict_windows, window_boxes

    assert window_boxes(384, 768, 192, 384) == [(0, 0, 192, 384), (0, 384, 192, 768), (192, 0, 384, 384),
                                                 (192, 384, 384, 768)]
    rows = window_boxes(400, 768, 192, 384)  # not a multiple: the last row sits on the bottom edge
    assert sorted({b[0] for b in rows}) == [0, 104, 208] and max(b[2] for b in rows) == 400
    assert window_boxes(100, 200, 192, 384) == [(0, 0, 100, 200)]  # a frame smaller than a window

    class Corner(torch.nn.Module):
        """Predicts one 8x8 instance in the top-left corner of whatever it sees, scored by its mean colour."""
        def __init__(self, n=1):
            super().__init__()
            self.n, self.p = n, torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            m = torch.zeros(self.n, *x.shape[-2:], dtype=torch.bool)
            m[:, :8, :8] = True
            s = 0.1 + x.float().mean() / 255  # predict_image keeps scores above 0
            return [{"masks": m, "labels": torch.zeros(self.n, dtype=torch.long), "scores": s + torch.arange(self.n)}]

    img = np.zeros((384, 768, 3), np.uint8)
    img[192:, 384:] = 200  # the bottom-right window is the brightest
    preds = predict_windows(Corner(), img, (384, 192))
    assert len(preds) == 4
    assert preds[0]["mask"][192:200, 384:392].all() and preds[0]["mask"].sum() == 64  # highest score first
    corners = sorted(tuple(np.argwhere(p["mask"])[0]) for p in preds)
    assert corners == [(0, 0), (0, 384), (192, 0), (192, 384)]
    half = predict_windows(Corner(), img, (384, 192), short_edge=192)  # at half scale: masks back at full size
    assert all(p["mask"].shape == (384, 768) and p["mask"].sum() == 256 for p in half)
    assert len(predict_windows(Corner(60), img, (384, 192))) == WINDOW_KEEP  # 240 predicted, 100 kept


def test_test_scale_caps_the_long_side():
    """``eval_max_size`` (the authors' ``MAX_SIZE_TEST``): the test-scale resize stops where the long side
    would pass the cap, with or without a short edge; masks come back at the native size for scoring."""
    from instsynth.train.evaluate import at_test_scale, predict_image

    img = np.zeros((100, 400, 3), np.uint8)
    assert at_test_scale(img, 200).shape[:2] == (200, 800)
    assert at_test_scale(img, 200, 600).shape[:2] == (150, 600)
    assert at_test_scale(img, None, 200).shape[:2] == (50, 200)  # native, capped
    assert at_test_scale(img, 100, 400) is img  # already at the test scale: no copy

    class Whole(torch.nn.Module):
        """One instance covering whatever it sees; records the input's size."""
        def __init__(self):
            super().__init__()
            self.p, self.seen = torch.nn.Parameter(torch.zeros(1)), []

        def forward(self, x):
            self.seen.append(tuple(x.shape[-2:]))
            return [{"masks": torch.ones(1, *x.shape[-2:], dtype=torch.bool), "labels": torch.zeros(1, dtype=torch.long),
                     "scores": torch.ones(1)}]

    model = Whole()
    preds = predict_image(model, img, short_edge=200, max_size=600)
    assert model.seen == [(150, 600)] and preds[0]["mask"].shape == (100, 400) and preds[0]["mask"].all()


def test_checkpoint_is_scored_at_its_recipes_test_scale(small_root, tmp_path, monkeypatch):
    """``evaluate_checkpoint`` (and ``instsynth evaluate``) takes the short edge and the long-side cap the
    checkpoint was trained for; ``--max-size 0`` lifts the cap."""
    from instsynth.train import evaluate

    ckpt = str(tmp_path / "ck")
    model = build_model("fastinst", tiny=True)
    spec = {"name": "fastinst", "kwargs": {"tiny": True}, "recipe": {"eval_short_edge": 128, "eval_max_size": 200}}
    save_checkpoint(ckpt, model, torch.optim.AdamW(model.parameters()), 1, spec, {})
    seen, real = [], evaluate.at_test_scale
    monkeypatch.setattr(evaluate, "at_test_scale", lambda *a: seen.append(real(*a).shape[:2]) or real(*a))
    res = evaluate.evaluate_checkpoint(ckpt, small_root, max_images=2)
    assert seen == [(100, 200)] * 2 and res["test_scale"] == "short edge 128 px, long side <= 200 px"
    seen.clear()
    assert main(["evaluate", "--checkpoint", ckpt, "--data-root", small_root, "--max-images", "1",
                 "--max-size", "0"]) == 0
    assert seen == [(128, 256)] and json.load(open(os.path.join(ckpt, "eval_val.json")))["test_scale"] == "short edge 128 px"


def test_masks_served_from_memory_score_as_the_official_png_files(small_root, monkeypatch):
    """The scorer hands the official evaluator its predicted masks from memory (RLEs); scoring the same
    predictions written as PNG files and read back by the evaluator (the official route) gives the same
    numbers, class-wise too."""
    from instsynth.train import cs_eval, evaluate
    from tests.conftest import load_script

    def pred(img, ids):
        boxes = []
        for k in range(12):
            m = np.zeros(ids.shape, bool)
            m[5 * k:5 * k + 40, 9 * k:9 * k + 60] = True
            boxes.append({"mask": m, "label": k % 8, "score": 0.05 * k})
        return oracle(img, ids, corrupt=True) + boxes
    memory = evaluate_model(None, small_root, "val", predictor=pred)
    monkeypatch.setattr(evaluate, "CityscapesScorer", load_script("bench_eval")._before(cs_eval))
    files = evaluate_model(None, small_root, "val", predictor=pred)
    assert 0.0 < memory["cityscapes"]["AP"] < 1.0
    assert memory["cityscapes"] == files["cityscapes"] and memory["coco"] == files["coco"]
