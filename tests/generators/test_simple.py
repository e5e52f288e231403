import cv2
import numpy as np
import pytest

from instsynth.config import GeneratorConfig
from instsynth.datasets.cityscapes import THING_CLASSES, discover, read_ids, read_image, regions_from_ids
from instsynth.generators import GeneratorError, build_generator
from instsynth.generators.simple import COLOURS
from instsynth.io import storage
from instsynth.plan.select import prepare_instance, select_instances, square_box


def _lab(rgb):
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _instances(sample_root):
    for rec in discover(sample_root, "train"):
        img = read_image(storage.join(sample_root, rec.image))
        labels = regions_from_ids(read_ids(storage.join(sample_root, rec.labels)))
        ids = labels.index
        for inst in select_instances(labels, 3, 200, THING_CLASSES):
            box = square_box(inst.bbox, ids.shape[1], ids.shape[0])
            yield prepare_instance(img, ids, inst.index, box)


@pytest.mark.parametrize("colour", ["red", "blue", "yellow", "white", "black", "green"])
def test_recolor_follows_prompt_keeps_texture_and_outside(sample_root, colour):
    gen = build_generator(GeneratorConfig(name="recolor"))
    tgt = _lab(np.array([[COLOURS[colour]]], np.uint8))[0, 0]
    checked = 0
    for crop, mask in _instances(sample_root):
        before = np.linalg.norm(_lab(crop)[mask] - tgt, axis=1).mean()
        if before < 15:  # already that colour: nothing to measure
            continue
        out = gen([{"prompt": f"A photo of a {colour} car", "crop": crop, "mask": mask, "gen_seed": 1}])[0]
        img = out["image"]
        after = np.linalg.norm(_lab(img)[mask] - tgt, axis=1).mean()
        assert after <= 0.5 * before, (colour, before, after)
        assert np.array_equal(img[~mask], crop[~mask])
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        g0 = cv2.Sobel(_lab(crop)[..., 0], cv2.CV_32F, 1, 0)[inner]
        g1 = cv2.Sobel(_lab(img)[..., 0], cv2.CV_32F, 1, 0)[inner]
        if g0.std() > 0.5:
            assert np.corrcoef(g0, g1)[0, 1] >= 0.9
        assert out["stats"]["colour"] == colour
        checked += 1
    assert checked >= 3


def test_identity_and_registry():
    gen = build_generator(GeneratorConfig(name="identity"))
    crop = np.zeros((4, 4, 3), np.uint8)
    assert np.array_equal(gen([{"crop": crop, "mask": np.ones((4, 4), bool)}])[0]["image"], crop)
    with pytest.raises(GeneratorError, match="unknown generator .nope.; known: blended-sdxl, gligen, identity"):
        build_generator(GeneratorConfig(name="nope"))
    with pytest.raises(GeneratorError, match="generator.params for 'recolor'"):
        build_generator(GeneratorConfig(name="recolor", params={"bogus": 1}))


def test_recolor_person_gets_seeded_tone():
    gen = build_generator(GeneratorConfig(name="recolor"))
    item = {"prompt": "A photo of a woman", "gen_seed": 7, "crop": np.full((8, 8, 3), 100, np.uint8),
            "mask": np.ones((8, 8), bool)}
    a, b = gen([item])[0], gen([item])[0]
    assert a["stats"]["colour"] == b["stats"]["colour"] and np.array_equal(a["image"], b["image"])
