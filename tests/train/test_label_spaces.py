"""Training on any label space: a COCO-sourced output trains every family with its own class count,
is scored with COCO mask AP by pycocotools against a COCO JSON (train, evaluate, report), and
outputs of different label spaces are never mixed in one run."""

import json
import os

import numpy as np
import pytest

from instsynth.cli import main
from instsynth.config import ConfigError, load_config
from instsynth.datasets.sample import COCO_IDS
from instsynth.synth.driver import run_synth
from instsynth.synth.originals import write_originals

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")
DEBUG = os.path.join(CONFIGS, "debug.yaml")
COCO_CLASSES = [n for n, _ in sorted(COCO_IDS.items(), key=lambda x: x[1])]


@pytest.fixture(scope="module")
def coco_out(coco_root, tmp_path_factory):
    """Originals and recolor rows of the COCO-format sample (the train JSON)."""
    top = tmp_path_factory.mktemp("coco-out")
    src = os.path.join(coco_root, "annotations", "instances_train.json")
    write_originals(src, str(top / "original"), load_config(DEBUG), log=lambda *a: None)
    run_synth(src, str(top / "recolor"), load_config(DEBUG, ["generator.name=recolor", "run.executor=local",
                                                             "run.progress=false", "plan.min_pixels=64"]),
              log=lambda *a: None)
    return top


def _train_sets(coco_out, coco_root, name="coco-fastinst", iterations=2):
    val = os.path.join(coco_root, "annotations", "instances_val.json")
    return [f"train.dirs=[{coco_out / 'original'}, {coco_out / 'recolor'}]", f"train.eval_root={val}",
            f"train.iterations={iterations}", "train.eval_every=2", "train.checkpoint_every=2", "train.num_workers=1",
            "train.cpus_per_worker=1", f"train.storage_path={coco_out / 'runs'}", f"train.name={name}"]


def test_catalog_classes_and_mixing_refused(coco_out, sample_root, tmp_path):
    from instsynth.train.data import build_catalog

    cat = build_catalog([str(coco_out / "original"), str(coco_out / "recolor")])
    assert cat.classes == COCO_CLASSES and cat.class_ids[91] == COCO_CLASSES.index("rider")
    cs = str(tmp_path / "cs-orig")
    write_originals(sample_root, cs, load_config(DEBUG), log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"train.dirs: .*original \(instances_train.json\) and .*cs-orig "
                                          r"\(cityscapes\) have different label spaces"):
        build_catalog([str(coco_out / "original"), cs])


@pytest.mark.parametrize("name", ["maskrcnn", "mask2former", "oneformer"])
def test_every_family_sizes_its_head_from_the_label_space(coco_out, name):
    """One training step on COCO-sourced batches with the 11 classes, then inference: labels stay in range."""
    import torch

    from instsynth.train.data import SampleLoader, build_catalog
    from instsynth.train.models import build_model

    cfg = load_config(os.path.join(CONFIGS, "train", f"{name}.tiny.yaml"), ["train.num_workers=1"]).train
    cat = build_catalog([str(coco_out / "original"), str(coco_out / "recolor")], seed=0)
    kwargs = {"tiny": True, "classes": cat.classes}
    if name == "maskrcnn":
        kwargs["backbone"] = "mobilenet_v2"
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    images, targets = next(iter(SampleLoader(cat, cfg, 0, 1, threads=1)))
    assert max(int(t["labels"].max()) for t in targets if len(t["labels"])) < len(COCO_CLASSES)
    model.train()
    loss = model(images, targets)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        out = model(images[:1])
    assert all(int(lab) < len(COCO_CLASSES) for lab in out[0]["labels"])


def test_training_validates_and_evaluate_scores_on_coco(ray_local, coco_out, coco_root, tmp_path, capsys):
    """A Ray Train run on COCO-sourced dirs validates in its worker with COCO mask AP; `evaluate` of its final
    checkpoint knows the model's classes from the checkpoint; the Table II rows an experiment report prints
    name the metric.  (The experiment loop itself is dataset-blind: tests/train/test_launch.py runs it.)"""
    from instsynth.train.evaluate import format_table
    from instsynth.train.trainer import run_training

    cfg = load_config(os.path.join(CONFIGS, "train", "fastinst.tiny.yaml"),
                      _train_sets(coco_out, coco_root, "coco-run") + ["train.eval_max_images=2"])
    result = run_training(cfg, log=lambda *a: None)
    assert result.error is None and result.metrics["step"] == 2
    assert 0.0 <= result.metrics["AP50"] <= 1.0  # validated in the worker against the COCO JSON
    ckpt = result.checkpoint.path
    meta = json.load(open(os.path.join(ckpt, "model.json")))
    assert meta["kwargs"]["classes"] == COCO_CLASSES
    val = os.path.join(coco_root, "annotations", "instances_val.json")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ckpt, "--data-root", val]) == 0
    text = capsys.readouterr().out
    assert "COCO mask AP by pycocotools" in text and "rider" in text
    res = json.load(open(os.path.join(ckpt, "eval_coco.json")))
    assert res["scores"]["metric"] == "coco" and 0.0 <= res["scores"]["AP50"] <= 1.0 and res["images"] == 2
    assert "COCO mask AP" in format_table({"fastinst (original)": res, "fastinst (+ recolor)": res})


def test_coco_oracle_scores_one(coco_root):
    """The evaluator itself: ground-truth masks as predictions score AP50 = 1 (pycocotools against the JSON)."""
    from instsynth.train.evaluate import evaluate_model

    def oracle(image, labels):
        return [{"mask": labels.index == r["index"], "label": COCO_CLASSES.index(r["class_name"]), "score": 1.0}
                for r in labels.regions if r["thing"] and not r["crowd"] and (labels.index == r["index"]).any()]
    val = os.path.join(coco_root, "annotations", "instances_val.json")
    res = evaluate_model(None, val, predictor=oracle, classes=COCO_CLASSES)
    assert res["scores"]["AP50"] > 0.99 and res["images"] == 2
    assert np.isclose(res["scores"]["per_class"]["car"]["ap50"], 1.0)
    assert res["scores"]["AP_medium"] is None or np.isclose(res["scores"]["AP_medium"], 1.0, atol=0.01)
    none = evaluate_model(None, val, predictor=lambda i, d: [], classes=COCO_CLASSES)["scores"]
    assert none.keys() == res["scores"].keys()
    assert all(none[m] == (None if res["scores"][m] is None else 0.0) for m in none if m.startswith("AP"))
