"""COCO instances JSON: ``images``, ``annotations``, ``categories``; images by ``file_name`` under an image root.

What real files hold and how each is read:

* segmentations as polygons (a list of parts, each ``[x0, y0, x1, y1, ...]``; several parts for an
  occluded object), compressed RLE (``counts`` a string) or uncompressed RLE (``counts`` a list, as
  ``iscrowd: 1`` regions usually are) - all rasterized with pycocotools, polygons reaching past the
  border clipped;
* overlapping masks are painted largest first (by rasterized pixels, ties by annotation id), so a
  smaller object on top of a larger one stays visible in the index map;
* ``iscrowd: 1`` regions become crowd regions: never selected, ignored in evaluation, never pasted over
  (LVIS has no ``iscrowd``: none is crowd);
* LVIS v1: images with ``coco_url`` and no ``file_name`` lie at ``<image_root>/<train2017|val2017>/<file>``
  (its ``synonyms``, ``def`` and federated keys are not used: federated evaluation is out of scope);
* category ids with gaps and categories without annotations: the label space is the ``categories``
  list as given (every category a selectable, evaluated thing; ``isthing: 0`` entries are stuff);
* annotation ids are arbitrary 64-bit integers (Python ints throughout; Arrow int64 in rows).

A bad record never stops the plan: an annotation with a polygon of fewer than 3 points, an unknown
``category_id`` or an RLE whose ``size`` disagrees with its image entry is left out and recorded
(image id, annotation id, reason), like detectron2's loader drops invalid polygons; an image entry
whose file is missing is left out and recorded.  The ``area`` field is not used: Eq. 1 ranks by the
rasterized pixels an instance keeps in the index map (the pixels Phase 2 repaints).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator

import msgspec
import numpy as np

from instsynth.datasets.base import (
    ClassInfo,
    DataError,
    Dataset,
    DatasetSpec,
    ImageRef,
    Labels,
    LabelSpace,
    check_size,
    decode_image,
    region,
)
from instsynth.io import storage
from instsynth.io.parquet import SparseFile, parquet_footer, read_parquet_columns
from instsynth.plan.select import Instance, bbox_of

REQUIRED = ("images", "annotations", "categories")
_NAME = re.compile(r"instances_(?P<name>[^/]+)\.json$")


def default_image_root(source: str) -> str | None:
    """``<root>/<name>/`` for ``<root>/annotations/instances_<name>.json`` (COCO's own layout), else None."""
    m = _NAME.search(source.replace("\\", "/"))
    parent = source.replace("\\", "/").rsplit("/", 2)
    if not m or len(parent) < 3 or parent[1] != "annotations":
        return None
    return storage.join(parent[0], m.group("name"))


def split_name(source: str, fallback: str) -> str:
    m = _NAME.search(source.replace("\\", "/"))
    return m.group("name") if m else fallback


class _Image(msgspec.Struct, gc=False):
    id: object = None
    file_name: object = None
    coco_url: object = None
    width: object = None
    height: object = None


class _Annotation(msgspec.Struct, gc=False):
    id: object = None
    image_id: object = None
    category_id: object = None
    segmentation: msgspec.Raw = msgspec.Raw(b"null")
    iscrowd: object = 0


class _Category(msgspec.Struct, gc=False):
    id: object = None
    name: object = None
    isthing: object = 1


class _File(msgspec.Struct, gc=False):
    images: list[_Image] | None = None
    annotations: list[_Annotation] | None = None
    categories: list[_Category] | None = None


def read_json(source: str) -> _File:
    """The file decoded into compact records (only the keys InstSynth reads; each segmentation stays raw
    JSON bytes until its image is rasterized): ~the file's size in memory, where ``json.load`` builds
    several times that in Python objects."""
    try:
        data = msgspec.json.decode(storage.read_bytes(source), type=_File)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DataError(f"{source}: not a COCO instances file ({str(e).splitlines()[0]})") from None
    for key in REQUIRED:
        if getattr(data, key) is None:
            raise DataError(f"{source}: not a COCO instances file (no '{key}' list)")
    return data


def image_file(im: _Image) -> str:
    """An image entry's file relative to the image root: ``file_name``, or for LVIS v1 (``coco_url``
    only) ``<train2017|val2017>/<file>`` - its last two URL components (the image root is then COCO's)."""
    if im.file_name:
        return str(im.file_name)
    return "/".join(str(im.coco_url).rstrip("/").split("/")[-2:])


def label_space_of(data: _File, source: str) -> LabelSpace:
    classes = []
    for c in data.categories:
        if not isinstance(c.id, int) or c.name is None:
            raise DataError(f"{source}: category {c.id!r} lacks an integer 'id' or a 'name'")
        thing = bool(c.isthing)
        classes.append(ClassInfo(int(c.id), str(c.name), thing=thing, selectable=thing, evaluated=thing,
                                 noun=str(c.name).replace("_", " ")))
    names = [c.name for c in classes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{source}: category names {dup} occur more than once")
    return LabelSpace(os.path.basename(source), classes)


def _parts_ok(segm) -> str | None:
    """Why a segmentation cannot be rasterized (None: it can)."""
    if isinstance(segm, list):
        if not segm:
            return "empty polygon list"
        for part in segm:
            if not isinstance(part, list) or len(part) < 6:
                return f"polygon with fewer than 3 points ({len(part) // 2 if isinstance(part, list) else 0})"
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        return None
    return "segmentation is neither polygons nor RLE"


def rle_of(segm, height: int, width: int) -> dict:
    """A segmentation (polygons, compressed or uncompressed RLE) as one compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    counts = segm["counts"]
    return {"size": segm["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def paint(anns: list[tuple[int, object]], height: int, width: int) -> np.ndarray:
    """The index map of ``[(annotation id, segmentation)]`` (in id order; region k+1 = the k-th): masks
    painted largest first, ties by id, so a smaller mask on top of a larger one stays visible."""
    masks = [rasterize(seg, height, width) for _, seg in anns]
    areas = [int(m.sum()) for m in masks]
    index = np.zeros((height, width), np.uint16)
    for k in sorted(range(len(anns)), key=lambda k: (-areas[k], anns[k][0])):
        index[masks[k]] = k + 1
    return index


def rasterize(segm, height: int, width: int) -> np.ndarray:
    """A segmentation (polygons, compressed or uncompressed RLE) as an HxW bool mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(rle_of(segm, height, width)).astype(bool)


class CocoDataset(Dataset):
    format = "coco"

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        if not spec.image_root:
            raise DataError(f"{spec.source}: no image root; pass --image-root DIR (dataset.image_root) - only "
                            "<root>/annotations/instances_<name>.json implies <root>/<name>/")
        data = read_json(spec.source)
        self.label_space = label_space_of(data, spec.source)
        self.images: dict[int, dict] = {}
        self._failures: list[dict] = []
        for im in data.images:
            if not isinstance(im.id, int) or not isinstance(im.width, int) or not isinstance(im.height, int) \
                    or not (im.file_name or im.coco_url):
                self._fail(im.id, "", "image entry lacks an integer id, width or height, or a file_name")
                continue
            self.images[im.id] = {"file_name": image_file(im), "width": im.width, "height": im.height}
        #: per image: (annotation id, category id, crowd, segmentation as raw JSON bytes)
        self.anns: dict[int, list[tuple]] = defaultdict(list)
        for a in data.annotations:
            self._add_annotation(a)
        del data

    def _fail(self, image_id, ann_id, reason: str, file: str | None = None) -> None:
        self._failures.append({"image_id": str(image_id), "file": file or self.spec.source,
                               "reason": (f"annotation {ann_id}: " if ann_id != "" else "") + reason})

    def _add_annotation(self, a: _Annotation) -> None:
        aid, iid = a.id, a.image_id
        im = self.images.get(iid) if isinstance(iid, int) else None
        if im is None:
            self._fail(iid, aid, f"image_id {iid!r} is not in 'images'")
            return
        if not isinstance(aid, int):
            self._fail(iid, aid, "annotation id is not an integer")
            return
        if a.category_id not in self.label_space.by_id:
            self._fail(iid, aid, f"unknown category_id {a.category_id!r}")
            return
        try:
            segm = msgspec.json.decode(a.segmentation)
        except msgspec.DecodeError:
            segm = None
        why = _parts_ok(segm)
        if why is None and isinstance(segm, dict) and list(segm["size"]) != [im["height"], im["width"]]:
            why = (f"RLE size {list(segm['size'])} disagrees with its image entry "
                   f"({im['height']}x{im['width']}, height x width)")
        if why:
            self._fail(iid, aid, why)
            return
        self.anns[iid].append((aid, int(a.category_id), bool(a.iscrowd), a.segmentation))

    def discover(self, split: str) -> Iterator[ImageRef]:
        """Every image entry whose file exists under the image root, by image id (one listing)."""
        present = self._listing()
        name = split_name(self.spec.source, split)
        for iid in sorted(self.images):
            im = self.images[iid]
            if im["file_name"] not in present:
                continue
            group = im["file_name"].rsplit("/", 1)[0] if "/" in im["file_name"] else ""
            yield ImageRef(str(iid), name, group, im["file_name"], "", im["width"], im["height"])

    def _listing(self) -> set[str]:
        root = self.spec.image_root
        if not hasattr(self, "_present"):
            self._present = {storage.relpath(p, root).replace("\\", "/") for p in storage.walk(root)} \
                if storage.is_dir(root) else set()
        return self._present

    def failures(self, split: str) -> Iterator[dict]:
        yield from self._failures
        present = self._listing()
        for iid in sorted(self.images):
            f = self.images[iid]["file_name"]
            if f not in present:
                yield {"image_id": str(iid), "file": f,
                       "reason": f"image {iid}: file {storage.join(self.spec.image_root, f)} is missing"}

    def _regions(self, iid: int) -> tuple[list[tuple], list[dict]]:
        anns = sorted(self.anns.get(iid, []), key=lambda a: a[0])
        return anns, [region(k + 1, aid, self.label_space.by_id[cid], cid, crowd)
                      for k, (aid, cid, crowd, _) in enumerate(anns)]

    def load_labels(self, ref: ImageRef) -> Labels:
        iid = int(ref.image_id)
        im = self.images[iid]
        h, w = im["height"], im["width"]
        anns, regions = self._regions(iid)
        return Labels(paint([(aid, msgspec.json.decode(seg)) for aid, _, _, seg in anns], h, w), regions)

    def select(self, ref: ImageRef, top_k: int, min_pixels: int, classes: list[str] | None):
        """Eq. 1 without painting the index map: each mask's visible pixels are its pixels less the union of
        the masks painted after it (RLE operations in pycocotools' C code, no full-size decode), so the
        selection equals ``select_instances(self.load_labels(ref), ...)``; only the chosen masks are decoded,
        for their boxes."""
        from pycocotools import mask as mask_utils

        iid = int(ref.image_id)
        h, w = self.images[iid]["height"], self.images[iid]["width"]
        anns, regions = self._regions(iid)
        if not anns:
            return [], (h, w)
        rles = [rle_of(msgspec.json.decode(seg), h, w) for _, _, _, seg in anns]
        areas = mask_utils.area(rles).tolist()
        order = sorted(range(len(anns)), key=lambda k: (-areas[k], anns[k][0]))  # paint order
        visible, after, union = {}, {}, None
        for k in reversed(order):  # the last painted first: ``union`` covers every mask painted after k
            after[k] = union
            visible[k] = areas[k] if union is None else \
                areas[k] - int(mask_utils.area(mask_utils.merge([rles[k], union], intersect=True)))
            union = rles[k] if union is None else mask_utils.merge([union, rles[k]])
        allowed = None if classes is None else set(classes)
        eligible = [k for k, r in enumerate(regions) if r["thing"] and not r["crowd"] and visible[k] >= min_pixels
                    and (allowed is None or r["class_name"] in allowed)]
        eligible.sort(key=lambda k: (-visible[k], anns[k][0]))
        out = []
        for k in eligible[:top_k]:
            if visible[k] == areas[k]:  # nothing painted over it: the box of its RLE, no decode
                x, y, bw, bh = (int(v) for v in mask_utils.toBbox(rles[k]))
                box = (x, y, x + bw, y + bh)
            else:
                mask = mask_utils.decode(rles[k]).astype(bool) & ~mask_utils.decode(after[k]).astype(bool)
                box = bbox_of(mask)
            r = regions[k]
            out.append(Instance(r["source_id"], r["index"], r["class_id"], r["class_name"], int(visible[k]), box))
        return out, (h, w)

    def blob(self, ref: ImageRef) -> bytes:
        """The image's annotations as they are kept (id, category, crowd, raw segmentation): its row of a
        run's label file (``write_label_file``)."""
        return msgspec.json.encode(self.anns.get(int(ref.image_id), []))

    def image_path(self, rel: str) -> str:
        return storage.join(self.spec.image_root, rel)

    def load(self, ref: ImageRef) -> tuple[np.ndarray, Labels]:
        labels = self.load_labels(ref)
        path = self.image_path(ref.image)
        try:
            image = decode_image(storage.read_bytes(path), path)
        except storage.StorageError as e:
            raise DataError(str(e)) from None
        check_size(image, labels.index, path, f"its entry in {os.path.basename(self.spec.source)} (image {ref.image_id})")
        return image, labels


#: images per row group of a label file: a prepare task reads one or two groups (~1 MB for COCO)
LABEL_GROUP = 256
LABELS_KEY = b"instsynth.label_space"


def write_label_file(path: str, blobs: list[tuple[str, bytes]], space: LabelSpace) -> None:
    """``[(image_id, blob)]`` in plan order as a Parquet file of ``LABEL_GROUP``-image row groups; a plan
    row's ``label_path`` is its image's row number here."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"image_id": [b[0] for b in blobs], "labels": pa.array([b[1] for b in blobs], pa.binary())})
    buf = io.BytesIO()
    pq.write_table(t.replace_schema_metadata({LABELS_KEY: space.to_json().encode()}), buf, row_group_size=LABEL_GROUP,
                   compression="zstd")
    storage.write_bytes(path, buf.getvalue())


class CocoLabelFile(CocoDataset):
    """A COCO dataset as a prepare task sees it in a run: the annotations of an image come from one row group
    of the run's label file (``ref.labels`` is the row), never from the whole JSON - no worker holds it."""

    def __init__(self, spec: DatasetSpec):
        import pyarrow.parquet as pq

        self.spec = spec
        self._footer = parquet_footer(spec.labels)
        meta = pq.ParquetFile(io_sparse(self._footer, spec.labels)).schema_arrow.metadata or {}
        self.label_space = LabelSpace.from_json(meta[LABELS_KEY])
        self._groups: dict[int, list] = {}

    def _row(self, k: int) -> list:
        g = k // LABEL_GROUP
        if g not in self._groups:
            if len(self._groups) >= 4:
                self._groups.pop(next(iter(self._groups)))
            t = read_parquet_columns(self.spec.labels, ["labels"], [g], footer=self._footer)
            self._groups[g] = t.column("labels").to_pylist()
        return msgspec.json.decode(self._groups[g][k % LABEL_GROUP])

    def load_labels(self, ref: ImageRef) -> Labels:
        if not ref.labels:
            raise DataError(f"image {ref.image_id}: no row in {self.spec.labels}")
        anns = sorted(self._row(int(ref.labels)), key=lambda a: a[0])
        return Labels(paint([(aid, seg) for aid, _, _, seg in anns], ref.height, ref.width),
                      [region(k + 1, aid, self.label_space.by_id[cid], cid, crowd)
                       for k, (aid, cid, crowd, _) in enumerate(anns)])

    def discover(self, split: str):
        raise DataError("a run's label file serves prepare tasks only; plan from the annotation file")


def io_sparse(footer, path: str):
    meta, total, pieces = footer
    return SparseFile(total, pieces, str(path))
