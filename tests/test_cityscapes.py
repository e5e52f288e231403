import numpy as np
import pytest

from instsynth import storage
from instsynth.datasets.cityscapes import (
    THING_CLASSES,
    DataError,
    check_same_size,
    decode_ids,
    discover,
    encode_ids,
    read_ids,
    read_image,
)


def test_thing_classes_come_from_cityscapesscripts():
    assert THING_CLASSES == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_discover_and_decode_sample(sample_root):
    train = list(discover(sample_root, "train"))
    val = list(discover(sample_root, "val"))
    assert len(train) + len(val) == 8 and len(val) >= 1
    for rec in train:
        img = read_image(storage.join(sample_root, rec.image))
        ids = read_ids(storage.join(sample_root, rec.instance_ids))
        assert img.dtype == np.uint8 and img.shape == (256, 512, 3)
        assert ids.shape == (256, 512)
        assert rec.image_id.startswith(rec.city + "_")


def test_16bit_maps_roundtrip_losslessly(tmp_path):
    ids = np.zeros((20, 30), np.int32)
    ids[:, :10] = 26001  # car instance
    ids[:, 10:20] = 33999
    ids[:5, 20:] = 26  # car group (bare class id)
    ids[5:, 20:] = 7  # road
    p = str(tmp_path / "x_instanceIds.png")
    storage.write_bytes(p, encode_ids(ids))
    back = read_ids(p)
    assert back.dtype == np.uint16 and np.array_equal(back, ids)
    assert decode_ids(encode_ids(ids), "x").max() == 33999


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
        check_same_size(np.zeros((3, 4, 3)), np.zeros((3, 5)), "a.png", "b.png")


def test_discover_on_non_root(tmp_path):
    with pytest.raises(DataError, match="leftImg8bit/train"):
        list(discover(str(tmp_path), "train"))
