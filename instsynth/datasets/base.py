"""The dataset seam: what every format gives the rest of InstSynth.

Why a seam: selection, composition, rows, exports and training must not know a folder layout or how a
dataset encodes its classes.  A format turns one image into two things every stage can use - the RGB
image and an *index map* (uint16, 0 = unlabelled, k = region k) with a table of its regions (the
dataset's own id, class id and name, thing or stuff, crowd) - and describes its classes once, as a
``LabelSpace``.  Everything downstream speaks regions and label spaces only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from instsynth.errors import DataError  # noqa: F401 - raised here, importable from here
from instsynth.io import storage
from instsynth.plan.select import select_instances

cv2.setNumThreads(1)


@dataclass(frozen=True)
class ClassInfo:
    """One class of a label space: the dataset's own id and name, whether it has instances (thing),
    whether Phase 1 may select it and whether evaluation scores it, and the noun a prompt uses."""

    id: int
    name: str
    thing: bool = True
    selectable: bool = True
    evaluated: bool = True
    noun: str = ""


class LabelSpace:
    """The classes of a dataset, by id and by name."""

    def __init__(self, name: str, classes: list[ClassInfo]):
        self.name = name
        self.classes = sorted(classes, key=lambda c: c.id)
        self.by_id = {c.id: c for c in self.classes}
        self.by_name = {c.name: c for c in self.classes}

    @property
    def selectable(self) -> list[str]:
        """Names Phase 1 may select (the default of ``plan.classes``), in id order."""
        return [c.name for c in self.classes if c.thing and c.selectable]

    @property
    def evaluated(self) -> list[str]:
        """Names of the evaluated thing classes, in id order: what stats count, exports write and
        training learns (index i of this list is class index i of a model)."""
        return [c.name for c in self.classes if c.thing and c.evaluated]

    def position(self, name: str) -> int:
        """A class's position among all classes in id order (the rows' ``class_label``); -1 if none."""
        c = self.by_name.get(name)
        return self.classes.index(c) if c else -1

    def noun(self, name: str) -> str:
        c = self.by_name.get(name)
        return (c.noun or c.name) if c else name

    def check_classes(self, names, key: str) -> None:
        """One line naming ``key`` and listing the valid names when a name is not selectable."""
        valid = self.selectable
        bad = [n for n in names if n not in valid]
        if bad:
            raise DataError(f"{key}: {bad} are not selectable classes of {self.name}; valid: {valid}")

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "classes": [asdict(c) for c in self.classes]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LabelSpace:
        d = json.loads(text)
        return cls(d["name"], [ClassInfo(**c) for c in d["classes"]])

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelSpace) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is and how to read it; small and picklable, so it travels to every task.
    ``source``: a Cityscapes root or a COCO instances JSON; ``image_root``: where COCO ``file_name``s
    resolve (None for Cityscapes, whose images sit under its root); ``labels``: a run's per-image label
    file (``plan.labels.parquet``, COCO): prepare tasks read their images' annotations from it instead of
    the whole annotation file."""

    format: str
    source: str
    image_root: str | None = None
    labels: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class ImageRef:
    """One image of a split: what a plan row records of its source.  ``image``: the image file relative
    to the image root; ``labels``: the label file relative to the root ('' when labels live in an
    annotation file); ``width``/``height``: from the annotation (0 when the format has none)."""

    image_id: str
    split: str
    group: str
    image: str
    labels: str = ""
    width: int = 0
    height: int = 0


#: fields of one region of an index map (also the row's ``regions`` struct, see instsynth.output.schema)
REGION_FIELDS = ("index", "source_id", "class_id", "class_name", "thing", "crowd")


@dataclass
class Labels:
    """An index map (HxW uint16, 0 = unlabelled) and its regions (``regions[k-1]`` describes index k)."""

    index: np.ndarray
    regions: list[dict] = field(default_factory=list)

    def counts(self) -> np.ndarray:
        return np.bincount(self.index.ravel(), minlength=len(self.regions) + 1)

    def instances(self) -> np.ndarray:
        """Bool per index value: region k is an instance (a thing, not a crowd region)."""
        out = np.zeros(len(self.regions) + 1, bool)
        for r in self.regions:
            out[r["index"]] = r["thing"] and not r["crowd"]
        return out

    def index_of(self, source_id: int) -> int:
        for r in self.regions:
            if r["source_id"] == source_id:
                return r["index"]
        return 0


def things_of(regions: list[dict]) -> list[list[int]]:
    """The instance regions of a table as ``[index, class_id, crowd]``: all that training targets need of it,
    small enough to travel in a commit marker (crowd regions stay, marked, so that targets can skip them)."""
    return [[r["index"], r["class_id"], int(r["crowd"])] for r in regions if r["thing"]]


def region(index: int, source_id: int, info: ClassInfo | None, class_id: int, crowd: bool) -> dict:
    return {"index": int(index), "source_id": int(source_id), "class_id": int(class_id),
            "class_name": info.name if info else f"class-{class_id}", "thing": bool(info.thing) if info else False,
            "crowd": bool(crowd)}


def compact(index: np.ndarray, regions: list[dict] | dict[int, dict]) -> Labels:
    """The regions present in ``index`` renumbered 1..n in their old order (a window's own table);
    ``regions``: the table of ``index`` (a list, or a dict by index holding at least those present)."""
    present = np.flatnonzero(np.bincount(index.ravel(), minlength=1))
    present = present[present > 0]
    get = regions.__getitem__ if isinstance(regions, dict) else (lambda v: regions[v - 1])
    lut = np.zeros(int(index.max(initial=0)) + 1, np.uint16)
    out = []
    for k, old in enumerate(present.tolist(), 1):
        lut[old] = k
        out.append({**get(old), "index": k})
    return Labels(lut[index], out)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """PNG/JPEG bytes -> HxWx3 uint8 RGB; DataError naming ``name`` when it cannot be decoded."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if arr is None:
        raise DataError(f"{name}: cannot decode image (truncated or not an image)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_index(data: bytes, name: str) -> np.ndarray:
    """16-bit PNG bytes -> HxW uint16 map, lossless; any other depth is refused naming the file."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise DataError(f"{name}: cannot decode id map (truncated or not a PNG)")
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a single-channel 16-bit map, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        bits = arr.dtype.itemsize * 8
        raise DataError(f"{name}: map is {bits}-bit ({arr.dtype}); expected 16-bit")
    return arr


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes, or a 2-D uint16/uint8 map -> 16/8-bit PNG bytes (lossless)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError("cannot encode PNG")
    return buf.tobytes()


def encode_index(index: np.ndarray) -> bytes:
    if index.min(initial=0) < 0 or index.max(initial=0) > 65535:
        raise DataError("id map values must lie in 0..65535")
    return encode_png(index.astype(np.uint16))


def read_map(root: str, rel: str, missing: str) -> np.ndarray:
    """A dataset's 16-bit label map ``rel`` under ``root``; DataError ``"{missing}: {rel} is missing"`` when
    the file is absent (the plan counts those), else naming the file and what is wrong with it."""
    path = storage.join(root, rel)
    try:
        return decode_index(storage.read_bytes(path), path)
    except storage.StorageError as e:
        if not storage.exists(path):
            raise DataError(f"{missing}: {rel} is missing") from None
        raise DataError(str(e)) from None


def check_size(image: np.ndarray, labels: np.ndarray, image_name: str, labels_name: str) -> None:
    if image.shape[:2] != labels.shape[:2]:
        raise DataError(f"{image_name}: size {image.shape[1]}x{image.shape[0]} does not match "
                        f"{labels_name} {labels.shape[1]}x{labels.shape[0]}")


class Dataset:
    """The protocol every format implements (see cityscapes.py, coco.py)."""

    format = ""
    spec: DatasetSpec
    label_space: LabelSpace

    def discover(self, split: str) -> Iterator[ImageRef]:
        """Every image of ``split`` with labels to read, in a fixed order."""
        raise NotImplementedError

    def failures(self, split: str) -> Iterator[dict]:
        """Per-record problems found while discovering ``split`` ({image_id, file, reason}): the plan
        records them and goes on."""
        return iter(())

    def load_labels(self, ref: ImageRef) -> Labels:
        """The image's index map and regions, without decoding its pixels (the plan needs only these)."""
        raise NotImplementedError

    def select(self, ref: ImageRef, top_k: int, min_pixels: int, classes: list[str] | None):
        """(Eq. 1's instances, (height, width)) of one image; formats may override it with a cheaper
        equivalent (COCO ranks on RLEs without painting the index map)."""
        labels = self.load_labels(ref)
        return select_instances(labels, top_k, min_pixels, classes), labels.index.shape

    def image_path(self, rel: str) -> str:
        """Full path of an image file given relative to the image root."""
        raise NotImplementedError

    def read_image(self, rel: str) -> np.ndarray:
        path = self.image_path(rel)
        try:
            return decode_image(storage.read_bytes(path), path)
        except storage.StorageError as e:
            raise DataError(str(e)) from None

    def load(self, ref: ImageRef) -> tuple[np.ndarray, Labels]:
        """(RGB image, labels) of one image; DataError when they disagree in size."""
        labels = self.load_labels(ref)
        image = self.read_image(ref.image)
        check_size(image, labels.index, ref.image, ref.labels or f"the annotations of image {ref.image_id}")
        return image, labels
