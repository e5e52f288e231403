"""The original training images as IS-Cityscapes rows (generator ``original``, no crop).

Why: "original + synthetic" training is then just a list of output dirs with one schema, and the
originals are written once, not once per generator.  Same unit commits, resume, writer lease and
work-id claims as ``synth``.
"""

from __future__ import annotations

from instsynth import shards, storage
from instsynth.card import write_card
from instsynth.cityscapes import DataError, decode_image, discover
from instsynth.config import Config, to_yaml
from instsynth.session import WriterSession, check_config, path_inside
from instsynth.synth import SynthError, pending_units


def png_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a PNG header, without decoding the pixels."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    img = decode_image(data, name)
    return img.shape[1], img.shape[0]


def original_row(root: str, rec) -> dict:
    image = storage.read_bytes(storage.join(root, rec.image))
    ids = storage.read_bytes(storage.join(root, rec.instance_ids))
    w, h = png_size(image, rec.image)
    wi, hi = png_size(ids, rec.instance_ids)
    if (w, h) != (wi, hi):
        raise DataError(f"{rec.image}: size {w}x{h} does not match {rec.instance_ids} {wi}x{hi}")
    return {
        "work_id": rec.image_id, "image_id": rec.image_id, "split": rec.split, "city": rec.city,
        "instance_id": 0, "class_name": "", "image": image, "instance_ids": ids, "width": w, "height": h,
        "bbox": [0, 0, 0, 0], "crop_box": [0, 0, w, h], "square_box": [0, 0, 0, 0], "lam": 0.0,
        "prompt": "", "negative_prompt": "", "generator": "original", "model_id": "", "model_revision": "",
        "seed": 0, "gen_seed": 0, "variant": 0, "source_image": rec.image, "gen_stats": "{}",
    }


def write_originals(root: str, out: str, cfg: Config, log=print) -> dict:
    """Write (or resume writing) the split's original images into ``out``, in the same writer session
    (lease, work-id claims, tidy-up, run record) as ``synth`` (checks first, nothing written if they fail)."""
    if path_inside(out, root):
        raise SynthError(f"--out {out} lies inside the input tree {root}; originals never writes there")
    check_config(out, cfg, overwrite=False)
    recs = list(discover(root, cfg.plan.split))
    with WriterSession(out, cfg, log) as session:
        storage.write_bytes(storage.join(out, "config.yaml"), to_yaml(cfg).encode())
        rows = [{"work_id": r.image_id, "rec": r} for r in recs]
        units = pending_units(rows, session.ledger.covered_ids(), cfg.run.rows_per_unit)
        if units:
            session.before_commits()
        for name, chunk in units:
            out_rows, failures = [], []
            for r in chunk:
                try:
                    out_rows.append(original_row(root, r["rec"]))
                except (DataError, storage.StorageError) as e:
                    failures.append({"work_id": r["work_id"], "image_id": r["work_id"], "stage": "originals",
                                     "reason": str(e), "details": ""})
            session.on_commit(shards.commit_unit(out, name, out_rows, failures, writer=session.run_id))
        session.finish({"executor": "originals", "generator": "original"})
        good, bad = session.verified()
        summary = {"images": len(recs), "rows": sum(m["rows"] for m in good.values()),
                   "failures": sum(m["failures"] for m in good.values())}
        write_card(out, cfg, {"committed_rows": summary["rows"], "planned": len(recs),
                              "failed_items": summary["failures"], "damaged_units": sorted(bad),
                              "pending_items": len(recs) - len(session.ledger.covered_ids(good))},
                   session.ledger, generator="original")
    log(f"originals: {summary['rows']} images committed to {out} ({summary['failures']} failures)")
    return summary
