import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from instsynth.datasets import cityscapes_space
from instsynth.datasets.cityscapes import regions_from_ids
from instsynth.plan import select
from instsynth.plan.select import crop, prepare_instance, square_box
from tests.conftest import make_ids


def select_instances(ids, top_k=3, min_pixels=1024, classes=None):
    """Eq. 1 on a Cityscapes map; ``classes`` default as a plan resolves it: the label space's selectable."""
    return select.select_instances(regions_from_ids(ids), top_k, min_pixels,
                                   classes if classes is not None else cityscapes_space().selectable)


def test_top_k_order_and_ties():
    ids = make_ids(100, 200, [
        (26000, (0, 0, 10, 10)),     # car 100 px
        (24001, (20, 0, 30, 10)),    # person 100 px (tie with the car -> lower id first)
        (26002, (40, 0, 60, 20)),    # car 400 px
        (33000, (70, 0, 75, 4)),     # bicycle 20 px (below min)
        (27000, (100, 0, 109, 10)),  # truck 90 px
    ])
    sel = select_instances(ids, top_k=3, min_pixels=50)
    assert [s.instance_id for s in sel] == [26002, 24001, 26000]
    assert [s.pixels for s in sel] == [400, 100, 100]
    assert sel[0].bbox == (40, 0, 60, 20) and sel[0].class_name == "car"
    assert [s.instance_id for s in select_instances(ids, top_k=10, min_pixels=50)][-1] == 27000


def test_groups_caravan_trailer_never_selected():
    ids = make_ids(50, 100, [
        (26, (0, 0, 40, 40)),        # car group region (bare class id)
        (24, (40, 0, 60, 40)),       # person group
        (29000, (60, 0, 80, 40)),    # caravan instance
        (30000, (80, 0, 100, 40)),   # trailer instance
        (25000, (0, 40, 3, 43)),     # rider, 9 px
    ])
    assert [s.instance_id for s in select_instances(ids, top_k=5, min_pixels=1)] == [25000]


def test_class_filter():
    ids = make_ids(50, 100, [(26000, (0, 0, 40, 40)), (24000, (50, 0, 60, 10))])
    assert [s.class_name for s in select_instances(ids, 3, 1, ["person"])] == ["person"]


def test_square_at_border_is_shifted_inside():
    box = square_box((0, 10, 20, 30), width=200, height=100, margin=0.1)
    assert box[0] == 0 and box[2] - box[0] == box[3] - box[1] == 24
    box = square_box((190, 80, 200, 100), 200, 100, 0.0)
    assert box == (180, 80, 200, 100) or (box[2] <= 200 and box[3] <= 100)


def test_instance_taller_than_image_is_padded_not_shifted():
    ids = make_ids(100, 400, [(24000, (150, 0, 170, 100))])  # spans the full height
    inst = select_instances(ids, 1, 1)[0]
    box = square_box(inst.bbox, 400, 100, margin=0.1)
    side = box[2] - box[0]
    assert side == box[3] - box[1] == 120 and box[1] == -10 and box[3] == 110
    img = np.full((100, 400, 3), 9, np.uint8)
    c, m = prepare_instance(img, regions_from_ids(ids).index, inst.index, box)
    assert c.shape == (120, 120, 3) and (c[:10] == 0).all() and (c[10:110] == 9).all()
    assert m.sum() == inst.pixels


def test_mask_holds_only_the_chosen_instance():
    ids = make_ids(60, 120, [(26000, (10, 10, 50, 40)), (24000, (30, 20, 40, 50))])  # person occludes car
    img = np.random.default_rng(0).integers(0, 255, (60, 120, 3), dtype=np.uint8)
    inst = [s for s in select_instances(ids, 3, 1) if s.instance_id == 26000][0]
    box = square_box(inst.bbox, 120, 60, 0.1)
    c, m = prepare_instance(img, regions_from_ids(ids).index, inst.index, box)
    assert m.dtype == bool and m.sum() == (ids == 26000).sum()
    assert np.array_equal(crop(ids, box)[m], np.full(m.sum(), 26000))
    assert np.array_equal(c, img[box[1]:box[3], box[0]:box[2]])


@given(st.integers(8, 400), st.integers(8, 400), st.data(), st.floats(0, 0.5))
def test_square_box_properties(w, h, data, margin):
    x0 = data.draw(st.integers(0, w - 1))
    y0 = data.draw(st.integers(0, h - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y1 = data.draw(st.integers(y0 + 1, h))
    b = square_box((x0, y0, x1, y1), w, h, margin)
    side = b[2] - b[0]
    assert side == b[3] - b[1] >= max(x1 - x0, y1 - y0)  # 1:1 and holds the box
    assert b[0] <= x0 and b[1] <= y0 and b[2] >= x1 and b[3] >= y1
    for lo, hi, size in ((b[0], b[2], w), (b[1], b[3], h)):
        if side <= size:  # fits: stays inside
            assert 0 <= lo and hi <= size
        else:  # larger than the image: covers it whole
            assert lo <= 0 and hi >= size


def test_crowd_and_stuff_never_selected_whatever_the_classes():
    """A crowd region of a selectable class and a stuff region are no instances, even if named."""
    from instsynth.datasets import Labels

    index = np.zeros((10, 10), np.uint16)
    index[:5] = 1
    index[5:] = 2
    regions = [{"index": 1, "source_id": 9, "class_id": 3, "class_name": "car", "thing": True, "crowd": True},
               {"index": 2, "source_id": 8, "class_id": 7, "class_name": "road", "thing": False, "crowd": False}]
    assert select.select_instances(Labels(index, regions), 3, 1, ["car", "road"]) == []
