import json

import numpy as np

from instsynth.datasets.cityscapes import THING_CLASSES, discover, gt_paths, read_ids, read_label_ids
from instsynth.datasets.sample import maps_from_polygons, write_sample
from instsynth.io import storage


def test_label_pngs_equal_official_converter(sample_root):
    for split in ("train", "val"):
        for rec in discover(sample_root, split):
            paths = gt_paths(rec.split, rec.group, rec.image_id)
            poly = json.loads(storage.read_bytes(storage.join(sample_root, paths["polygons"])))
            inst, lab, _ = maps_from_polygons(poly)  # cityscapesscripts' createInstanceImage/createLabelImage
            assert np.array_equal(read_ids(storage.join(sample_root, rec.labels)), inst)
            assert np.array_equal(read_label_ids(storage.join(sample_root, paths["label_ids"])), lab)


def test_sample_has_what_the_tests_need(sample_root):
    classes, groups, empty, border, tiny, ignored = set(), set(), 0, False, False, set()
    recs = list(discover(sample_root, "train")) + list(discover(sample_root, "val"))
    for rec in recs:
        ids = read_ids(storage.join(sample_root, rec.labels))
        inst = ids[ids >= 1000]
        if inst.size == 0:
            empty += 1
            continue
        cls = set((np.unique(inst) // 1000).tolist())
        classes |= {c for c in cls}
        ignored |= cls & {29, 30}
        groups |= set(np.unique(ids[(ids >= 24) & (ids <= 33)]).tolist())
        border |= bool((ids[:, 0] >= 1000).any() or (ids[:, -1] >= 1000).any())
        counts = np.bincount(inst.ravel())
        tiny |= bool(((counts > 0) & (counts < 64)).any())
    assert {24, 25, 26, 27, 28, 31, 32, 33} <= classes, classes  # all eight evaluated classes
    assert ignored, "caravan/trailer instances present"
    assert groups, "group regions (bare class ids) present"
    assert empty == 1 and border and tiny
    assert len(THING_CLASSES) == 8


def test_sample_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_sample(a, images=2, size=(256, 128), seed=3)
    write_sample(b, images=2, size=(256, 128), seed=3)
    p = gt_paths("train", "aachen", "aachen_000000_000019")
    for k in ("image", "instance_ids", "polygons"):
        assert storage.read_bytes(storage.join(a, p[k])) == storage.read_bytes(storage.join(b, p[k]))
