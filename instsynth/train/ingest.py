"""``train.ingest: ray_data``: each worker's sample stream as a Ray Data pipeline, fed through
``ray.train.get_dataset_shard``.

Why: on a GPU cluster with CPU nodes, decoding and augmentation can then run in Ray Data CPU tasks on any
node instead of beside the GPU.  The stream is the one ``SampleLoader`` makes (``threads``, the default),
row for row and crop for crop: worker ``r``'s dataset is ``range(n)`` over its local stream positions,
mapped by the same ``data.load_samples`` in micro-batches, order preserved; so which row a worker trains on
at which step stays arithmetic.

Resuming: the datasets are made by a callable that Ray Train calls at every start of the worker group
(first launch, re-launch, restart after a lost worker), so each start's stream begins at the step of the
checkpoint Ray Train restores (its run record, read by ``Result.from_path``); a worker that finds its
checkpoint later than that skips the difference.  The worker loop does not import this module unless
``ray_data`` is chosen.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from instsynth.config import TrainConfig, grad_accum
from instsynth.train.data import Catalog, collate, global_samples, load_samples, stream_spec


def dataset_name(rank: int) -> str:
    return f"train_rank{rank}"


def encode_samples(batch: dict, catalog: Catalog, spec: dict) -> dict:
    """``load_samples`` with each row's instance list as JSON (a ragged list of lists is no Arrow column
    type that survives an empty batch)."""
    out = load_samples(batch, catalog, spec)
    out["sample"] = global_samples(np.asarray(batch["id"]), **spec["stream"])
    out["things"] = np.array([json.dumps(t) for t in out.pop("things")], dtype=object)
    return out


def make_stream(catalog: Catalog, cfg: TrainConfig, start_step: int, rank: int, world: int):
    """Worker ``rank``'s Ray Data stream of augmented rows for steps ``start_step..iterations-1``."""
    import ray.data

    wb, accum = grad_accum(cfg)
    n = max(0, cfg.iterations - start_step) * accum * wb
    blocks = max(1, min(n // wb, 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))))
    ds = ray.data.range(n, override_num_blocks=blocks)
    ds = ds.map_batches(encode_samples, batch_size=wb, batch_format="numpy", num_cpus=cfg.ingest_cpus,
                        fn_kwargs={"catalog": catalog, "spec": stream_spec(cfg, start_step, rank, world)})
    ds.context.execution_options.preserve_order = True  # the stream is arithmetic: its order is the data
    ds.context.enable_progress_bars = cfg.verbose  # a bar per rank per start is noise on a training console
    return ds


def restored_step(run_dir: str) -> int:
    """The step of the checkpoint Ray Train restores for ``run_dir`` (0 when there is none yet)."""
    from ray.train import Result

    log = logging.getLogger("ray.train")
    level = log.level
    log.setLevel(logging.ERROR)  # from_path warns that the run dir holds a run: here that is the point
    try:
        result = Result.from_path(run_dir)
    except Exception:  # noqa: BLE001 - no run yet (Ray raises RuntimeError; a missing S3 prefix others)
        return 0
    finally:
        log.setLevel(level)
    if result.checkpoint is None:
        return 0
    for ckpt, metrics in result.best_checkpoints or []:
        if ckpt.path == result.checkpoint.path:
            return int(metrics.get("step", 0))
    return int((result.metrics or {}).get("step", 0))


class Streams:
    """The trainer's ``datasets`` entry for one rank: called by Ray Train at each worker-group start."""

    def __init__(self, catalog: Catalog, cfg: TrainConfig, run_dir: str, rank: int, world: int):
        self.catalog, self.cfg, self.run_dir, self.rank, self.world = catalog, cfg, run_dir, rank, world

    def __call__(self):
        return make_stream(self.catalog, self.cfg, restored_step(self.run_dir), self.rank, self.world)


def datasets(catalog: Catalog, cfg: TrainConfig, run_dir: str) -> dict:
    """{name: Streams} for every rank (each worker reads only its own)."""
    return {dataset_name(r): Streams(catalog, cfg, run_dir, r, cfg.num_workers) for r in range(cfg.num_workers)}


def data_config():
    """Not split (each rank has its own stream), order kept (the stream is arithmetic)."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


def worker_batches(catalog: Catalog, cfg: TrainConfig, step: int, rank: int, ahead: int):
    """This worker's collated micro-batches from its dataset shard, from checkpoint step ``step`` on."""
    import ray.train

    if not cfg.verbose:  # Ray Data's per-execution INFO lines and its "progress bars disabled" notice
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    wb, accum = grad_accum(cfg)
    shard = ray.train.get_dataset_shard(dataset_name(rank))
    skip = None
    for batch in shard.iter_batches(batch_size=wb, batch_format="numpy", prefetch_batches=ahead,
                                    drop_last=False):
        if skip is None:  # the stream's first step is in its rows' global sample index; skip to ours
            first = int(batch["sample"][0]) // cfg.batch_size
            if first > step:
                raise RuntimeError(f"ingest: the stream starts at step {first}, after checkpoint step {step}")
            skip = (step - first) * accum
        if skip:
            skip -= 1
            continue
        batch["things"] = [json.loads(t) for t in batch["things"]]
        yield collate(batch, catalog.class_ids)
