import numpy as np
import pytest

from instsynth.datasets import DatasetSpec, decode_index, encode_index, open_dataset
from instsynth.datasets.base import check_size
from instsynth.datasets.cityscapes import (
    THING_CLASSES,
    DataError,
    discover,
    instance_ids,
    read_ids,
    read_image,
    regions_from_ids,
)
from instsynth.io import storage


def test_thing_classes_come_from_cityscapesscripts():
    assert THING_CLASSES == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_discover_and_decode_sample(sample_root):
    train = list(discover(sample_root, "train"))
    val = list(discover(sample_root, "val"))
    assert len(train) + len(val) == 8 and len(val) >= 1
    for rec in train:
        img = read_image(storage.join(sample_root, rec.image))
        ids = read_ids(storage.join(sample_root, rec.labels))
        assert img.dtype == np.uint8 and img.shape == (256, 512, 3)
        assert ids.shape == (256, 512)
        assert rec.image_id.startswith(rec.group + "_")


def test_16bit_maps_roundtrip_losslessly(tmp_path):
    ids = np.zeros((20, 30), np.int32)
    ids[:, :10] = 26001  # car instance
    ids[:, 10:20] = 33999
    ids[:5, 20:] = 26  # car group (bare class id)
    ids[5:, 20:] = 7  # road
    p = str(tmp_path / "x_instanceIds.png")
    storage.write_bytes(p, encode_index(ids))
    back = read_ids(p)
    assert back.dtype == np.uint16 and np.array_equal(back, ids)
    assert decode_index(encode_index(ids), "x").max() == 33999


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.png: cannot read"):
        read_ids(str(tmp_path / "nope.png"))


def test_truncated_file_names_it(tmp_path, sample_root):
    rec = next(discover(sample_root, "train"))
    data = storage.read_bytes(storage.join(sample_root, rec.image))
    p = str(tmp_path / "trunc.png")
    storage.write_bytes(p, data[: len(data) // 3])
    with pytest.raises(DataError, match="trunc.png"):
        read_image(p)


def test_size_mismatch_message():
    with pytest.raises(DataError, match="a.png: size 4x3 does not match b.png 5x3"):
        check_size(np.zeros((3, 4, 3)), np.zeros((3, 5)), "a.png", "b.png")


def test_discover_on_non_root(tmp_path):
    with pytest.raises(DataError, match="leftImg8bit/train"):
        list(discover(str(tmp_path), "train"))


def test_instance_map_as_regions_and_back():
    """Every distinct value is one region (its value the source id); instances are things that are not
    group regions; the index map gives the instanceIds map back exactly."""
    ids = np.zeros((20, 30), np.uint16)
    ids[:, :10] = 26001
    ids[:, 10:20] = 29000  # caravan instance: a thing, never selectable
    ids[:5, 20:] = 26  # car group
    ids[5:, 20:] = 7  # road
    lab = regions_from_ids(ids)
    by_src = {r["source_id"]: r for r in lab.regions}
    assert by_src[26001] == {"index": by_src[26001]["index"], "source_id": 26001, "class_id": 26, "class_name": "car",
                             "thing": True, "crowd": False}
    assert by_src[26]["crowd"] and by_src[26]["thing"] and not by_src[7]["thing"] and not by_src[7]["crowd"]
    assert by_src[29000]["class_name"] == "caravan" and by_src[29000]["thing"]
    assert np.array_equal(instance_ids(lab), ids)
    assert lab.instances().tolist() == [False] + [r["thing"] and not r["crowd"] for r in lab.regions]


def test_label_space_and_dataset(sample_root):
    ds = open_dataset(DatasetSpec("cityscapes", sample_root))
    space = ds.label_space
    assert space.selectable == THING_CLASSES and space.evaluated == THING_CLASSES
    assert space.by_name["caravan"].thing and not space.by_name["caravan"].selectable
    ref = next(iter(ds.discover("train")))
    image, labels = ds.load(ref)
    assert image.shape[:2] == labels.index.shape and labels.regions
    with pytest.raises(DataError, match="not selectable classes of cityscapes; valid: .*'person'"):
        space.check_classes(["caravan"], "plan.classes")
