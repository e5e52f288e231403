"""The original training images as rows (generator ``original``, no crop).

Why: "original + synthetic" training is then just a list of output dirs with one schema, and the
originals are written once, not once per generator.  Same unit commits, resume, writer lease and
work-id claims as ``synth``; any dataset the seam reads (Cityscapes root, COCO JSON).
"""

from __future__ import annotations

from instsynth.config import Config, to_yaml
from instsynth.datasets import DataError, Dataset, ImageRef, decode_image, open_dataset
from instsynth.errors import SynthError
from instsynth.io import storage
from instsynth.output.card import write_card
from instsynth.output.commits import commit_unit
from instsynth.output.schema import make_row
from instsynth.output.session import WriterSession, check_config, path_inside
from instsynth.output.sources import write_dataset_info
from instsynth.plan.planner import dataset_spec
from instsynth.synth.stages import PendingUnits

NO_MODEL = {"generator": "original", "model_id": "", "model_revision": ""}


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a PNG header without decoding the pixels; other formats are decoded."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    img = decode_image(data, name)
    return img.shape[1], img.shape[0]


def original_row(ds: Dataset, ref: ImageRef) -> dict:
    """The source file's bytes as they are, with the image's whole label map."""
    path = ds.image_path(ref.image)
    try:
        image = storage.read_bytes(path)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    labels = ds.load_labels(ref)
    w, h = image_size(image, ref.image)
    if (w, h) != (labels.index.shape[1], labels.index.shape[0]):
        raise DataError(f"{ref.image}: size {w}x{h} does not match {ref.labels or 'its annotation entry'} "
                        f"{labels.index.shape[1]}x{labels.index.shape[0]}")
    return make_row(work_id=ref.image_id, image_id=ref.image_id, split=ref.split, group=ref.group, dataset=ds.format,
                    instance_id=0, class_id=0, class_name="", class_label=-1, image=image, labels=labels,
                    bbox=(0, 0, 0, 0), crop_box=(0, 0, w, h), square_box=(0, 0, 0, 0), lam=0.0, prompt="",
                    negative_prompt="", generator=NO_MODEL, seed=0, gen_seed=0, variant=0, source_image=ref.image,
                    gen_stats={})


def write_originals(source: str, out: str, cfg: Config, log=print) -> dict:
    """Write (or resume writing) the split's original images into ``out``, in the same writer session
    (lease, work-id claims, tidy-up, run record) as ``synth`` (checks first, nothing written if they fail)."""
    spec = dataset_spec(source, cfg)
    if path_inside(out, spec.source) or (spec.image_root and path_inside(out, spec.image_root)):
        raise SynthError(f"--out {out} lies inside the input tree {spec.image_root or spec.source}; "
                         "originals never writes there")
    check_config(out, cfg, overwrite=False)
    ds = open_dataset(spec)
    refs = list(ds.discover(cfg.plan.split))
    with WriterSession(out, cfg, log) as session:
        storage.write_bytes(storage.join(out, "config.yaml"), to_yaml(cfg).encode())
        write_dataset_info(out, spec, ds.label_space)
        rows = [{"work_id": r.image_id, "ref": i} for i, r in enumerate(refs)]
        units = PendingUnits.of(rows, session.ledger.covered_ids(), cfg.run.rows_per_unit)
        if units:
            session.before_commits()
        for name, chunk in units:
            out_rows, failures = [], []
            for r in chunk:
                try:
                    out_rows.append(original_row(ds, refs[r["ref"]]))
                except (DataError, storage.StorageError) as e:
                    failures.append({"work_id": r["work_id"], "image_id": r["work_id"], "stage": "originals",
                                     "reason": str(e), "details": ""})
            session.on_commit(commit_unit(out, name, out_rows, failures, writer=session.run_id))
        session.finish({"executor": "originals", "generator": "original"})
        good, bad = session.verified()
        summary = {"images": len(refs), "rows": sum(m["rows"] for m in good.values()),
                   "failures": sum(m["failures"] for m in good.values())}
        write_card(out, cfg, {"committed_rows": summary["rows"], "planned": len(refs),
                              "failed_items": summary["failures"], "damaged_units": sorted(bad),
                              "pending_items": len(refs) - len(session.ledger.covered_ids(good))},
                   session.ledger, generator="original")
    log(f"originals: {summary['rows']} images committed to {out} ({summary['failures']} failures)")
    return summary
