import json
import os

import numpy as np

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.datasets.cityscapes import discover, gt_paths, read_ids, read_label_ids
from instsynth.datasets.sample import maps_from_polygons
from instsynth.io import storage
from instsynth.synth.driver import run_synth
from tests.conftest import REPO_ROOT

DEBUG = os.path.join(REPO_ROOT, "configs", "debug.yaml")


def _out(sample_root, tmp_path):
    out = str(tmp_path / "synth")
    run_synth(sample_root, out, load_config(DEBUG, ["run.executor=local", "run.progress=false"]), log=lambda *a: None)
    return out


def test_cityscapes_export_roundtrips_through_official_converter(sample_root, tmp_path):
    out = _out(sample_root, tmp_path)
    exp = str(tmp_path / "exp")
    assert main(["export", out, "--format", "cityscapes", "--out", exp]) == 0
    recs = list(discover(exp, "train"))
    assert len(recs) > 0
    for rec in recs:
        assert rec.image_id.count("_") == 2  # {city}_{seq:06d}_{frame:06d}
        paths = gt_paths(rec.split, rec.group, rec.image_id)
        ids = read_ids(storage.join(exp, rec.labels))
        poly = json.loads(storage.read_bytes(storage.join(exp, paths["polygons"])))
        redrawn, labels, _ = maps_from_polygons(poly)  # cityscapesscripts' json2instanceImg/json2labelImg
        agree = (redrawn.astype(np.int32) == ids).mean()
        assert agree >= 0.99, (rec.image_id, agree)
        assert (labels == read_label_ids(storage.join(exp, paths["label_ids"]))).mean() >= 0.99
    index = storage.read_bytes(storage.join(exp, "export_index.csv")).decode().splitlines()
    assert len(index) == len(recs) + 1


def test_coco_export_loads_in_pycocotools(sample_root, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = _out(sample_root, tmp_path)
    exp = str(tmp_path / "coco")
    assert main(["export", out, "--format", "coco", "--out", exp]) == 0
    coco = COCO(os.path.join(exp, "instances.json"))
    assert len(coco.getImgIds()) > 0 and len(coco.getAnnIds()) > 0
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}
    ann = coco.loadAnns(coco.getAnnIds(iscrowd=False))[0]
    m = coco.annToMask(ann)
    assert m.sum() == ann["area"] and mask_utils.area(ann["segmentation"]) == ann["area"]
    img = coco.loadImgs(ann["image_id"])[0]
    assert os.path.exists(os.path.join(exp, img["file_name"])) and m.shape == (img["height"], img["width"])
