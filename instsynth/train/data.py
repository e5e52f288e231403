"""Training data: output dirs -> a row catalog -> a seeded sample sequence -> augmented batches.

Why this shape: a Table II reproduction needs epochs that mix originals and synthetic rows, an exact
synthetic ratio, and crops that two arms of a paired experiment share.  So the driver builds a
*catalog* - every committed row's address (part file, row index, work id), originals and synthetic
apart, about 100 bytes a row (12k rows of IS-Cityscapes: ~1 MB) - and nothing else is collected.

* Epoch ``e`` is all originals plus exactly ``round(synthetic_ratio x originals)`` synthetic rows drawn
  from ``(seed, e)`` (all synthetic rows when the ratio is unset), in an order shuffled from
  ``(seed, e)``: a full shuffle of both sources, whose memory bound is the catalog.
* Step ``s`` of a run with batch ``B`` takes global samples ``s*B .. s*B+B-1``; worker ``r`` of ``W``
  with micro-batch ``b`` takes micro-batch ``a`` at ``s*B + (a*W + r)*b``.  So which row a worker
  trains on at which step is arithmetic, and a resumed run continues the same sequence.
* Each worker decodes its own samples (read each row's two PNGs with one ranged read each, at the
  offsets its commit marker recorded, and its instance regions from the marker; parts written before
  markers held them are read whole; decode, augment) in a small
  thread pool, in order, a bounded number of micro-batches ahead (``SampleLoader``); the crop, scale
  and flip of a row are drawn from ``(seed, epoch, crc32(work_id))`` alone, so they do not depend on
  the worker, the step or the arm.

Augmentation (detectron2's Cityscapes recipe with the paper's crop): shortest-edge resize to a
random length in ``short_edge``, random crop ``crop`` (padded when smaller), horizontal flip.  Rows
stay fixed-size (image HxWx3 uint8, label map HxW uint16), so batches are plain tensors and the
per-instance masks are made in ``collate``.  ``train.mapper: fastinst`` is FastInst's authors' mapper
instead (``augment``): samples of varying size, a micro-batch padded to its largest with the mean colour.
Classes are the label space's evaluated classes (index i of ``Catalog.classes`` is a model's class i);
crowd regions are no targets.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import numpy as np

from instsynth.config import ConfigError, TrainConfig, grad_accum, parse_size
from instsynth.datasets import DataError, LabelSpace, cityscapes_space, decode_image, decode_index, things_of
from instsynth.datasets.cityscapes import regions_from_ids
from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output.layout import part_path
from instsynth.output.ledger import committed_units
from instsynth.output.readers import iter_tables
from instsynth.output.sources import label_space

_MEMO_LOCK = threading.Lock()


def class_ids(space: LabelSpace) -> dict[int, int]:
    """{dataset class id: model class index} over the label space's evaluated classes."""
    return {space.by_name[c].id: i for i, c in enumerate(space.evaluated)}


#: the label space of training rows unless the catalog says otherwise (Cityscapes' eight classes)
CLASS_IDS = class_ids(cityscapes_space())


@dataclass
class Catalog:
    """Addresses of every committed training row: (part file, row index in it, work id, where its PNGs
    lie in the part: (image offset, bytes, ids offset, bytes) or None for parts written before that)."""

    orig: list[tuple[str, int, str]]
    synth: list[tuple[str, int, str]]
    ratio: float | None = None
    seed: int = 0
    space: LabelSpace | None = None

    @property
    def classes(self) -> list[str]:
        """The model's classes (the label space's evaluated classes, in id order)."""
        return (self.space or cityscapes_space()).evaluated

    @property
    def class_ids(self) -> dict[int, int]:
        return class_ids(self.space) if self.space is not None else CLASS_IDS

    @property
    def synth_per_epoch(self) -> int:
        if self.ratio is None or not self.orig:
            return len(self.synth)
        return int(round(self.ratio * len(self.orig))) if self.synth else 0

    @property
    def epoch_len(self) -> int:
        return len(self.orig) + self.synth_per_epoch

    def epoch(self, e: int) -> list[tuple[str, int, str]]:
        """The rows of epoch ``e`` in training order (a pure function of seed and epoch; the last two
        epochs are memoised, since every micro-batch asks)."""
        with _MEMO_LOCK:  # the loader's decode threads share the catalog
            memo = self.__dict__.setdefault("_memo", {})
            if e not in memo:
                if len(memo) >= 2:
                    memo.pop(min(memo))
                memo[e] = self._epoch(e)
            return memo[e]

    def _epoch(self, e: int) -> list[tuple[str, int, str]]:
        rng = np.random.default_rng([self.seed, e, 0xE90C])
        k, n = self.synth_per_epoch, len(self.synth)
        picks = np.concatenate([rng.permutation(n) for _ in range(-(-k // n))])[:k] if n and k else np.zeros(0, int)
        order = rng.permutation(np.concatenate([np.arange(len(self.orig)), len(self.orig) + picks]))
        return [self.orig[i] if i < len(self.orig) else self.synth[i - len(self.orig)] for i in order.tolist()]

    def fingerprint(self) -> str:
        """A short hash of every row address (the data a run trains on)."""
        import hashlib

        h = hashlib.sha1()
        for rows in (self.orig, self.synth):
            for part, i, wid, *_ in rows:
                h.update(f"{part}|{i}|{wid}\n".encode())
            h.update(b"--\n")
        return h.hexdigest()[:10]


def dir_generator(d: str) -> str | None:
    """The generator of an output dir (``original`` for originals), from its first committed row."""
    for t in iter_tables(d, ["generator"]):
        if t.num_rows:
            return t.column("generator")[0].as_py()
    return None


def build_catalog(dirs: list[str], ratio: float | None = None, seed: int = 0) -> Catalog:
    """Every committed row's address from the dirs' commit markers (work ids, and where each row's PNGs
    lie in its part); parts whose markers predate that are read once, ``work_id`` column only."""
    import pyarrow.parquet as pq

    if not dirs:
        raise ConfigError("train.dirs: give at least one output dir (e.g. the originals)")
    try:
        space = label_space(dirs)
    except DataError as e:
        raise ConfigError(f"train.dirs: {e}") from None
    orig, synth = [], []
    for d in dirs:
        markers = {u: m for u, m in sorted(committed_units(d).items()) if m["rows"]}
        if not markers:
            raise ConfigError(f"train.dirs: {d} has no committed rows")
        rows, gens = [], set()
        for u, m in markers.items():
            p = part_path(d, u)
            locs = m.get("data", {}).get("rows_at")
            things = m.get("data", {}).get("things")
            if "stats" in m:  # format 2: the marker lists the rows in file order
                gens.update(g for g, *_ in m["stats"]["models"])
                rows += [(p, i, w, tuple(locs[i]) if locs else None, things[i] if things else None)
                         for i, w in enumerate(m["work_ids"])]
            else:
                fs, path = storage.filesystem(p)
                ids = pq.read_table(path, columns=["work_id"], filesystem=fs).column("work_id").to_pylist()
                rows += [(p, i, w, None, None) for i, w in enumerate(ids)]
        gen = gens.pop() if len(gens) == 1 else dir_generator(d)
        (orig if gen == "original" else synth).extend(rows)
    return Catalog(orig, synth, ratio, seed, space)


def read_rows(addrs: list[tuple]) -> list[dict]:
    """{work_id, image, labels, things} of each address: two ranged reads of exactly the row's PNGs where
    the marker recorded them (``things``: the row's instance regions, from the marker), else (older parts)
    the part read once, projected to the PNG columns (``things`` None: the map is a Cityscapes map)."""
    out: list[dict | None] = [None] * len(addrs)
    whole: dict[str, list[int]] = {}
    for k, (part, _, wid, loc, *rest) in enumerate(addrs):
        if loc:
            out[k] = {"work_id": wid, "image": storage.read_range(part, loc[0], loc[1]),
                      "labels": storage.read_range(part, loc[2], loc[3]), "things": rest[0] if rest else None}
        else:
            whole.setdefault(part, []).append(k)
    for part, ks in whole.items():
        t = read_parquet(part)
        legacy = "labels" not in t.column_names
        for k in ks:
            i = addrs[k][1]
            row = {"work_id": addrs[k][2], "image": t.column("image")[i].as_py()}
            if legacy:
                row.update(labels=t.column("instance_ids")[i].as_py(), things=None)
            else:
                regions = t.column("regions")[i].as_py()
                row.update(labels=t.column("labels")[i].as_py(),
                           things=things_of(regions))
            out[k] = row
    return out


def row_map(row: dict) -> tuple[np.ndarray, list]:
    """(label map, things [[value, class id, crowd], ...]) of a read row; a row without ``things`` holds a
    Cityscapes instanceIds map, converted to an index map here."""
    index = decode_index(row["labels"], row["work_id"])
    if row.get("things") is not None:
        return index, row["things"]
    labels = regions_from_ids(index)
    return labels.index, things_of(labels.regions)


def crop_rng(seed: int, epoch: int, work_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(work_id.encode())])


def augment(row: dict, short_edge: tuple[int, int], crop: tuple[int, int], flip: bool,
            rng: np.random.Generator | None = None, mapper: str = "crop", max_size: int | None = None) -> dict:
    """Decode, resize the shortest edge to a random length, random crop (w, h), random flip.

    ``mapper="fastinst"`` is FastInst's authors' ``FastInstInstanceDatasetMapper``: a fair coin picks
    the whole image at a random ``short_edge`` (their training scale) or, as ``crop`` does, a window
    of the image at a random ``short_edge``, which is then resized to a random ``short_edge`` again
    (their crop, then the training-scale resize); their crop never pads, so a window is clipped to the
    image.  The sizes vary; ``load_samples`` pads a micro-batch.  ``max_size`` caps the long side of the
    training-scale resize (every resize but the authors' crop branch's first, which detectron2 leaves uncapped)."""
    rng = rng if rng is not None else np.random.default_rng()
    img = decode_image(row["image"], row["work_id"])
    ids, things = row_map(row)
    whole = mapper == "fastinst" and rng.random() < 0.5
    img, ids = rescale(img, ids, int(rng.integers(short_edge[0], short_edge[1] + 1)),
                       None if mapper == "fastinst" and not whole else max_size)
    if not whole:
        nh, nw = ids.shape
        cw, ch = crop
        y = int(rng.integers(0, max(nh - ch, 0) + 1))
        x = int(rng.integers(0, max(nw - cw, 0) + 1))
        pi, pd = img[y:y + ch, x:x + cw], ids[y:y + ch, x:x + cw]
        if mapper == "fastinst":
            img, ids = rescale(pi, pd, int(rng.integers(short_edge[0], short_edge[1] + 1)), max_size)
        else:
            img, ids = np.zeros((ch, cw, 3), np.uint8), np.zeros((ch, cw), np.uint16)
            img[:pi.shape[0], :pi.shape[1]] = pi
            ids[:pd.shape[0], :pd.shape[1]] = pd
    if flip and rng.random() < 0.5:
        img, ids = img[:, ::-1], ids[:, ::-1]
    return {"image": np.ascontiguousarray(img), "ids": np.ascontiguousarray(ids), "things": things}


def resize_scale(h: int, w: int, short: int | None, max_size: int | None = None) -> float:
    """The factor that brings an ``h`` x ``w`` image's short side to ``short`` (None: 1, the native size), or
    its long side to ``max_size`` when that is the smaller scale: detectron2's ``ResizeShortestEdge``, one
    rule for the training scale and the test scale, as the authors' mappers use it."""
    s = short / min(h, w) if short else 1.0
    if max_size and max(h, w) * s > max_size:
        s = max_size / max(h, w)
    return s


def rescale(img: np.ndarray, ids: np.ndarray, short: int, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image (area or linear) and label map (nearest) resized so the short side is ``short``, or the long
    side ``max_size`` when that is the smaller scale (``resize_scale``)."""
    import cv2

    h, w = ids.shape
    s = resize_scale(h, w, short, max_size)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return img, cv2.resize(ids, (nw, nh), interpolation=cv2.INTER_NEAREST)


#: the ImageNet mean colour every model here normalises by: detectron2's ``ImageList`` pads the
#: *normalised* image with 0, which is this colour before normalisation
PAD_RGB = (124, 116, 104)


def pad_stack(arrays, divisor: int = 32, fill=0) -> np.ndarray:
    """Arrays of varying height and width, padded with ``fill`` at the bottom and right to the largest,
    rounded up to a multiple of ``divisor`` (detectron2's ``ImageList``, FastInst's size divisibility), stacked."""
    arrays = list(arrays)
    h = -(-max(a.shape[0] for a in arrays) // divisor) * divisor
    w = -(-max(a.shape[1] for a in arrays) // divisor) * divisor
    out = np.empty((len(arrays), h, w) + arrays[0].shape[2:], arrays[0].dtype)
    out[...] = fill
    for k, a in enumerate(arrays):
        out[k, :a.shape[0], :a.shape[1]] = a
    return out


def targets(index: np.ndarray, things: list, ids_to_class: dict[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(masks (N,H,W) bool, labels (N,) class index) of the instances of evaluated classes present in a map
    (``things``: [[value, class id, crowd], ...]; crowd regions are no targets)."""
    ids_to_class = CLASS_IDS if ids_to_class is None else ids_to_class
    present = set(np.unique(index).tolist())
    keep = sorted((v, ids_to_class[c]) for v, c, crowd in things if not crowd and v in present and c in ids_to_class)
    if not keep:
        return np.zeros((0,) + index.shape, bool), np.zeros(0, np.int64)
    return np.stack([index == v for v, _ in keep]), np.array([c for _, c in keep], np.int64)


def targets_from_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``targets`` of a Cityscapes instanceIds map (its eight evaluated classes)."""
    labels = regions_from_ids(ids)
    return targets(labels.index, things_of(labels.regions))


def collate(batch: dict[str, np.ndarray], ids_to_class: dict[int, int] | None = None):
    """Numpy batch -> (images uint8 (B,3,H,W), [{"masks", "labels"}]).  With ``things`` the maps are index
    maps; without, Cityscapes instanceIds maps."""
    import torch

    if batch["image"].dtype == object:  # ``fastinst`` samples through Ray Data, which keeps them ragged
        batch = {**batch, "image": pad_stack(batch["image"], fill=PAD_RGB), "ids": pad_stack(batch["ids"])}
    images = torch.from_numpy(np.require(batch["image"], requirements=["C", "W"])).permute(0, 3, 1, 2)
    out = []
    things = batch.get("things")
    for k, ids in enumerate(batch["ids"]):
        ids = np.asarray(ids)
        m, lab = targets(ids, things[k], ids_to_class) if things is not None else targets_from_ids(ids)
        out.append({"masks": torch.from_numpy(m), "labels": torch.from_numpy(lab)})
    return images, out


# -- the sample stream -----------------------------------------------------------------------------

def global_samples(local: np.ndarray, start_step: int, batch_size: int, worker_batch: int, accum: int,
                   rank: int, world: int) -> np.ndarray:
    """Global sample indices of a worker's local stream positions (see the module docstring)."""
    per_step = accum * worker_batch
    step, r = start_step + local // per_step, local % per_step
    a, j = r // worker_batch, r % worker_batch
    return step * batch_size + (a * world + rank) * worker_batch + j


def stream_spec(cfg: TrainConfig, start_step: int, rank: int, world: int) -> dict:
    """``load_samples``' spec of a worker's stream from ``start_step`` (both ingest paths use it)."""
    wb, accum = grad_accum(cfg)
    return {"stream": {"start_step": start_step, "batch_size": cfg.batch_size, "worker_batch": wb,
                       "accum": accum, "rank": rank, "world": world},
            "short_edge": tuple(cfg.short_edge), "crop": parse_size(cfg.crop, "train.crop"), "flip": cfg.flip,
            "mapper": cfg.mapper, "max_size": cfg.max_size}


def load_samples(batch: dict, catalog: Catalog, spec: dict) -> dict:
    """Ray Data batch of local positions -> augmented rows (reads each part file once per batch)."""
    g = global_samples(np.asarray(batch["id"]), **spec["stream"])
    epochs, pos = g // catalog.epoch_len, g % catalog.epoch_len
    orders = {int(e): catalog.epoch(int(e)) for e in np.unique(epochs)}
    addr = [orders[int(e)][int(p)] for e, p in zip(epochs, pos)]
    images, ids, wids, things = [], [], [], []
    for row, a, e in zip(read_rows(addr), addr, epochs):
        out = augment(row, spec["short_edge"], spec["crop"], spec["flip"], crop_rng(catalog.seed, int(e), a[2]),
                      spec["mapper"], spec.get("max_size"))
        images.append(out["image"])
        ids.append(out["ids"])
        things.append(out["things"])
        wids.append(a[2])
    ragged = spec["mapper"] == "fastinst"  # samples of varying size
    images, ids = (pad_stack(images, fill=PAD_RGB), pad_stack(ids)) if ragged else (np.stack(images), np.stack(ids))
    return {"image": images, "ids": ids, "work_id": np.array(wids, dtype=object),
            "epoch": epochs.astype(np.int64), "things": things}


class SampleLoader:
    """This worker's collated micro-batches for steps ``start_step..end_step-1``, in order.

    Decoding runs in a small thread pool (PNG decode, resize and Parquet reads release the GIL), at most
    ``ahead`` micro-batches in flight: memory stays flat over any run length, and the order - hence the
    whole sample sequence - does not depend on timing.  (A Ray Data stream per worker was measured first:
    its executor thread took ~0.6 of a core polling on this 2-core machine, more than the decoding itself.)
    """

    def __init__(self, catalog: Catalog, cfg: TrainConfig, start_step: int, end_step: int, rank: int = 0,
                 world: int = 1, threads: int = 2, ahead: int = 8):
        self.wb, accum = grad_accum(cfg)
        self.catalog, self.threads, self.ahead = catalog, max(1, threads), max(1, ahead)
        self.n = max(0, end_step - start_step) * accum
        self.spec = stream_spec(cfg, start_step, rank, world)

    def batch(self, k: int) -> dict:
        """Micro-batch ``k`` of this worker's stream (a pure function of k and the config)."""
        return load_samples({"id": np.arange(k * self.wb, (k + 1) * self.wb)}, self.catalog, self.spec)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="instsynth-decode") as pool:
            pending = deque(pool.submit(self.batch, k) for k in range(min(self.ahead, self.n)))
            nxt = len(pending)
            while pending:
                out = pending.popleft().result()
                if nxt < self.n:
                    pending.append(pool.submit(self.batch, nxt))
                    nxt += 1
                yield collate(out, self.catalog.class_ids)
