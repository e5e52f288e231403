"""Training data: output dirs -> Ray Data -> augmented fixed-size rows -> torch batches.

Augmentation as in the paper (and FastInst's Cityscapes recipe) runs in Ray Data CPU tasks, not in
the training loop: shortest-edge resize to a random size (focused windows vary in size, so they are
scaled before cropping), random crop (default 360x720, padded when smaller), horizontal flip.  Rows
stay fixed-size (image HxWx3 uint8, instance map HxW uint16), so batches are plain tensors and the
per-instance masks are made in ``collate``.  Streaming throughout: the trainer never holds the
dataset.  Augmentation draws from fresh entropy (different crops each epoch).
"""

from __future__ import annotations

import numpy as np

from instsynth import shards, storage
from instsynth.cityscapes import THING_CLASSES, THING_IDS, decode_ids, decode_image
from instsynth.config import TrainConfig, parse_size

CLASS_INDEX = {cid: THING_CLASSES.index(name) for cid, name in THING_IDS.items()}


def dir_generator(d: str) -> str | None:
    """The generator of an output dir (``original`` for originals), from its first committed row."""
    for t in shards.iter_tables(d, ["generator"]):
        if t.num_rows:
            return t.column("generator")[0].as_py()
    return None


def augment(row: dict, short_edge: tuple[int, int], crop: tuple[int, int], flip: bool) -> dict:
    """Decode, resize the shortest edge to a random length, random crop (w, h), random flip."""
    import cv2

    rng = np.random.default_rng()
    img = decode_image(row["image"], row["work_id"])
    ids = decode_ids(row["instance_ids"], row["work_id"])
    h, w = ids.shape
    target = int(rng.integers(short_edge[0], short_edge[1] + 1))
    s = target / min(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ids = cv2.resize(ids, (nw, nh), interpolation=cv2.INTER_NEAREST)
    cw, ch = crop
    out_img = np.zeros((ch, cw, 3), np.uint8)
    out_ids = np.zeros((ch, cw), np.uint16)
    y = int(rng.integers(0, max(nh - ch, 0) + 1))
    x = int(rng.integers(0, max(nw - cw, 0) + 1))
    pi, pd = img[y:y + ch, x:x + cw], ids[y:y + ch, x:x + cw]
    out_img[:pi.shape[0], :pi.shape[1]] = pi
    out_ids[:pd.shape[0], :pd.shape[1]] = pd
    if flip and rng.random() < 0.5:
        out_img, out_ids = out_img[:, ::-1].copy(), out_ids[:, ::-1].copy()
    return {"image": out_img, "ids": out_ids}


def targets_from_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(masks (N,H,W) bool, labels (N,) class index) of the evaluated-class instances in a map."""
    vals = [v for v in np.unique(ids).tolist() if v >= 1000 and v // 1000 in CLASS_INDEX]
    if not vals:
        return np.zeros((0,) + ids.shape, bool), np.zeros(0, np.int64)
    return np.stack([ids == v for v in vals]), np.array([CLASS_INDEX[v // 1000] for v in vals])


def collate(batch: dict[str, np.ndarray]):
    """Ray Data numpy batch -> (images uint8 (B,3,H,W), [{"masks", "labels"}])."""
    import torch

    images = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2)
    targets = []
    for ids in batch["ids"]:
        m, lab = targets_from_ids(np.asarray(ids))
        targets.append({"masks": torch.from_numpy(m), "labels": torch.from_numpy(lab)})
    return images, targets


def train_dataset(cfg: TrainConfig):
    """The augmented training dataset over ``cfg.dirs`` (originals + synthetic, mixed by ratio)."""
    import ray.data

    if not cfg.dirs:
        raise ValueError("train.dirs: give at least one output dir (e.g. the originals)")
    orig, synth = [], []
    n_orig = n_synth = 0
    for d in cfg.dirs:
        parts = shards.committed_parts(d)
        if not parts:
            raise ValueError(f"train.dirs: {d} has no committed rows")
        rows = sum(m["rows"] for m in shards.committed_units(d).values())
        if dir_generator(d) == "original":
            orig += parts
            n_orig += rows
        else:
            synth += parts
            n_synth += rows
    cols = ["work_id", "image", "instance_ids"]
    fs, _ = storage.filesystem(cfg.dirs[0])
    paths = [storage.filesystem(p)[1] for p in orig + synth]
    parts = {p: q for p, q in zip(orig + synth, paths)}
    datasets = []
    if orig:
        datasets.append(ray.data.read_parquet([parts[p] for p in orig], columns=cols, filesystem=fs))
    if synth:
        ds = ray.data.read_parquet([parts[p] for p in synth], columns=cols, filesystem=fs)
        if cfg.synthetic_ratio is not None and n_orig:
            frac = min(1.0, cfg.synthetic_ratio * n_orig / max(n_synth, 1))
            ds = ds.random_sample(frac, seed=cfg.seed)
        datasets.append(ds)
    ds = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
    crop = parse_size(cfg.crop, "train.crop")
    return ds.map(augment, fn_kwargs={"short_edge": tuple(cfg.short_edge), "crop": crop, "flip": cfg.flip})
