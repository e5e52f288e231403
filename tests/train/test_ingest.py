"""``train.ingest: ray_data`` feeds a worker the very stream the thread loader makes (rows, crops, order),
from any start step."""

import os

import numpy as np
import pytest

from instsynth.config import load_config
from instsynth.synth.originals import write_originals
from instsynth.train.data import SampleLoader, build_catalog
from instsynth.train.ingest import make_stream, restored_step
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")


@pytest.mark.parametrize("start, rank, world", [(0, 0, 1), (3, 1, 2)])
def test_ray_data_stream_equals_the_thread_loader(ray_local, sample_root, tmp_path, start, rank, world):
    orig = str(tmp_path / "orig")
    write_originals(sample_root, orig, load_config(DEBUG), log=lambda *a: None)
    cat = build_catalog([orig], seed=5)
    cfg = load_config(DEBUG, ["train.batch_size=4", "train.worker_batch=1", f"train.num_workers={world}",
                              "train.iterations=6", "train.crop=96x48", "train.short_edge=[48,96]"]).train
    threads = list(SampleLoader(cat, cfg, start, cfg.iterations, rank, world))
    rows = list(make_stream(cat, cfg, start, rank, world).iter_batches(batch_size=1, batch_format="numpy"))
    assert len(rows) == len(threads) == (cfg.iterations - start) * 4 // world
    for (images, _), row in zip(threads, rows):
        assert np.array_equal(images[0].permute(1, 2, 0).numpy(), row["image"][0])
        assert int(row["sample"][0]) // cfg.batch_size >= start
    assert restored_step(str(tmp_path / "no-run")) == 0
