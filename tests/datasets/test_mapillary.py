"""Mapillary Vistas v2.0 as one format module, and LVIS v1's COCO variant (``coco_url``, no ``iscrowd``)."""

import json
import os

import numpy as np
import pyarrow.parquet as pq

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.datasets import detect, open_dataset, resolve
from instsynth.datasets.coco import CocoDataset
from instsynth.datasets.sample import MAPILLARY_LABELS, write_sample
from instsynth.output.ledger import committed_parts
from instsynth.plan.planner import make_plan

DEBUG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "configs", "debug.yaml")


def test_mapillary_through_synth_and_coco_export(tmp_path, sample_root, capsys):
    root = str(tmp_path / "vistas")
    write_sample(root, images=8, size=(512, 256), seed=0, format="mapillary")
    assert detect(root) == "mapillary"
    ds = open_dataset(resolve(root))
    space = ds.label_space
    assert space.selectable == [n for n, cs in MAPILLARY_LABELS if cs in (
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "caravan", "trailer")]
    train, val = list(ds.discover("train")), list(ds.discover("val"))
    assert len(train) == 6 and len(val) == 2 and train[0].image.startswith("training/images/")
    _, labels = ds.load(train[0])
    assert labels.regions and all(r["source_id"] // 256 == r["class_id"] for r in labels.regions)
    assert "unlabeled" not in {r["class_name"] for r in labels.regions}
    table, fails, summary = make_plan(root, load_config(DEBUG, ["plan.min_pixels=64", "plan.split=val"]))
    assert table.num_rows > 0 and set(table.column("split").to_pylist()) == {"val"}
    os.remove(os.path.join(root, "training", "images", train[1].image_id + ".jpg"))  # a map without its image
    out = str(tmp_path / "out")
    assert main(["synth", root, "--out", out, "--config", DEBUG, "--generator", "recolor", "--set",
                 "run.executor=local", "--set", "plan.min_pixels=64", "--set", "dataset.format=mapillary"]) == 0
    fails = pq.read_table(os.path.join(out, "plan.failures.parquet")).to_pylist()
    assert [f["image_id"] for f in fails] == [train[1].image_id] and "without its image" in fails[0]["reason"]
    rows = [r for p in committed_parts(out) for r in pq.read_table(p).to_pylist()]
    assert rows and {r["dataset"] for r in rows} == {"mapillary"} and all("--" in r["class_name"] for r in rows)
    assert all(r["prompt"].startswith("A photo of") for r in rows)
    exp = str(tmp_path / "exp")
    assert main(["export", out, "--format", "coco", "--out", exp]) == 0
    coco = json.load(open(os.path.join(exp, "instances.json")))
    assert {c["name"] for c in coco["categories"]} == set(space.evaluated)
    assert {a["category_id"] for a in coco["annotations"]} <= {space.by_name[n].id for n in space.evaluated}
    capsys.readouterr()


def test_lvis_coco_url_and_no_iscrowd(tmp_path):
    import cv2

    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    cv2.imwrite(str(root / "val2017" / "000000000139.jpg"), np.full((40, 60, 3), 90, np.uint8))
    lvis = {"images": [{"id": 139, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
                        "width": 60, "height": 40, "not_exhaustive_category_ids": [], "neg_category_ids": []}],
            "annotations": [{"id": 1, "image_id": 139, "category_id": 1203, "area": 300.0, "bbox": [0, 0, 30, 10],
                             "segmentation": [[0, 0, 30, 0, 30, 10, 0, 10]]}],
            "categories": [{"id": 1203, "name": "zucchini", "synonyms": ["zucchini"], "def": "a squash",
                            "frequency": "c"}]}
    src = tmp_path / "lvis_v1_val.json"
    src.write_text(json.dumps(lvis))
    ds = CocoDataset(resolve(str(src), "auto", str(root)))
    ref = next(iter(ds.discover("val")))
    assert ref.image == "val2017/000000000139.jpg"
    image, labels = ds.load(ref)
    assert labels.regions[0]["class_name"] == "zucchini" and not labels.regions[0]["crowd"]
    assert (labels.index == 1).sum() == 300 and image.shape == (40, 60, 3)
