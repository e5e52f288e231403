"""Which dataset an output dir came from: its spec (format, source, image root) and label space.

Why here and once: status, stats, preview, report, quality, export and training take output dirs and
must find the source images and class names without being told.  A run writes ``OUT/dataset.json``
(the plan's metadata holds the same); dirs written before it have neither and are Cityscapes.
"""

from __future__ import annotations

import json

from instsynth.datasets import (
    DataError,
    Dataset,
    DatasetSpec,
    LabelSpace,
    check_reachable,
    cityscapes_space,
    move,
    open_dataset,
)
from instsynth.io import storage
from instsynth.plan.planner import plan_dataset, plan_label_space, read_plan_schema

DATASET_FILE = "dataset.json"


def write_dataset_info(out: str, spec: DatasetSpec, space: LabelSpace) -> None:
    info = {"dataset": json.loads(spec.to_json()), "label_space": json.loads(space.to_json())}
    storage.write_bytes(storage.join(out, DATASET_FILE), json.dumps(info, indent=1, sort_keys=True).encode())


def output_dataset(out: str) -> tuple[DatasetSpec | None, LabelSpace]:
    """(the source's spec or None when unrecorded, its label space) of an output dir."""
    path = storage.join(out, DATASET_FILE)
    if storage.exists(path):
        try:
            info = json.loads(storage.read_bytes(path))
            return (DatasetSpec(**info["dataset"]),
                    LabelSpace.from_json(json.dumps(info["label_space"])))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}: not a readable dataset record") from None
    plan = storage.join(out, "plan.parquet")
    if storage.exists(plan):
        table = read_plan_schema(plan)  # the footer's metadata is all it needs
        return plan_dataset(table), plan_label_space(table)
    return None, cityscapes_space()


def label_space(dirs: list[str]) -> LabelSpace:
    """The one label space of ``dirs``; dirs of different label spaces are refused naming both."""
    spaces = [(d, output_dataset(d)[1]) for d in dirs]
    for d, s in spaces[1:]:
        if s != spaces[0][1]:
            raise DataError(f"{spaces[0][0]} ({spaces[0][1].name}) and {d} ({s.name}) have different label spaces")
    return spaces[0][1] if spaces else cityscapes_space()


def source_dataset(out: str, data_root: str | None = None, image_root: str | None = None,
                   optional: bool = False) -> Dataset | None:
    """The dataset ``out`` was made from, opened and reachable (the before panels, quality and the report's
    links need its images); ``data_root``/``image_root`` move it.  One line naming it when it is not.
    ``optional``: None when ``out`` records no source and none is given (a recorded one must be reachable).
    The one place an output dir's source is found (preview, quality, the site)."""
    spec = move(output_dataset(out)[0], data_root, image_root)
    if spec is None and optional:
        return None
    if spec is None:
        raise DataError(f"{out}: no recorded source (no dataset.json or plan.parquet; is it an InstSynth output dir?)")
    try:
        check_reachable(spec)
        return open_dataset(spec)
    except DataError as e:
        raise DataError(f"{out}: the source recorded for it is not reachable ({e})") from None
