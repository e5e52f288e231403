"""COCO instances JSON through the dataset seam: the encodings real files hold, bad records recorded and
the plan going on, and the whole job (plan, synth, status, report, export round trip, load_dataset)."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.datasets import DataError, DatasetSpec, ImageRef, open_dataset, resolve
from instsynth.datasets.coco import CocoDataset, rasterize
from instsynth.datasets.sample import COCO_IDS
from instsynth.output.ledger import committed_parts
from instsynth.plan.planner import make_plan

DEBUG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "configs", "debug.yaml")


def _json(coco_root, split="train"):
    return os.path.join(coco_root, "annotations", f"instances_{split}.json")


def test_sample_holds_what_real_files_hold(coco_root):
    data = json.load(open(_json(coco_root)))
    kinds = {("poly" if isinstance(a["segmentation"], list) else
              "rle-list" if isinstance(a["segmentation"]["counts"], list) else "rle-str") for a in data["annotations"]}
    assert kinds == {"poly", "rle-list", "rle-str"}
    assert any(a["iscrowd"] for a in data["annotations"])
    assert any(isinstance(a["segmentation"], list) and len(a["segmentation"]) > 1 for a in data["annotations"])
    assert max(a["id"] for a in data["annotations"]) > 2**32  # 64-bit ids
    used = {a["category_id"] for a in data["annotations"]}
    cats = {c["id"] for c in data["categories"]}
    assert max(used) > 65 and cats - used and cats == set(COCO_IDS.values())
    assert all(im["file_name"].endswith(".jpg") for im in data["images"])


def test_reader_matches_the_cityscapes_scene(coco_root, sample_root):
    """The COCO sample's instance masks are the Cityscapes sample's instances (up to polygon rounding)."""
    from instsynth.datasets.cityscapes import discover, read_ids

    ds = open_dataset(resolve(_json(coco_root)))
    assert ds.spec.image_root == os.path.join(coco_root, "train")
    refs = list(ds.discover("train"))
    cs = list(discover(sample_root, "train"))
    assert len(refs) == len(cs)
    ref, rec = refs[0], cs[0]
    image, labels = ds.load(ref)
    ids = read_ids(os.path.join(sample_root, rec.labels))
    assert image.shape[:2] == ids.shape == labels.index.shape
    things = [r for r in labels.regions if r["thing"] and not r["crowd"]]
    for r in things:
        mask = labels.index == r["index"]
        if mask.sum() < 200:
            continue
        values, counts = np.unique(ids[mask], return_counts=True)
        assert counts.max() / mask.sum() > 0.9  # one Cityscapes instance under each COCO mask
    assert ds.label_space.selectable == [n for n, _ in sorted(COCO_IDS.items(), key=lambda x: x[1])]


def _write(tmp_path, data, images=(("a.png", 40, 60),)):
    import cv2

    root = tmp_path / "d"
    (root / "annotations").mkdir(parents=True)
    (root / "set").mkdir()
    for name, h, w in images:
        cv2.imwrite(str(root / "set" / name), np.full((h, w, 3), 128, np.uint8))
    p = root / "annotations" / "instances_set.json"
    p.write_text(json.dumps(data))
    return str(p)


CATS = [{"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}, {"id": 1203, "name": "zebra"}]


def test_overlaps_painted_largest_first_and_border_clipped(tmp_path):
    big = [[0, 0, 50, 0, 50, 30, 0, 30]]
    small = [[10, 10, 20, 10, 20, 20, 10, 20]]
    past = [[40, 20, 90, 20, 90, 70, 40, 70]]  # reaches past the 60x40 border: clipped
    data = {"images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40}], "categories": CATS,
            "annotations": [{"id": 2**40 + 1, "image_id": 7, "category_id": 1203, "segmentation": small, "iscrowd": 0},
                            {"id": 5, "image_id": 7, "category_id": 3, "segmentation": big, "iscrowd": 0},
                            {"id": 6, "image_id": 7, "category_id": 90, "segmentation": past, "iscrowd": 1}]}
    ds = CocoDataset(resolve(_write(tmp_path, data)))
    ref = next(iter(ds.discover("x")))
    assert (ref.image_id, ref.split, ref.width, ref.height) == ("7", "set", 60, 40)
    image, labels = ds.load(ref)
    by_src = {r["source_id"]: r for r in labels.regions}
    assert labels.index[15, 15] == by_src[2**40 + 1]["index"]  # the small one on top of the big one
    assert labels.index[5, 5] == by_src[5]["index"]
    assert by_src[6]["crowd"] and by_src[6]["class_id"] == 90 and by_src[2**40 + 1]["class_name"] == "zebra"
    assert (labels.index == by_src[6]["index"]).sum() > 0 and labels.index.shape == (40, 60)
    rle = rasterize({"size": [40, 60], "counts": [0, 10, 2390]}, 40, 60)  # uncompressed: column-major
    assert rle.sum() == 10 and rle[:10, 0].all()


def test_bad_records_recorded_and_the_plan_goes_on(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                       {"id": 2, "file_name": "gone.png", "width": 60, "height": 40},
                       {"id": 3, "file_name": "b.png", "width": 60, "height": 40}],
            "categories": CATS,
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 50, 0, 50, 30, 0, 30]]},
                {"id": 11, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 5, 5]]},  # 2 points
                {"id": 12, "image_id": 1, "category_id": 77, "segmentation": [[0, 0, 5, 0, 5, 5]]},
                {"id": 13, "image_id": 1, "category_id": 3, "segmentation": {"size": [10, 10], "counts": "ab"}},
                {"id": 14, "image_id": 2, "category_id": 3, "segmentation": [[0, 0, 50, 0, 50, 30, 0, 30]]}]}
    src = _write(tmp_path, data, images=(("a.png", 40, 60), ("b.png", 40, 60)))
    cfg = load_config(DEBUG, ["plan.min_pixels=10"])
    table, fails, summary = make_plan(src, cfg)
    reasons = {f["reason"].split(":")[0]: f for f in fails.to_pylist()}
    assert "polygon with fewer than 3 points" in reasons["annotation 11"]["reason"]
    assert "unknown category_id 77" in reasons["annotation 12"]["reason"]
    assert "RLE size [10, 10] disagrees with its image entry" in reasons["annotation 13"]["reason"]
    assert reasons["image 2"]["image_id"] == "2" and "gone.png is missing" in reasons["image 2"]["reason"]
    assert summary["failures"] == 4 and summary["images"] == 2 and summary["images_without_instances"] == 1
    assert table.column("work_id").to_pylist() == ["1_10_v0"] and table.column("class_id").to_pylist() == [3]


def test_bad_files_fail_in_one_line(tmp_path, capsys):
    src = _write(tmp_path, {"images": [], "categories": []})
    assert main(["plan", src, "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instances_set.json: not a COCO instances file (no 'annotations' list)" in err
    other = tmp_path / "x.json"
    other.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert main(["plan", str(other), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "pass --image-root DIR (dataset.image_root)" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()
    with pytest.raises(DataError, match="dataset.format: 'voc' is not a format"):
        resolve(str(other), "voc")


def test_image_pixels_disagreeing_with_the_entry_fail_at_run_time(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}], "categories": CATS,
            "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 50, 0, 50, 30, 0, 30]]}]}
    src = _write(tmp_path, data, images=(("a.png", 41, 60),))
    ds = CocoDataset(DatasetSpec("coco", src, os.path.join(os.path.dirname(os.path.dirname(src)), "set")))
    with pytest.raises(DataError, match=r"a.png: size 60x41 does not match its entry in instances_set.json \(image 1\)"):
        ds.load(ImageRef("1", "set", "", "a.png", "", 60, 40))


def test_coco_end_to_end(coco_root, tmp_path, capsys):
    """plan -> synth -> status --verify -> report -> export --format coco round trip -> load_dataset;
    category ids above 65 survive every step."""
    import datasets

    out = str(tmp_path / "out")
    sets = ["--set", "run.executor=local", "--set", "run.progress=false", "--set", "plan.min_pixels=64",
            "--set", "plan.top_k=8"]
    assert main(["synth", _json(coco_root), "--out", out, "--config", DEBUG, "--generator", "recolor"] + sets) == 0
    rows = [r for p in committed_parts(out) for r in pq.read_table(p).to_pylist()]
    assert rows and {r["dataset"] for r in rows} == {"coco"} and {r["split"] for r in rows} == {"train"}
    assert {r["class_id"] for r in rows} >= {91} and all(r["class_id"] == COCO_IDS[r["class_name"]] for r in rows)
    assert all(r["instance_id"] > 2**32 and r["regions"][r["instance_index"] - 1]["source_id"] == r["instance_id"]
               for r in rows)
    assert all(not g["crowd"] or g["thing"] for r in rows for g in r["regions"])
    assert main(["status", out, "--verify"]) == 0
    assert "0 bad rows" in capsys.readouterr().out
    assert main(["report", out]) == 0
    js = open(os.path.join(out, "report", "samples-d0.js")).read()
    assert js.count('"w":') == len(rows) and js.count('"b":"thumbs/') == len(rows)  # every sample, with before
    assert main(["stats", out]) == 0
    assert "rider" in capsys.readouterr().out
    exp = str(tmp_path / "exp")
    assert main(["export", out, "--format", "coco", "--out", exp]) == 0
    back = CocoDataset(DatasetSpec("coco", os.path.join(exp, "instances.json"), exp))
    assert {c.id: c.name for c in back.label_space.classes} == {v: k for k, v in COCO_IDS.items()}
    by_work = {r["work_id"]: r for r in rows}
    for ref in back.discover("x"):
        work_id = back.images[int(ref.image_id)]["file_name"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        row = by_work[work_id]
        got = sorted((cid, int(crowd)) for _, cid, crowd, _ in back.anns[int(ref.image_id)])
        want = sorted((g["class_id"], int(g["crowd"])) for g in row["regions"] if g["thing"])
        assert got == want
        _, labels = back.load(ref)
        inst = [g for g in labels.regions if g["class_id"] == row["class_id"] and not g["crowd"]]
        assert inst
    ds = datasets.load_dataset(out, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(rows) and ds.features["class_label"].names[ds[0]["class_label"]] == ds[0]["class_name"]
    assert np.asarray(ds[0]["labels"]).dtype == np.uint16
    card = open(os.path.join(out, "README.md")).read()
    assert "Row format 2" in card and "91 rider" in card and "| `regions` |" in card
    # a Cityscapes export of COCO-sourced rows is refused in one line, writing nothing
    assert main(["export", out, "--format", "cityscapes", "--out", str(tmp_path / "cs")]) == 2
    assert "use --format coco" in capsys.readouterr().err and not os.path.exists(tmp_path / "cs")


def test_originals_of_a_coco_dataset(coco_root, tmp_path):
    out = str(tmp_path / "orig")
    assert main(["originals", _json(coco_root), "--out", out, "--config", DEBUG]) == 0
    rows = [r for p in committed_parts(out) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 6 and all(r["image"][:3] == b"\xff\xd8\xff" for r in rows)  # the JPEG as it is
    assert all(r["class_label"] == -1 and r["generator"] == "original" for r in rows)
    shutil.rmtree(out)


def test_rle_selection_equals_painting_the_index_map(coco_root):
    """The plan's RLE-only Eq. 1 gives exactly the instances (ids, pixels, boxes) of painting the map."""
    from instsynth.datasets.base import Dataset

    for split in ("train", "val"):
        ds = open_dataset(resolve(_json(coco_root, split)))
        for ref in ds.discover(split):
            fast = ds.select(ref, 8, 1, None)
            slow = Dataset.select(ds, ref, 8, 1, None)
            assert fast == slow


def test_prepare_tasks_read_their_images_rows_not_the_file(coco_root, tmp_path):
    """The plan writes each planned image's annotations to plan.labels.parquet; a run reads its images'
    rows there and never opens the annotation file (here: moved away during the run)."""
    import shutil

    src = _json(coco_root)
    plan = str(tmp_path / "plan.parquet")
    assert main(["plan", src, "--out", plan, "--config", DEBUG, "--set", "plan.min_pixels=64"]) == 0
    lab = pq.ParquetFile(str(tmp_path / "plan.labels.parquet"))
    rows = pq.read_table(plan).to_pylist()
    assert lab.metadata.num_rows == len({r["image_id"] for r in rows})
    assert all(lab.read().column("image_id")[int(r["label_path"])].as_py() == r["image_id"] for r in rows)
    hidden = str(tmp_path / "hidden.json")
    shutil.move(src, hidden)
    try:
        out = str(tmp_path / "out")
        assert main(["synth", plan, "--out", out, "--config", DEBUG, "--generator", "recolor",
                     "--set", "run.executor=local", "--set", "run.progress=false"]) == 0
    finally:
        shutil.move(hidden, src)
    got = [r for p in committed_parts(out) for r in pq.read_table(p).to_pylist()]
    assert len(got) == len(rows) and os.path.exists(os.path.join(out, "plan.labels.parquet"))
    # the label file gives exactly the labels the annotation file gives
    from instsynth.synth.stages import image_ref

    whole = open_dataset(resolve(src))
    rows_file = open_dataset(DatasetSpec("coco", whole.spec.source, whole.spec.image_root,
                                         str(tmp_path / "plan.labels.parquet")))
    assert type(rows_file).__name__ == "CocoLabelFile"
    for r in rows:
        a, b = whole.load_labels(image_ref(r)), rows_file.load_labels(image_ref(r))
        assert np.array_equal(a.index, b.index) and a.regions == b.regions
