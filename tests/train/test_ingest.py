"""``train.ingest: ray_data`` feeds a worker the very stream the thread loader makes (rows, crops, order),
from any start step."""

import os

import pytest

from instsynth.config import load_config
from instsynth.synth.originals import write_originals
from instsynth.train.data import SampleLoader, build_catalog
from instsynth.train.ingest import make_stream, restored_step
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")


@pytest.mark.parametrize("start, rank, world, mapper", [(0, 0, 1, "crop"), (3, 1, 2, "fastinst")])
def test_ray_data_stream_equals_the_thread_loader(ray_local, sample_root, tmp_path, start, rank, world, mapper):
    """Sample for sample, micro-batch for micro-batch; with the authors' FastInst mapper (samples of
    varying size) too, whose micro-batches Ray Data may hand over ragged."""
    import json

    import torch

    from instsynth.train.data import collate

    orig = str(tmp_path / "orig")
    write_originals(sample_root, orig, load_config(DEBUG), log=lambda *a: None)
    cat = build_catalog([orig], seed=5)
    cfg = load_config(DEBUG, ["train.batch_size=4", "train.worker_batch=2", f"train.num_workers={world}",
                              "train.iterations=6", "train.crop=96x48", "train.short_edge=[48,96]",
                              f"train.mapper={mapper}"]).train
    threads = list(SampleLoader(cat, cfg, start, cfg.iterations, rank, world))
    batches = list(make_stream(cat, cfg, start, rank, world).iter_batches(batch_size=2, batch_format="numpy"))
    assert len(batches) == len(threads) == (cfg.iterations - start) * 2 // world
    for (images, targets), b in zip(threads, batches):
        assert all(int(s) // cfg.batch_size >= start for s in b["sample"])
        again, t2 = collate({**b, "things": [json.loads(t) for t in b["things"]]}, cat.class_ids)
        assert torch.equal(images, again)
        assert all(torch.equal(x["masks"], y["masks"]) and torch.equal(x["labels"], y["labels"])
                   for x, y in zip(targets, t2))
    if mapper == "fastinst":
        assert len({tuple(images.shape) for images, _ in threads}) > 1  # sizes vary between micro-batches
    assert restored_step(str(tmp_path / "no-run")) == 0
