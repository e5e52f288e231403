"""What the driver settles before any worker starts: absolute paths and one-line launch checks.

Why: Ray Train V2 runs each worker in a working directory of its own, so a relative path from a
config means something else there; and a 90k-iteration job should not fail an hour in because its
evaluation root or backbone weights were never there.  Every check names the key and the problem.
"""

from __future__ import annotations

import copy
import os

from instsynth.config import Config, ConfigError
from instsynth.datasets import DataError, resolve
from instsynth.datasets.cityscapes import check_split
from instsynth.io import storage
from instsynth.train.models import check_params, family


def resolve_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` with every train/experiment path absolute (URIs unchanged)."""
    cfg = copy.deepcopy(cfg)
    t, e = cfg.train, cfg.experiment
    t.dirs = [storage.absolute(d) for d in t.dirs]
    t.eval_root = storage.absolute(t.eval_root)
    t.eval_image_root = storage.absolute(t.eval_image_root)
    t.storage_path = storage.absolute(t.storage_path)
    if t.model.backbone_weights != "bundled":  # found on each worker with importlib.resources
        t.model.backbone_weights = storage.absolute(t.model.backbone_weights)
    if t.model.pretrained and os.path.exists(os.path.expanduser(t.model.pretrained)):
        t.model.pretrained = storage.absolute(t.model.pretrained)  # a local dir; hub ids stay as they are
    e.originals = [storage.absolute(d) for d in e.originals]
    e.synthetic = [storage.absolute(d) for d in e.synthetic]
    e.out = storage.absolute(e.out)
    return cfg


def check_eval_root(root: str, split: str, key: str = "train.eval_root", image_root: str | None = None) -> None:
    """A Cityscapes root with the split's images, or a COCO JSON whose images can be found (one line)."""
    try:
        if str(root).lower().endswith(".json"):
            resolve(root, "coco", image_root)
        else:
            check_split(root, split)
    except DataError as e:
        raise ConfigError(f"{key}: {e}") from None


def check_inputs(cfg: Config, dirs: list[str]) -> None:
    """Data, evaluation root and weights exist (call after ``resolve_paths``)."""
    t = cfg.train
    for d in dirs:
        if not storage.is_dir(d):
            raise ConfigError(f"train.dirs: {d}: no such output dir")
    if t.eval_root:
        check_eval_root(t.eval_root, t.eval_split, image_root=t.eval_image_root)
    w = t.model.backbone_weights
    if w and w != "bundled" and not storage.exists(w):
        raise ConfigError(f"train.model.backbone_weights: {w}: no such file")
    fam = family(t.model.name)
    if w and fam.backbone_weights:  # every key and shape, before any worker starts
        from instsynth.train.models.backbones import WeightsError, check_weights  # deferred: torch (~2 s)

        try:
            check_weights(w, t.model.params.get("backbone", fam.backbone[0] if t.model.tiny else fam.backbone[1]))
        except WeightsError as e:
            raise ConfigError(str(e)) from None
    check_pretrained(t.model.pretrained)
    check_params(t.model.name, **family(t.model.name).kwargs(t.model))


def check_pretrained(model: str | None) -> None:
    """A pretrained model is a local dir or already in the Hugging Face cache (workers never download)."""
    if not model or os.path.isdir(os.path.expanduser(model)):
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "config.json"), str):
        raise ConfigError(f"train.model.pretrained: {model!r} is neither a local dir nor in the Hugging Face "
                          f"cache (fetch it with `instsynth models prefetch --config ...`)")


def check_gpus(cfg: Config) -> None:
    """On a local Ray (no address), the GPU workers asked for must exist; a cluster may autoscale."""
    if not cfg.train.use_gpu or cfg.run.address or os.environ.get("RAY_ADDRESS"):
        return
    import ray

    have = int(ray.cluster_resources().get("GPU", 0))
    if have < cfg.train.num_workers:
        raise ConfigError(f"train.use_gpu: {cfg.train.num_workers} GPU worker(s) asked for, this machine has {have} GPU(s)")
