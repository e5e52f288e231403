"""Training ingredients in-process: every family trains a step, targets, identical re-runs.  (Ray Train with 2
workers and a relaunch that resumes: tests/train/test_launch.py's fastinst tiny config.)"""

import os

import numpy as np
import pytest
import torch

from instsynth.config import load_config
from instsynth.synth.originals import write_originals
from instsynth.train.data import collate, targets_from_ids
from instsynth.train.models import build_model
from instsynth.train.trainer import train_step

DEBUG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "configs", "debug.yaml")


@pytest.fixture(scope="module")
def originals(sample_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("orig"))
    write_originals(sample_root, out, load_config(DEBUG), log=lambda *a: None)
    return out


def _train_cfg(originals, storage, name, iterations, **extra):
    sets = [f"train.dirs=[{originals}]", f"train.storage_path={storage}", f"train.name={name}",
            f"train.iterations={iterations}", "train.checkpoint_every=2", "train.num_workers=2",
            "train.cpus_per_worker=0.5", "train.batch_size=2", "train.crop=128x64", "train.short_edge=[64, 96]",
            "train.model.name=fastinst", "train.model.tiny=true"]
    return load_config(None, sets + [f"{k}={v}" for k, v in extra.items()])


@pytest.mark.parametrize("name", ["mask2former", "oneformer", "fastinst"])
def test_models_train_in_process(name):
    model = build_model(name, tiny=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = np.full((64, 128), 7, np.uint16)
    ids[10:40, 10:60] = 26001
    ids[20:60, 70:100] = 24000
    ids[0:5, 0:5] = 26  # group region: not a target
    images, targets = collate({"image": np.random.default_rng(0).integers(0, 255, (2, 64, 128, 3), dtype=np.uint8),
                               "ids": np.stack([ids, ids])})
    assert targets[0]["labels"].tolist() == [0, 2]
    l1 = train_step(model, opt, [(images, targets)])
    l2 = train_step(model, opt, [(images[:1], targets[:1]), (images[1:], targets[1:])])  # accumulated
    assert np.isfinite(l1["loss"]) and np.isfinite(l2["loss"])
    model.eval()
    out = model(images)
    assert out[0]["masks"].shape[1:] == (64, 128) and len(out[0]["scores"]) == len(out[0]["labels"])


def test_targets_ignore_groups_and_unevaluated():
    ids = np.zeros((4, 4), np.uint16)
    ids[0, 0], ids[1, 1], ids[2, 2], ids[3, 3] = 26000, 29000, 24, 33002
    m, lab = targets_from_ids(ids)
    assert lab.tolist() == [2, 7] and m.shape == (2, 4, 4)


def test_one_worker_rerun_logs_identical_losses(originals):
    """The worker loop's ingredients - seeded model, the sample sequence, train_step - give identical
    losses on a re-run (CPU, one worker), and a resumed loader continues the same sequence."""
    from instsynth.train.data import SampleLoader, build_catalog
    from instsynth.train.recipe import make_optimizer

    cfg = _train_cfg(originals, "x", "x", 3, **{"train.num_workers": 1}).train
    catalog = build_catalog(cfg.dirs, seed=cfg.seed)

    def run():
        torch.manual_seed(cfg.seed)
        model = build_model("fastinst", tiny=True)
        opt = make_optimizer(model, cfg)
        return [train_step(model, opt, [b], cfg.grad_clip) for b in SampleLoader(catalog, cfg, 0, 3)]
    a, b = run(), run()
    assert len(a) == 3 and a == b
    resumed = list(SampleLoader(catalog, cfg, 1, 3))
    full = list(SampleLoader(catalog, cfg, 0, 3))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(full[1:], resumed))
