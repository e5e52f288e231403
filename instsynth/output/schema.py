"""The row: its Arrow schema, what each field means, and the one function that builds a row.

Why one module: the shards, the dataset card, the README's schema table and the Hugging Face features
are all made from ``FIELDS`` (a test compares the README with it), and ``make_row`` is the only place a
row is written, so a field is added in one place.

A row is dataset-neutral: the crop, an index map of every labelled region in it (``labels``: 16-bit
PNG, 0 = unlabelled, k = ``regions[k-1]``) and the region table (the dataset's own id, class id and
name, thing or stuff, crowd).  Rows written before this format (``instance_ids``: a Cityscapes
``classId*1000+k`` map, ``city``) still read everywhere: ``labels_of`` and ``normalize`` give every
reader the same view of both, and such outputs are never rewritten.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from instsynth.datasets import Labels, LabelSpace, cityscapes_space, decode_index, encode_index
from instsynth.datasets.cityscapes import regions_from_ids
from instsynth.io import storage

#: Row format of the current writer; 1 = the Cityscapes-only rows (``instance_ids``, ``city``).
ROW_FORMAT = 2
FORMAT_KEY = b"instsynth.row_format"

REGION_TYPE = pa.struct([("index", pa.int32()), ("source_id", pa.int64()), ("class_id", pa.int32()),
                         ("class_name", pa.string()), ("thing", pa.bool_()), ("crowd", pa.bool_())])
BOX = pa.list_(pa.int32(), 4)

#: (name, Arrow type, what it holds) - the order of the columns
FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("work_id", pa.string(), "deterministic id of the work item: `{image_id}_{instance_id}_v{variant}`"),
    ("image_id", pa.string(), "the source image's id in its dataset (Cityscapes: the file stem; COCO: the image id)"),
    ("split", pa.string(), "source split (COCO: the annotation file's name, e.g. `train2017`)"),
    ("group", pa.string(), "the source's grouping (Cityscapes: the city; COCO: the image's sub-folder, '' if none); "
                           "was `city`"),
    ("dataset", pa.string(), "the source's format: `cityscapes` or `coco`"),
    ("instance_id", pa.int64(), "the synthesized instance's id in its dataset (Cityscapes: its instanceIds value; "
                                "COCO: the annotation id); 0 for original frames"),
    ("instance_index", pa.int32(), "the synthesized instance's value in `labels` (0 for original frames)"),
    ("class_id", pa.int32(), "its class id in the dataset's label space (COCO: `category_id`)"),
    ("class_name", pa.string(), "its class name ('' for original frames)"),
    ("class_label", pa.int32(), "its class's position in the label space (classes in id order; a `ClassLabel` "
                                "whose names the card lists); -1 for original frames"),
    ("image", pa.binary(), "the focused crop, PNG bytes (RGB); original frames: the source file's bytes"),
    ("labels", pa.binary(), "index map of the crop, 16-bit PNG bytes: 0 = unlabelled, k = `regions[k-1]`; every "
                            "labelled region in view, stuff included"),
    ("regions", pa.list_(REGION_TYPE), "one entry per value of `labels`: index, the dataset's own id (`source_id`), "
                                       "class id and name, thing (has instances) and crowd flags"),
    ("width", pa.int32(), "crop width in pixels"),
    ("height", pa.int32(), "crop height in pixels"),
    ("bbox", BOX, "box of the synthesized instance in the crop [x0, y0, x1, y1), exclusive ends"),
    ("crop_box", BOX, "the focused window in the source image [x0, y0, x1, y1)"),
    ("square_box", BOX, "Phase 1's square crop in the source image (may extend outside for huge instances)"),
    ("lam", pa.float64(), "lambda drawn for Eq. 2 (S_N = lambda * A_ins)"),
    ("prompt", pa.string(), "the category-driven prompt"),
    ("negative_prompt", pa.string(), "negative prompt ('' if none)"),
    ("generator", pa.string(), "generator name (`original` for unmodified training images)"),
    ("model_id", pa.string(), "model path or hub id"),
    ("model_revision", pa.string(), "model revision ('' if unpinned)"),
    ("seed", pa.int64(), "the run seed"),
    ("gen_seed", pa.int64(), "the per-item generator seed derived from (seed, work_id)"),
    ("variant", pa.int32(), "variant index of this instance"),
    ("source_image", pa.string(), "source image path relative to the dataset's image root"),
    ("gen_stats", pa.string(), "JSON: the generator's own per-sample numbers"),
]

ROW_SCHEMA = pa.schema([(n, t) for n, t, _ in FIELDS], metadata={FORMAT_KEY: str(ROW_FORMAT).encode()})
ROW_DOCS = {n: doc for n, _, doc in FIELDS}
#: PNG columns stored verbatim (no compression, no dictionary): a reader fetches one row's PNG with one
#: ranged read at the offset its commit marker records
RAW_COLUMNS = ("image", "labels")

#: the columns of format 1 that stand in for the format-2 ones
LEGACY = {"labels": ["instance_ids"], "regions": ["instance_ids"], "instance_index": ["instance_ids", "instance_id"],
          "group": ["city"], "class_id": ["class_name"], "class_label": ["class_name"], "dataset": []}


def make_row(*, work_id: str, image_id: str, split: str, group: str, dataset: str, instance_id: int,
             class_id: int, class_name: str, class_label: int, image: bytes, labels: Labels, bbox, crop_box, square_box,
             lam: float, prompt: str, negative_prompt: str, generator: dict, seed: int, gen_seed: int,
             variant: int, source_image: str, gen_stats: dict, instance_index: int = 0) -> dict:
    """One row of ``ROW_SCHEMA``: the only place rows are built (synth's compose and originals)."""
    h, w = labels.index.shape
    return {
        "work_id": work_id, "image_id": image_id, "split": split, "group": group, "dataset": dataset,
        "instance_id": int(instance_id), "instance_index": int(instance_index), "class_id": int(class_id),
        "class_name": class_name, "class_label": int(class_label), "image": image, "labels": encode_index(labels.index),
        "regions": [dict(r) for r in labels.regions], "width": int(w), "height": int(h),
        "bbox": [int(v) for v in bbox], "crop_box": [int(v) for v in crop_box],
        "square_box": [int(v) for v in square_box], "lam": float(lam), "prompt": prompt,
        "negative_prompt": negative_prompt, "generator": generator["generator"], "model_id": generator["model_id"],
        "model_revision": generator["model_revision"], "seed": int(seed), "gen_seed": int(gen_seed),
        "variant": int(variant), "source_image": source_image, "gen_stats": json.dumps(gen_stats, sort_keys=True),
    }


def row_format(schema: pa.Schema) -> int:
    return ROW_FORMAT if "labels" in schema.names else 1


def read_columns(schema: pa.Schema, wanted: list[str] | None) -> list[str] | None:
    """The columns to read from a part of either format to serve ``wanted`` (format-2 names)."""
    if wanted is None or row_format(schema) == ROW_FORMAT:
        return wanted
    out = []
    for c in wanted:
        for s in (LEGACY[c] if c in LEGACY else [c]):
            if s in schema.names and s not in out:
                out.append(s)
    return out


def labels_of(row: dict) -> Labels:
    """The row's index map and regions, from either format (format 1: the Cityscapes map converted)."""
    if "labels" in row:
        index = decode_index(row["labels"], row.get("work_id", "") + ":labels")
        return Labels(index, list(row["regions"]))

    return regions_from_ids(decode_index(row["instance_ids"], row.get("work_id", "") + ":instance_ids"))


def normalize(row: dict) -> dict:
    """A row of either format with the format-2 fields its reader asked for (the map decoded only when
    ``labels``-derived fields are needed for a format-1 row)."""
    if "instance_ids" not in row and "city" not in row:
        return row
    out = dict(row)
    if "city" in out:
        out["group"] = out.pop("city")
    out.setdefault("dataset", "cityscapes")
    if "class_name" in out and "class_id" not in out:
        info = cityscapes_space().by_name.get(out["class_name"])
        out["class_id"] = info.id if info else 0
        out["class_label"] = cityscapes_space().position(out["class_name"])
    if "instance_ids" in out:
        lab = labels_of(out)
        out["labels"] = encode_index(lab.index)
        out["regions"] = lab.regions
        iid = out.get("instance_id") or 0
        out["instance_index"] = lab.index_of(iid) if iid else 0
        del out["instance_ids"]
    return out


def instance_mask(row: dict, labels: Labels | None = None) -> np.ndarray | None:
    """The synthesized instance's mask in the row's crop (None for original frames)."""
    labels = labels or labels_of(row)
    if "labels" in row:
        k = row.get("instance_index") or 0
    else:
        k = labels.index_of(row.get("instance_id") or 0) if row.get("instance_id") else 0
    return labels.index == k if k else None


def visible(labels: Labels, space: LabelSpace) -> dict[str, int]:
    """Instances per evaluated class visible in a map (Table I's "visible" counts)."""
    evaluated = set(space.evaluated)
    counts = np.bincount(labels.index.ravel(), minlength=len(labels.regions) + 1)
    out: dict[str, int] = {}
    for r in labels.regions:
        if r["thing"] and not r["crowd"] and r["class_name"] in evaluated and counts[r["index"]]:
            out[r["class_name"]] = out.get(r["class_name"], 0) + 1
    return out


# -- the schema as text and as Hugging Face features ------------------------------------------------

def _type_name(t: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(t):
        return f"list<{t.value_type}>[{t.list_size}]"
    if pa.types.is_list(t):
        return "list<struct<" + ", ".join(f"{f.name}: {f.type}" for f in t.value_type) + ">>"
    return str(t)


def markdown_table() -> str:
    """The schema as a Markdown table (the README's and the card's)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{n}` | `{_type_name(t)}` | {doc} |" for n, t, doc in FIELDS]
    return "\n".join(lines)


ARROW_TO_HF = {"string": "string", "int32": "int32", "int64": "int64", "double": "float64", "binary": "binary",
               "bool": "bool"}


def hf_features(space: LabelSpace | None = None) -> list[dict]:
    """``dataset_info.features`` of the card: PNGs decode as images (``labels`` is 16-bit: PIL opens it as
    I;16, losslessly), boxes as fixed-length sequences, the region table as a list of structs and
    ``class_label`` as a ``ClassLabel`` carrying the label space's names."""
    out = []
    for n, t, _ in FIELDS:
        if n == "class_label" and space is not None:
            out.append({"name": n, "dtype": {"class_label": {"names": {str(i): c.name
                                                                        for i, c in enumerate(space.classes)}}}})
        elif n in ("image", "labels"):
            out.append({"name": n, "dtype": "image"})
        elif pa.types.is_fixed_size_list(t):
            out.append({"name": n, "list": ARROW_TO_HF[str(t.value_type)], "length": t.list_size})
        elif pa.types.is_list(t):
            out.append({"name": n, "list": [{"name": f.name, "dtype": ARROW_TO_HF[str(f.type)]}
                                            for f in t.value_type]})
        else:
            out.append({"name": n, "dtype": ARROW_TO_HF[str(t)]})
    return out


BEGIN, END = "<!-- schema:begin (generated: python -m instsynth.output.schema) -->", "<!-- schema:end -->"


def update_readme(path: str) -> bool:
    """Rewrite the table between the README's schema markers from ``FIELDS``; True if it changed."""
    text = storage.read_bytes(path).decode()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:a] + "\n" + markdown_table() + "\n" + text[b:]
    if new != text:
        storage.write_bytes(path, new.encode())
    return new != text


if __name__ == "__main__":
    import os
    import sys

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    print(f"{readme}: {'updated' if update_readme(readme) else 'already up to date'}", file=sys.stderr)
