"""The training sample stream: shuffled epochs over both sources, an exact synthetic ratio, crops that
are a pure function of (seed, epoch, work_id), and a sequence that a resumed run continues."""

import os

import numpy as np
import pytest

from instsynth.config import load_config
from instsynth.synth.originals import write_originals
from instsynth.train.data import Catalog, augment, build_catalog, crop_rng, global_samples, load_samples

DEBUG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "configs", "debug.yaml")


def _catalog(n_orig=10, n_synth=7, ratio=None, seed=0):
    return Catalog([("o.parquet", i, f"orig-{i}") for i in range(n_orig)],
                   [("s.parquet", i, f"syn-{i}") for i in range(n_synth)], ratio, seed)


def test_epochs_mix_both_sources_and_change_order():
    c = _catalog()
    e0, e1 = c.epoch(0), c.epoch(1)
    assert len(e0) == c.epoch_len == 17 and sorted(e0) == sorted(e1)  # all rows, every epoch
    kinds = "".join("o" if w.startswith("orig") else "s" for _, _, w in e0)
    assert kinds not in ("o" * 10 + "s" * 7, "s" * 7 + "o" * 10)  # not one source after the other
    assert "s" in kinds[:8] and "o" in kinds[-8:]
    assert e0 != e1  # reshuffled every epoch
    assert e0 == _catalog().epoch(0)  # a pure function of (seed, epoch)
    assert e0 != _catalog(seed=1).epoch(0)


@pytest.mark.parametrize("ratio,expected", [(0.5, 5), (0.25, 2), (1.0, 10), (2.0, 20), (0.0, 0)])
def test_synthetic_ratio_is_exact_per_epoch(ratio, expected):
    c = _catalog(ratio=ratio)
    for e in range(3):
        rows = c.epoch(e)
        synth = [r for r in rows if r[2].startswith("syn")]
        assert len(synth) == expected and len(rows) == 10 + expected
        if expected <= 7:
            assert len(set(synth)) == expected  # drawn without replacement while there are enough
    if 0 < expected < 7:
        assert {r for r in c.epoch(0) if r[2].startswith("syn")} != {r for r in c.epoch(1) if r[2].startswith("syn")}


def test_global_sample_arithmetic_covers_each_step_once():
    # batch 8 = 2 workers x micro-batch 2 x 2 accumulation steps; 3 steps from step 5
    seen = []
    for rank in range(2):
        local = np.arange(3 * 2 * 2)
        seen += global_samples(local, start_step=5, batch_size=8, worker_batch=2, accum=2, rank=rank, world=2).tolist()
    assert sorted(seen) == list(range(5 * 8, 8 * 8))
    # a run resumed at step 6 continues with exactly the samples the uninterrupted run had there
    full = global_samples(np.arange(12), 5, 8, 2, 2, 0, 2)
    resumed = global_samples(np.arange(8), 6, 8, 2, 2, 0, 2)
    assert full[4:].tolist() == resumed.tolist()


def test_crops_are_a_pure_function_of_seed_epoch_and_work_id(sample_root, tmp_path):
    orig = str(tmp_path / "orig")
    write_originals(sample_root, orig, load_config(DEBUG), log=lambda *a: None)
    cat = build_catalog([orig], seed=3)
    spec = {"stream": {"start_step": 0, "batch_size": 2, "worker_batch": 2, "accum": 1, "rank": 0, "world": 1},
            "short_edge": (64, 160), "crop": (128, 64), "flip": True, "mapper": "crop"}
    ids = {"id": np.arange(2 * len(cat.orig))}  # two epochs
    a, b = load_samples(ids, cat, spec), load_samples(ids, cat, spec)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["ids"], b["ids"])
    assert a["epoch"].tolist() == [0] * len(cat.orig) + [1] * len(cat.orig)
    # the same row in another arm (a catalog with more rows, other positions) gets the same crop
    other = Catalog(cat.orig + [(p, i, "x" + w, *rest) for p, i, w, *rest in cat.orig], [], None, 3)
    c = load_samples({"id": np.arange(len(other.orig))}, other, spec)
    first = {w: img for w, img in zip(a["work_id"][: len(cat.orig)], a["image"][: len(cat.orig)])}
    for w, img in zip(c["work_id"], c["image"]):
        if w in first:
            assert np.array_equal(first[w], img)
    # and the crops of one row differ between epochs (fresh augmentation every epoch)
    n = len(cat.orig)
    by_epoch = [{w: img for w, img in zip(a["work_id"][k * n:(k + 1) * n], a["image"][k * n:(k + 1) * n])}
                for k in (0, 1)]
    assert any(not np.array_equal(by_epoch[0][w], by_epoch[1][w]) for w in by_epoch[0])


def test_augment_with_the_same_rng_is_identical(sample_root):
    from instsynth.datasets.cityscapes import discover
    from instsynth.io import storage

    rec = next(iter(discover(sample_root, "train")))
    row = {"work_id": rec.image, "image": storage.read_bytes(storage.join(sample_root, rec.image)),
           "labels": storage.read_bytes(storage.join(sample_root, rec.labels))}
    x = augment(row, (64, 256), (128, 64), True, crop_rng(0, 4, "w"))
    y = augment(row, (64, 256), (128, 64), True, crop_rng(0, 4, "w"))
    z = augment(row, (64, 256), (128, 64), True, crop_rng(0, 5, "w"))
    assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["ids"], y["ids"])
    assert not np.array_equal(x["image"], z["image"])


def test_the_fastinst_mapper_is_its_authors(sample_root, tmp_path):
    """``train.mapper: fastinst`` (FastInstInstanceDatasetMapper): a fair coin between the whole image at
    a random training scale and a crop resized back to one; a micro-batch is padded to a multiple of 32
    and a step of the model trains on it."""
    import torch

    from instsynth.datasets import decode_image
    from instsynth.train.data import PAD_RGB, collate, read_rows, rescale
    from instsynth.train.models import build_model
    from instsynth.train.trainer import train_step

    orig = str(tmp_path / "orig")
    write_originals(sample_root, orig, load_config(DEBUG), log=lambda *a: None)
    cat = build_catalog([orig], seed=0)
    row = read_rows([cat.orig[0]])[0]
    full = decode_image(row["image"], row["work_id"])
    whole = crops = 0
    for e in range(40):
        out = augment(row, (64, 160), (64, 64), True, crop_rng(0, e, "w"), mapper="fastinst")
        h, w = out["ids"].shape
        assert 64 <= min(h, w) <= 160 and out["image"].shape == (h, w, 3)
        if (h, w) == (min(h, w), 2 * min(h, w)):  # the whole (2:1) frame, possibly mirrored
            ref, _ = rescale(full, np.zeros(full.shape[:2], np.uint16), h)
            assert np.array_equal(out["image"], ref) or np.array_equal(out["image"], ref[:, ::-1])
            whole += 1
        else:  # a square window resized back to the training scale
            assert h == w
            crops += 1
    assert 10 <= whole <= 30 and whole + crops == 40
    assert not any(augment(row, (64, 160), (64, 64), False, crop_rng(0, e, "w"))["image"].shape != (64, 64, 3)
                   for e in range(5))  # the default mapper: every sample the crop
    spec = {"stream": {"start_step": 0, "batch_size": 4, "worker_batch": 4, "accum": 1, "rank": 0, "world": 1},
            "short_edge": (40, 90), "crop": (64, 64), "flip": True, "mapper": "fastinst"}
    batch = load_samples({"id": np.arange(4)}, cat, spec)
    assert batch["image"].shape[1] % 32 == 0 and batch["image"].shape[2] % 32 == 0
    ragged = {**batch, "image": np.empty(4, object), "ids": np.empty(4, object)}  # as Ray Data may hand it over
    for k, (rw, addr) in enumerate(zip(read_rows(cat.epoch(0)[:4]), cat.epoch(0))):
        one = augment(rw, (40, 90), (64, 64), True, crop_rng(0, 0, addr[2]), mapper="fastinst")
        h, w = one["ids"].shape  # each sample at the top left; around it the mean colour (0 once normalised)
        assert np.array_equal(batch["image"][k, :h, :w], one["image"]) and not batch["ids"][k, :, w:].any()
        assert (batch["image"][k, h:] == PAD_RGB).all() and (batch["image"][k, :, w:] == PAD_RGB).all()
        ragged["image"][k], ragged["ids"][k] = one["image"], one["ids"]
    images, targets = collate(batch, cat.class_ids)
    again, t2 = collate(ragged, cat.class_ids)
    assert torch.equal(images, again) and all(torch.equal(a["masks"], b["masks"]) for a, b in zip(targets, t2))
    torch.manual_seed(0)
    model = build_model("fastinst", tiny=True, num_classes=len(cat.classes))
    losses = train_step(model, torch.optim.AdamW(model.parameters(), 1e-4), [(images, targets)])
    assert all(np.isfinite(v) for v in losses.values())


def test_max_size_caps_the_long_side_of_the_training_scale(sample_root, tmp_path):
    """``train.max_size`` (detectron2's ``ResizeShortestEdge(max_size)``): a resize whose long side would
    pass the cap is scaled to the cap instead, in both mappers; the key reaches the sample stream from the config."""
    from instsynth.datasets import decode_image
    from instsynth.train.data import read_rows, rescale, stream_spec

    img = np.zeros((100, 300, 3), np.uint8)
    assert rescale(img, np.zeros((100, 300), np.uint16), 90)[1].shape == (90, 270)
    assert rescale(img, np.zeros((100, 300), np.uint16), 90, 200)[1].shape == (67, 200)  # 200 / 300 wins
    assert rescale(img, np.zeros((100, 300), np.uint16), 50, 200)[1].shape == (50, 150)  # under the cap
    orig = str(tmp_path / "orig")
    write_originals(sample_root, orig, load_config(DEBUG), log=lambda *a: None)
    cat = build_catalog([orig], seed=0)
    row = read_rows([cat.orig[0]])[0]
    h0, w0 = decode_image(row["image"], row["work_id"]).shape[:2]
    assert w0 == 2 * h0  # the sample's 2:1 frames: at short edge 160 the long side is 320
    sizes = [augment(row, (160, 160), (64, 64), False, crop_rng(0, e, "w"), mapper="fastinst", max_size=200)["ids"].shape
             for e in range(12)]
    assert set(sizes) == {(100, 200), (160, 160)}  # whole frames capped; windows resized back under the cap
    crop = augment(row, (160, 160), (400, 100), False, crop_rng(0, 0, "w"), max_size=200)
    assert crop["ids"].shape == (100, 400) and not crop["ids"][:, 200:].any()  # capped to 100x200, then padded
    spec = stream_spec(load_config(DEBUG, ["train.max_size=200", "train.mapper=fastinst",
                                           "train.short_edge=[160, 160]", "train.crop=64x64"]).train, 0, 0, 1)
    batch = load_samples({"id": np.arange(4)}, cat, spec)
    assert spec["max_size"] == 200 and max(batch["ids"].shape[1:]) <= 224  # 200, padded to a multiple of 32
    assert batch["ids"].shape[1:] == (160, 224)  # the batch holds a capped whole frame (uncapped: 160x320)


def test_a_sample_reads_only_its_rows_bytes_and_old_parts_still_train(s3_server, sample_root):
    """On the local S3 server: a training sample costs two ranged GETs of exactly its PNGs (offsets from
    the commit marker); a part written before markers held offsets (zstd PNG columns, old marker) is
    read whole and gives the same rows."""
    import json

    import pyarrow.parquet as pq

    from instsynth.io import storage
    from instsynth.output.layout import LEDGER, marker_path
    from instsynth.synth.driver import run_synth
    from instsynth.train.data import build_catalog, read_rows

    out = "s3://bucket/train-rows"
    run_synth(sample_root, out, load_config(DEBUG, ["run.executor=local", "run.progress=false",
                                                    "generator.name=recolor"]), log=lambda *a: None)
    s3_server.reset()
    cat = build_catalog([out])
    assert s3_server.count("GET", "data") == 0 and s3_server.count("GET range", "data") == 0  # markers only
    assert cat.synth and all(a[3] is not None for a in cat.synth)
    addrs = cat.synth[:3]
    s3_server.reset()
    rows = read_rows(addrs)
    assert s3_server.count("GET range", "data") == s3_server.count("GET", "data") == 2 * len(addrs)
    assert s3_server.bytes_sent("data") == sum(a[3][1] + a[3][3] for a in addrs)  # nothing but the PNGs
    ref = pq.read_table(io_bytes(storage.read_bytes(addrs[0][0]))).to_pylist()[addrs[0][1]]
    assert rows[0]["image"] == ref["image"] and rows[0]["labels"] == ref["labels"]
    # an old-layout part: PNG columns zstd-compressed, marker without offsets or stats
    unit = os.path.basename(addrs[0][0])[len("part-"):-len(".parquet")]
    table = pq.read_table(io_bytes(storage.read_bytes(addrs[0][0])))
    buf = io_bytes()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(addrs[0][0], buf.getvalue())
    marker = json.loads(storage.read_bytes(marker_path(out, unit)))
    marker = {k: v for k, v in marker.items() if k not in ("stats", "v")}
    marker["data"] = {k: v for k, v in marker["data"].items() if k != "rows_at"} | {"bytes": len(buf.getvalue())}
    storage.write_bytes(marker_path(out, unit), json.dumps(marker).encode())
    storage.remove_tree(storage.join(out, LEDGER))
    old = build_catalog([out])
    olds = [a for a in old.synth if a[0] == addrs[0][0]]
    assert olds and all(a[3] is None for a in olds)
    again = read_rows([olds[addrs[0][1]]])
    assert again[0]["image"] == rows[0]["image"] and again[0]["labels"] == rows[0]["labels"]


def io_bytes(data: bytes = b""):
    import io

    return io.BytesIO(data)
