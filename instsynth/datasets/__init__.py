"""Datasets come in here, and only here: a registry of formats by name (detectron2's DatasetCatalog
idea), each turning its files into RGB images, index maps with region tables, and a label space.

    spec = resolve(source, format="auto", image_root=None)   # a Cityscapes root or a COCO JSON
    ds = open_dataset(spec)                                  # made once per process
    for ref in ds.discover("train"): labels = ds.load_labels(ref) ...

Adding a format: a module beside ``coco.py`` with a ``Dataset`` subclass, one entry in ``FORMATS`` and
one rule in ``detect``.
"""

from __future__ import annotations

import functools

from instsynth.datasets import mapillary
from instsynth.datasets.base import (
    ClassInfo,
    DataError,
    Dataset,
    DatasetSpec,
    ImageRef,
    Labels,
    LabelSpace,
    compact,
    decode_image,
    decode_index,
    encode_index,
    encode_png,
    things_of,
)
from instsynth.datasets.cityscapes import _SPACE, CityscapesDataset
from instsynth.datasets.coco import CocoDataset, CocoLabelFile, default_image_root
from instsynth.datasets.mapillary import MapillaryDataset
from instsynth.io import storage

__all__ = ["ClassInfo", "DataError", "Dataset", "DatasetSpec", "ImageRef", "Labels", "LabelSpace", "compact",
           "decode_image", "decode_index", "encode_index", "encode_png", "things_of", "FORMATS", "detect", "resolve",
           "open_dataset", "move", "check_reachable", "cityscapes_space"]

FORMATS: dict[str, type[Dataset]] = {"cityscapes": CityscapesDataset, "coco": CocoDataset,
                                     "mapillary": MapillaryDataset}


def detect(source: str) -> str:
    """``auto``: a ``.json`` path is COCO, a folder with ``leftImg8bit/`` is Cityscapes, a folder with
    ``config_v2.0.json`` is Mapillary Vistas v2.0."""
    if str(source).lower().endswith(".json"):
        return "coco"
    if storage.is_dir(storage.join(source, "leftImg8bit")):
        return "cityscapes"
    if mapillary.is_root(source):
        return "mapillary"
    raise DataError(f"{source}: not a dataset (neither a COCO instances .json, a Cityscapes root with "
                    "leftImg8bit/ nor a Mapillary Vistas root with config_v2.0.json)")


def resolve(source: str, format: str = "auto", image_root: str | None = None) -> DatasetSpec:
    """The spec of a dataset given on the command line or in a config (paths made absolute)."""
    if format not in ("auto", *FORMATS):
        raise DataError(f"dataset.format: {format!r} is not a format; valid: auto, {', '.join(FORMATS)}")
    source = storage.absolute(source)
    fmt = detect(source) if format == "auto" else format
    if fmt == "coco":
        if not storage.exists(source):
            raise DataError(f"{source}: no such COCO instances file")
        root = storage.absolute(image_root) if image_root else default_image_root(source)
        if root is None:
            raise DataError(f"{source}: pass --image-root DIR (dataset.image_root): the images' folder is implied "
                            "only for <root>/annotations/instances_<name>.json")
        return DatasetSpec("coco", source, root)
    if fmt == "cityscapes" and not storage.is_dir(storage.join(source, "leftImg8bit")):
        raise DataError(f"{source}: not a Cityscapes root (no leftImg8bit/)")
    if fmt == "mapillary" and not storage.exists(storage.join(source, "config_v2.0.json")):
        raise DataError(f"{source}: not a Mapillary Vistas v2.0 root (no config_v2.0.json)")
    return DatasetSpec(fmt, source, None)


def move(spec: DatasetSpec | None, data_root: str | None = None, image_root: str | None = None) -> DatasetSpec | None:
    """``spec`` with its source moved to ``data_root`` (``--data-root``: the Cityscapes root or the COCO
    JSON, e.g. the same data mounted elsewhere) and a COCO dataset's images to ``image_root``."""
    if not (data_root or image_root):
        return spec
    if spec is None:
        return resolve(data_root, "auto", image_root) if data_root else None
    src = data_root or spec.source
    if spec.format == "coco":
        return resolve(src, "coco", image_root or default_image_root(src) or spec.image_root)
    return resolve(src, spec.format)


def open_dataset(spec: DatasetSpec) -> Dataset:
    """The dataset of ``spec``, made once per process (a COCO file is parsed once, not once per task) and
    again when its annotation file changed (a long-lived worker may serve several runs).  With a per-image
    label file (``spec.labels``) a COCO dataset reads only the rows its images need from it."""
    stamp = storage.size(spec.labels or spec.source) if spec.format == "coco" else None
    return _open(spec, stamp)


@functools.lru_cache(maxsize=4)
def _open(spec: DatasetSpec, stamp) -> Dataset:
    if spec.format == "coco" and spec.labels:
        return CocoLabelFile(spec)
    return FORMATS[spec.format](spec)


def check_reachable(spec: DatasetSpec) -> None:
    """One line naming what is missing when a dataset's source or images are not where its spec says."""
    if spec.format == "cityscapes" and not storage.is_dir(storage.join(spec.source, "leftImg8bit")):
        raise DataError(f"{spec.source} is not reachable (no leftImg8bit/ there)")
    if spec.format == "mapillary" and not storage.exists(storage.join(spec.source, "config_v2.0.json")):
        raise DataError(f"{spec.source} is not reachable (no config_v2.0.json there)")
    if spec.format == "coco":
        if not storage.exists(spec.source):
            raise DataError(f"{spec.source} is not reachable (no such file)")
        if spec.image_root and not storage.is_dir(spec.image_root):
            raise DataError(f"{spec.image_root} is not reachable (no such folder)")


def cityscapes_space() -> LabelSpace:
    """Cityscapes' label space: what outputs written before label spaces were recorded carry."""
    return _SPACE
