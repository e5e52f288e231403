"""A synthetic sample dataset in the exact Cityscapes on-disk layout (the embedded default), or the
same scenes as a COCO dataset (``format="coco"``).

Why: Cityscapes cannot be downloaded here and its licence forbids shipping it, yet every reader
must be exercised on the real layout.  Each scene is drawn as polygons first (``_polygons.json``);
its instanceIds/labelIds/color PNGs are then made by cityscapesscripts' own converters from that
JSON, exactly as the official tools derive them, and the RGB image is textured from those maps.

The scenes are procedural street views - sky, buildings, vegetation, road, sidewalks, and
instances of all eight evaluated classes with occlusions, border-touching and tiny instances,
group regions, caravans/trailers, and one image with no instance at all.  They are synthetic:
no real Cityscapes pixel is in them.

As COCO (``annotations/instances_{train,val}.json``, JPEG images in ``train/`` and ``val/``): every
instance of the Cityscapes map becomes an annotation of its visible pixels - polygons (several parts
where it is occluded into pieces), every third one compressed RLE and every seventh uncompressed RLE -
and each group region an ``iscrowd: 1`` uncompressed RLE; the category ids follow COCO's where COCO has
the class and leave gaps and ids above 65 elsewhere (``COCO_IDS``), and one category has no annotation.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from instsynth.datasets import encode_index, encode_png
from instsynth.datasets.cityscapes import THING_CLASSES, instance_number, label_name, write_image
from instsynth.io import storage

TRAIN_CITIES = ["aachen", "bochum", "bremen"]
VAL_CITIES = ["frankfurt", "lindau"]

# (width, height) of each class relative to the scene height at scale 1 (nearest row)
SHAPES = {
    "car": (0.55, 0.26), "truck": (0.7, 0.42), "bus": (0.95, 0.45), "train": (1.6, 0.42),
    "person": (0.12, 0.42), "rider": (0.13, 0.3), "bicycle": (0.22, 0.16), "motorcycle": (0.26, 0.2),
    "caravan": (0.6, 0.34), "trailer": (0.5, 0.22),
}


def _strokes(cls: str) -> list[tuple]:
    """A class's silhouette as strokes in a unit box (x right, y down): ("disk", cx, cy, r),
    ("line", [(x, y), ...], width) or ("poly", [(x, y), ...]).  Classes a model must tell apart get
    distinct shapes: a bicycle is two wheels on a thin open frame, a motorcycle two smaller wheels under a
    solid body; a rider sits with bent legs and arms forward, a person stands; a train is long with a
    sloped nose and a pantograph, a caravan a rounded box on a tow bar, a trailer a low flat bed."""
    if cls == "bicycle":
        return [("disk", .2, .72, .2), ("disk", .8, .72, .2),
                ("line", [(.2, .72), (.45, .75), (.36, .25), (.68, .22), (.8, .72)], .05),
                ("line", [(.28, .2), (.44, .2)], .06), ("line", [(.62, .08), (.7, .22)], .05),
                ("line", [(.56, .08), (.72, .06)], .05)]
    if cls == "motorcycle":
        return [("disk", .17, .78, .17), ("disk", .83, .78, .17),
                ("poly", [(.12, .62), (.2, .38), (.45, .34), (.55, .22), (.75, .28), (.86, .55), (.72, .7),
                          (.3, .72)]),
                ("line", [(.7, .3), (.78, .02)], .07)]
    if cls == "person":
        return [("disk", .5, .08, .08), ("poly", [(.3, .17), (.7, .17), (.68, .55), (.32, .55)]),
                ("line", [(.3, .2), (.18, .52)], .1), ("line", [(.7, .2), (.82, .52)], .1),
                ("line", [(.4, .52), (.33, 1.0)], .13), ("line", [(.6, .52), (.67, 1.0)], .13)]
    if cls == "rider":
        return [("disk", .62, .1, .09), ("poly", [(.45, .2), (.7, .2), (.5, .62), (.25, .6)]),
                ("line", [(.62, .25), (.95, .42)], .1), ("line", [(.3, .6), (.7, .66)], .16),
                ("line", [(.7, .66), (.66, 1.0)], .12)]
    if cls == "car":
        return [("poly", [(0, 1), (0, .55), (.12, .45), (.25, .05), (.75, .05), (.88, .45), (1, .55), (1, 1)])]
    if cls == "bus":
        return [("poly", [(0, 1), (0, .08), (.04, 0), (.96, 0), (1, .08), (1, 1)])]
    if cls == "truck":
        return [("poly", [(0, 1), (0, .3), (.1, .3), (.15, .5), (.28, .5), (.28, 0), (1, 0), (1, 1)])]
    if cls == "train":
        return [("poly", [(0, 1), (0, .2), (.02, .12), (.9, .12), (1, .5), (1, 1)]),
                ("line", [(.4, .12), (.46, .0), (.54, .0)], .025)]
    if cls == "caravan":
        return [("poly", [(.15, 1), (.15, .25), (.3, 0), (.9, 0), (1, .2), (1, 1)]), ("line", [(0, .9), (.2, .9)], .06)]
    # trailer: a low flat bed on a tow bar
    return [("poly", [(.15, .95), (.15, .3), (1, .3), (1, .95)]), ("line", [(0, .85), (.2, .8)], .08)]


_TEMPLATES: dict[str, np.ndarray] = {}


def _template(cls: str) -> np.ndarray:
    """The outer contour (N, 2) in the unit box of a class's strokes, drawn once at 256 px."""
    if cls not in _TEMPLATES:
        rw, rh = SHAPES[cls]
        cw = 256
        ch = max(16, int(round(cw * rh / rw)))
        canvas = np.zeros((ch + 8, cw + 8), np.uint8)

        def px(x, y):
            return int(round(4 + x * cw)), int(round(4 + y * ch))
        for kind, *a in _strokes(cls):
            if kind == "disk":
                cx, cy, r = a
                cv2.ellipse(canvas, px(cx, cy), (int(r * cw), int(r * cw)), 0, 0, 360, 255, -1)
            elif kind == "line":
                pts, width = a
                cv2.polylines(canvas, [np.array([px(*p) for p in pts], np.int32)], False, 255,
                              max(2, int(width * cw)))
            else:
                cv2.fillPoly(canvas, [np.array([px(*p) for p in a[0]], np.int32)], 255)
        contours, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        c = max(contours, key=cv2.contourArea)
        c = cv2.approxPolyDP(c, 1.0, True)[:, 0].astype(np.float64)
        _TEMPLATES[cls] = np.stack([(c[:, 0] - 4) / cw, (c[:, 1] - 4) / ch], 1).clip(0, 1)
    return _TEMPLATES[cls]


def _outline(cls: str, x: float, yb: float, w: float, h: float) -> list[tuple[float, float]]:
    """A class-specific polygon standing on (x..x+w, yb)."""
    top = yb - h
    return [(x + px * w, top + py * h) for px, py in _template(cls).tolist()]


def _clip(poly, width, height):
    return [[int(round(min(max(px, 0), width - 1))), int(round(min(max(py, 0), height - 1)))] for px, py in poly]


def scene_objects(rng: np.random.Generator, width: int, height: int, index: int, empty: bool) -> list[dict]:
    """Polygons of one scene, in drawing order (later objects occlude earlier ones)."""
    hz = int(height * rng.uniform(0.38, 0.46))
    W, H = width, height
    objs = [{"label": "sky", "polygon": [[0, 0], [W - 1, 0], [W - 1, hz], [0, hz]]}]
    x = 0
    while x < W:  # skyline
        bw = int(W * rng.uniform(0.08, 0.2))
        top = int(hz * rng.uniform(0.1, 0.7))
        objs.append({"label": "building", "polygon": [[x, top], [min(x + bw, W - 1), top],
                                                      [min(x + bw, W - 1), hz], [x, hz]]})
        x += bw
    for _ in range(int(rng.integers(1, 4))):
        cx, r = rng.uniform(0, W), rng.uniform(0.05, 0.12) * H
        poly = [(cx + r * 1.6 * np.cos(a), hz - r * 0.6 + r * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 12)]
        objs.append({"label": "vegetation", "polygon": _clip(poly, W, H)})
    vx = W * rng.uniform(0.4, 0.6)
    objs.append({"label": "sidewalk", "polygon": [[0, hz], [W - 1, hz], [W - 1, H - 1], [0, H - 1]]})
    objs.append({"label": "road", "polygon": _clip([(vx - W * 0.04, hz), (vx + W * 0.04, hz),
                                                     (W * 1.1, H - 1), (-W * 0.1, H - 1)], W, H)})
    if empty:
        return objs
    things = []
    forced = [THING_CLASSES[index % len(THING_CLASSES)], THING_CLASSES[(index * 3 + 1) % len(THING_CLASSES)]]
    pool = ["car"] * 5 + ["person"] * 3 + ["rider", "bicycle", "motorcycle", "truck", "bus", "caravan", "trailer"]
    classes = forced + [pool[i] for i in rng.integers(len(pool), size=int(rng.integers(4, 9)))]
    for n, cls in enumerate(classes):
        s = rng.uniform(0.25, 1.0) if n < 2 else rng.uniform(0.06, 1.0)
        yb = hz + s * (H - hz)
        rw, rh = SHAPES[cls]
        w, h = rw * H * s, rh * H * s
        xpos = rng.uniform(-0.1 * w, W - 0.9 * w)
        things.append((yb, cls, xpos, w, h))
    # one instance cut by the image border, one tiny far-away one, one group region
    things.append((hz + 0.7 * (H - hz), "car", -0.3 * SHAPES["car"][0] * H * 0.7, SHAPES["car"][0] * H * 0.7,
                   SHAPES["car"][1] * H * 0.7))
    things.append((hz + 0.05 * (H - hz), "person", rng.uniform(0, W - 10), 0.12 * H * 0.05, 0.42 * H * 0.05))
    group = ["cargroup", "persongroup", "bicyclegroup"][index % 3]
    gx = rng.uniform(0, W * 0.8)
    things.append((hz + 0.12 * (H - hz), group, gx, 0.18 * W * 0.5, 0.06 * H))
    things.sort(key=lambda t: t[0])  # far first: nearer objects occlude them
    for yb, cls, xpos, w, h in things:
        base = cls[:-5] if cls.endswith("group") else cls
        if base == "rider":  # a rider sits on a two-wheeler
            wheel = "bicycle" if rng.random() < 0.5 else "motorcycle"
            objs.append({"label": wheel, "polygon": _clip(_outline(wheel, xpos - 0.3 * w, yb, 1.6 * w, 0.55 * h), W, H)})
            objs.append({"label": "rider", "polygon": _clip(_outline("rider", xpos, yb - 0.3 * h, w, h), W, H)})
        else:
            shape = "car" if base not in SHAPES else base
            objs.append({"label": cls, "polygon": _clip(_outline(shape, xpos, yb, w, h), W, H)})
    return objs


def _noise(rng, height, width, cells):
    small = rng.standard_normal((cells, max(2, cells * width // max(height, 1)))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


STUFF_COLOURS = {
    "sky": (135, 170, 215), "building": (150, 130, 115), "vegetation": (70, 120, 50), "road": (95, 95, 100),
    "sidewalk": (160, 150, 140), "unlabeled": (0, 0, 0),
}
VEHICLE_PAINT = [(200, 30, 30), (30, 60, 170), (220, 220, 220), (25, 25, 25), (120, 120, 125), (30, 120, 60),
                 (230, 180, 30)]


def render(instance_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Textured RGB image for an instanceIds map: per-region colour x low-frequency shading + grain."""
    H, W = instance_ids.shape
    uniq = np.unique(instance_ids)
    lut = np.zeros((int(uniq.max()) + 1, 3), np.float32)
    for v in uniq:
        cid = v // 1000 if v >= 1000 else v
        name = _name_of_id(int(cid))
        if name in STUFF_COLOURS:
            col = STUFF_COLOURS[name]
        elif name in ("person", "rider"):
            col = (rng.integers(40, 220), rng.integers(40, 200), rng.integers(40, 200))
        elif name in ("car", "truck", "bus", "train", "caravan", "trailer", "motorcycle", "bicycle"):
            col = VEHICLE_PAINT[int(rng.integers(len(VEHICLE_PAINT)))]
        else:
            col = (110, 110, 110)
        lut[v] = col
    img = lut[instance_ids]
    shade = 1.0 + 0.12 * _noise(rng, H, W, 6) + 0.06 * _noise(rng, H, W, 40)
    yy = np.linspace(1.05, 0.9, H, dtype=np.float32)[:, None]
    img *= (shade * yy)[..., None]
    # facade windows: a regular darker grid on buildings
    bid = name2label["building"].id
    grid = ((np.arange(W)[None, :] // max(4, W // 128)) % 3 == 0) | ((np.arange(H)[:, None] // max(4, H // 64)) % 3 == 0)
    img[(instance_ids == bid) & ~grid] *= 0.6
    img += rng.normal(0, 5.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _name_of_id(cid: int) -> str:
    from cityscapesscripts.helpers.labels import id2label

    lb = id2label.get(cid)
    return lb.name if lb else "unlabeled"


def maps_from_polygons(polygons: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instanceIds uint16, labelIds uint8, color RGB) made by cityscapesscripts from polygon JSON."""
    ann = Annotation()
    ann.fromJsonText(json.dumps(polygons))
    inst = np.asarray(createInstanceImage(ann, "ids"), dtype=np.int64).astype(np.uint16)
    lab = np.asarray(createLabelImage(ann, "ids"), dtype=np.uint8)
    color = np.asarray(createLabelImage(ann, "color").convert("RGB"), dtype=np.uint8)
    return inst, lab, color


#: category ids of the COCO-format sample: COCO's own where COCO has the class; gaps, ids above 65 and
#: one category without annotations ("traffic light") exercise what real files hold
COCO_IDS = {"person": 1, "bicycle": 2, "car": 3, "motorcycle": 4, "bus": 6, "train": 7, "truck": 8,
            "traffic light": 10, "rider": 91, "caravan": 120, "trailer": 121}


#: Mapillary Vistas v2.0 labels of the sample (names as Vistas spells them), in config order; the value
#: is the Cityscapes class each comes from.  "unlabeled" is last, as in Vistas.
MAPILLARY_LABELS = [("construction--flat--road", "road"), ("construction--flat--sidewalk", "sidewalk"),
                    ("construction--structure--building", "building"), ("nature--vegetation", "vegetation"),
                    ("nature--sky", "sky"), ("human--person", "person"), ("human--rider--bicyclist", "rider"),
                    ("object--vehicle--car", "car"), ("object--vehicle--truck", "truck"),
                    ("object--vehicle--bus", "bus"), ("object--vehicle--on-rails", "train"),
                    ("object--vehicle--motorcycle", "motorcycle"), ("object--vehicle--bicycle", "bicycle"),
                    ("object--vehicle--caravan", "caravan"), ("object--vehicle--trailer", "trailer"),
                    ("unlabeled", None)]


def mapillary_config() -> dict:
    things = set(SHAPES)
    return {"version": "2.0", "labels": [
        {"name": n, "readable": (cs or "unlabeled").capitalize(), "instances": cs in things, "evaluate": cs is not None,
         "color": [int(c) for c in np.random.default_rng(i).integers(0, 255, 3)]}
        for i, (n, cs) in enumerate(MAPILLARY_LABELS)]}


def mapillary_map(inst: np.ndarray) -> np.ndarray:
    """A Cityscapes instanceIds map as a Vistas v2.0 instance map: label index * 256 + instance (things
    numbered from 1 per label; group regions become instances; classes Vistas' sample lacks: unlabeled)."""
    index = {cs: i for i, (_, cs) in enumerate(MAPILLARY_LABELS) if cs}
    unlabeled = len(MAPILLARY_LABELS) - 1
    out = np.full(inst.shape, unlabeled * 256, np.uint16)
    k_of: dict[int, int] = {}
    for v in np.unique(inst).tolist():
        cid, _ = instance_number(v)
        label = index.get(label_name(cid))
        if label is None:
            continue
        if MAPILLARY_LABELS[label][1] in SHAPES:
            k_of[label] = k_of.get(label, 0) + 1
            out[inst == v] = label * 256 + k_of[label]
        else:
            out[inst == v] = label * 256
    return out


def _polygons_of(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c[:, 0, :].astype(float).ravel().tolist() for c in contours if len(c) >= 3]


def coco_annotations(inst: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """COCO annotations of one instanceIds map (see the module docstring for the encodings used)."""
    from pycocotools import mask as mask_utils

    anns = []
    for v in np.unique(inst).tolist():
        cid, is_instance = instance_number(v)
        name = label_name(cid)
        is_group = not is_instance and name in COCO_IDS and name in SHAPES
        if not (is_instance or is_group) or name not in COCO_IDS:
            continue
        mask = inst == v
        aid = first_id + len(anns)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        h, w = mask.shape
        if is_group or aid % 7 == 0:  # uncompressed RLE: column-major run lengths, the first of zeros
            flat = mask.ravel(order="F")
            bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
            counts = ([0] if flat[0] else []) + np.diff(bounds).tolist()
            segm = {"size": [h, w], "counts": [int(c) for c in counts]}
        elif aid % 3 == 0:
            segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        else:
            segm = _polygons_of(mask)
            if not segm:
                continue
        x, y, bw, bh = (float(b) for b in mask_utils.toBbox(rle))
        anns.append({"id": aid, "image_id": image_id, "category_id": COCO_IDS[name], "segmentation": segm,
                     "area": float(mask_utils.area(rle)), "bbox": [x, y, bw, bh], "iscrowd": int(is_group)})
    return anns


def write_sample(out: str, images: int = 12, size: tuple[int, int] = (2048, 1024), seed: int = 0,
                 val_fraction: float = 0.25, progress=None, format: str = "cityscapes") -> list[str]:
    """Write ``images`` scenes under ``out`` in Cityscapes layout (or as a COCO dataset: the same scenes,
    same seeds); returns the images written (``split/city/stem``)."""
    width, height = size
    n_val = max(1, int(round(images * val_fraction))) if images > 1 else 0
    n_train = images - n_val
    stems = []
    coco = {s: {"info": {"description": "InstSynth synthetic sample (COCO format)"}, "images": [],
                "annotations": [],
                "categories": [{"id": i, "name": n, "supercategory": "street"} for n, i in sorted(COCO_IDS.items(),
                                                                                               key=lambda x: x[1])]}
            for s in ("train", "val")}
    for i in range(images):
        split = "train" if i < n_train else "val"
        cities = TRAIN_CITIES if split == "train" else VAL_CITIES
        j = i if split == "train" else i - n_train
        city = cities[j % len(cities)]
        stem = f"{city}_{j // len(cities):06d}_000019"
        rng = np.random.default_rng([seed, i])
        empty = split == "train" and i == n_train - 1 and n_train > 1
        polygons = {"imgHeight": height, "imgWidth": width,
                    "objects": scene_objects(rng, width, height, i, empty)}
        inst, lab, color = maps_from_polygons(polygons)
        rgb = render(inst.astype(np.int32), rng)
        if format == "mapillary":
            folder = "training" if split == "train" else "validation"
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            storage.write_bytes(storage.join(out, folder, "images", f"{stem}.jpg"), jpg.tobytes())
            storage.write_bytes(storage.join(out, folder, "v2.0", "instances", f"{stem}.png"),
                                encode_index(mapillary_map(inst)))
        elif format == "coco":
            image_id = 1000 + i
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            storage.write_bytes(storage.join(out, split, f"{stem}.jpg"), jpg.tobytes())
            coco[split]["images"].append({"id": image_id, "file_name": f"{stem}.jpg", "width": width,
                                          "height": height})
            # 64-bit annotation ids, as large datasets (LVIS, merged sets) have them
            coco[split]["annotations"] += coco_annotations(inst, image_id, (1 << 40) + 1000 * i + 1)
        else:
            write_image(out, split, city, stem, encode_png(rgb), inst, polygons, color, label_ids=lab)
        stems.append(f"{split}/{city}/{stem}")
        if progress:
            progress(i + 1, images)
    if format == "mapillary":
        storage.write_bytes(storage.join(out, "config_v2.0.json"), json.dumps(mapillary_config(), indent=1).encode())
        storage.write_bytes(storage.join(out, "README.md"), SAMPLE_README_MAPILLARY.encode())
    elif format == "coco":
        for split, data in coco.items():
            storage.write_bytes(storage.join(out, "annotations", f"instances_{split}.json"), json.dumps(data).encode())
        storage.write_bytes(storage.join(out, "README.md"), SAMPLE_README_COCO.encode())
    else:
        storage.write_bytes(storage.join(out, "README.md"), SAMPLE_README.encode())
    return stems


SAMPLE_README_MAPILLARY = """# InstSynth synthetic sample (Mapillary Vistas v2.0 layout)

Procedurally drawn street scenes written by `instsynth sample --format mapillary`: the same scenes as the
Cityscapes-layout sample, in Vistas' layout (`{training,validation}/images/*.jpg`,
`{training,validation}/v2.0/instances/*.png` with label index * 256 + instance, `config_v2.0.json`).
Synthetic: no real dataset's pixel is in them.
"""

SAMPLE_README_COCO = """# InstSynth synthetic sample (COCO format)

Procedurally drawn street scenes written by `instsynth sample --format coco`: the same scenes as the
Cityscapes-layout sample, as COCO instances JSON (`annotations/instances_{train,val}.json`) with JPEG images
(`train/`, `val/`). Segmentations are polygons, compressed and uncompressed RLE; group regions are
`iscrowd: 1`; category ids have gaps and go above 65; one category has no annotations. Synthetic: no real
dataset's pixel is in them.
"""

SAMPLE_README = """# InstSynth synthetic sample (Cityscapes layout)

Procedurally drawn street scenes written by `instsynth sample`. They are **synthetic**: no pixel of
the real Cityscapes dataset is in them. The layout, file names and label encodings are those of
Cityscapes (gtFine instanceIds/labelIds/color/polygons, leftImg8bit), and the label PNGs were made by
cityscapesscripts' own `createInstanceImage`/`createLabelImage` from the polygon JSON.
"""
