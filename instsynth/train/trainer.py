"""Ray Train (V2) trainer: ``TorchTrainer`` over IS-Cityscapes output dirs, resumable by name.

One training-step function (``train_step``) serves the distributed loop and in-process use.  A
crashed or re-launched run with the same ``train.name`` and ``train.storage_path`` resumes from its
latest checkpoint (Ray Train V2: re-create the trainer; ``ray.train.get_checkpoint()`` returns it) and
continues the same sample sequence (see ``instsynth.train.data``).  The driver resolves every path
and checks data, evaluation root, weights and GPUs before a worker starts (``launch``).

Side files go through the storage module, so an ``s3://`` storage path keeps them too:
``starts.jsonl`` (where each launch began), ``tensorboard/`` (flushed at every report, closed on
error) and ``best/`` (the checkpoint with the best validation AP50).  Each checkpoint's
``model.json`` records the resolved recipe.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

from instsynth.config import Config, ConfigError, TrainConfig, grad_accum, load_config, to_dict
from instsynth.io import storage
from instsynth.ray_runtime import init_ray
from instsynth.train import ingest as ray_ingest
from instsynth.train.data import SampleLoader, build_catalog
from instsynth.train.evaluate import evaluate_model, scale_label
from instsynth.train.ingest import worker_batches
from instsynth.train.launch import check_gpus, check_inputs, resolve_paths
from instsynth.train.models import build_model, family
from instsynth.train.recipe import amp_dtype, make_optimizer, recipe, set_lr


def train_step(model, optimizer, micro_batches, grad_clip: float = 0.0, amp=None) -> dict[str, float]:
    """One optimisation step over ``micro_batches`` [(images, targets), ...] (gradient accumulation).

    ``amp``: an autocast dtype or None.  Losses cross to the host once per step.
    """
    import contextlib

    import torch

    model.train()
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    total = None
    for k, (images, targets) in enumerate(micro_batches):
        sync = contextlib.nullcontext() if k == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        cast = torch.autocast(images.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with sync:
            with cast:
                losses = model(images, targets)
            (losses["loss"] / n).backward()
        vec = torch.stack([v.detach().float().mean() for v in losses.values()])  # some heads return (1,)
        total = vec if total is None else total + vec
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return dict(zip(losses.keys(), (total / n).tolist()))


def loss_name(key: str) -> str:
    """``loss`` (the total) and ``loss_ce`` stay as they are; a head's ``ce`` becomes ``loss_ce``."""
    return key if key == "loss" or key.startswith("loss_") else f"loss_{key}"


def checkpoint_uri(checkpoint) -> str | None:
    """A Ray Train checkpoint's location as ``storage`` names it: Ray gives an S3 or GCS checkpoint's path
    without its scheme (``bucket/runs/...``), which would read as a local path."""
    if checkpoint is None:
        return None
    import pyarrow.fs as pafs

    scheme = {pafs.S3FileSystem: "s3://", pafs.GcsFileSystem: "gs://"}.get(type(checkpoint.filesystem), "")
    return checkpoint.path if not scheme or "://" in checkpoint.path else scheme + checkpoint.path


def save_checkpoint(path: str, model, optimizer, step: int, spec: dict, metrics: dict) -> None:
    """model.pt + model.json into a directory (through ``storage``: a local dir Ray Train then uploads)."""
    import io

    import torch

    raw = model.module if hasattr(model, "module") else model
    buf = io.BytesIO()
    torch.save({"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, buf)
    storage.write_bytes(storage.join(path, "model.pt"), buf.getvalue())
    storage.write_bytes(storage.join(path, "model.json"),
                        json.dumps({**spec, "step": step, "metrics": metrics}).encode())


class Board:
    """TensorBoard scalars, written synchronously (tensorboardX's SummaryWriter queues events to a
    background thread, so a flush can miss them and a killed run keeps an empty file): each report is
    on disk when ``flush`` returns; a URI run dir gets a mirror at checkpoints and at close."""

    def __init__(self, run_dir: str, purge_step: int | None = None):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.dest = storage.join(run_dir, "tensorboard")
        self.local = self.dest if not storage.is_uri(run_dir) else tempfile.mkdtemp(prefix="instsynth-tb-")
        os.makedirs(self.local, exist_ok=True)
        self.events = EventsWriter(os.path.join(self.local, "events"))
        if purge_step is not None:  # a resumed start: TensorBoard drops the earlier files' events with a step
            # >= this one (steps a lost worker reported after its last checkpoint), so each step shows once
            self.events.write_event(Event(step=purge_step, file_version="brain.Event:2"))
            self.events.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, values: dict, step: int) -> None:
        import time

        from tensorboardX.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                             for k, v in values.items()])
        self.events.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self, upload: bool = False) -> None:
        self.events.flush()
        if upload and self.local != self.dest:
            storage.upload_dir(self.local, self.dest)

    def close(self) -> None:
        self.events.close()
        if self.local != self.dest:
            storage.upload_dir(self.local, self.dest)
            shutil.rmtree(self.local, ignore_errors=True)


def bn_mode(cfg: TrainConfig, world: int) -> str:
    """``frozen`` with backbone weights (detectron2's FrozenBN), ``sync`` across GPU workers, else ``batch``."""
    if family(cfg.model.name).backbone_weights and cfg.model.backbone_weights:
        return "frozen"
    return "sync" if cfg.sync_bn and cfg.use_gpu and world > 1 else "batch"


def quiet_reports(verbose: bool) -> None:
    """Ray Train 2.60 logs every ``train.report`` at INFO on a logger named by its file path (outside
    ``ray.train``, so ``LoggingConfig`` does not reach it) and the worker prints it to the console; keep it
    to ``--verbose``.  Internal module: a Ray upgrade that moves it only brings the lines back."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.INFO if verbose else logging.WARNING)


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import torch
    from ray import train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    cfg = load_config(values={"train": config["train"]}).train
    run_dir, catalog = config["run_dir"], config["catalog"]
    quiet_reports(cfg.verbose)
    from instsynth.train.failures import quiet_input_errors  # deferred: imports Ray Train (~4 s)

    quiet_input_errors()
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = get_device()
    torch.manual_seed(cfg.seed)
    bn = bn_mode(cfg, world)
    spec = {"name": cfg.model.name, "kwargs": family(cfg.model.name).kwargs(cfg.model, catalog.classes)}
    model = build_model(spec["name"], **spec["kwargs"])
    if bn == "sync":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    amp = amp_dtype(cfg, device.type)
    if amp is not None and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # cuDNN's low-precision convolutions are NHWC
    model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) if world > 1 \
        else model.to(device)
    raw = model.module if hasattr(model, "module") else model
    opt = make_optimizer(raw, cfg)
    spec["recipe"] = recipe(cfg, world, device.type, bn)
    spec["data"] = {"dirs": cfg.dirs, "rows_original": len(catalog.orig), "rows_synthetic": len(catalog.synth),
                    "epoch_len": catalog.epoch_len, "fingerprint": catalog.fingerprint()}
    step, best = 0, -1.0
    ckpt = train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(io.BytesIO(storage.read_bytes(storage.join(d, "model.pt"))), map_location="cpu",
                               weights_only=True)
            raw.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
            meta = json.loads(storage.read_bytes(storage.join(d, "model.json")))
            best = float(meta.get("metrics", {}).get("best_AP50", -1.0))
    board = None
    if rank == 0:  # one line per start of the worker group: a restart after a lost worker adds one
        storage.append_text(storage.join(run_dir, "starts.jsonl"), json.dumps(
            {"start_step": step, "world_size": world, "resumed": bool(ckpt), "launch": config.get("launch", ""),
             "recipe": spec["recipe"]}) + "\n")
        # TensorBoard drops earlier events from the purge step on: the first step this start will report
        board = Board(run_dir, purge_step=step + 1 if ckpt else None)
    _, accum = grad_accum(cfg)
    last_ap = {"AP": -1.0, "AP50": -1.0}
    if cfg.ingest == "ray_data":
        loader = worker_batches(catalog, cfg, step, rank, ahead=2 * accum + 2)
    else:
        loader = iter(SampleLoader(catalog, cfg, step, cfg.iterations, rank, world,
                                   threads=cfg.loader_threads, ahead=2 * accum + 2))
    try:
        while step < cfg.iterations:
            lr = set_lr(opt, step, cfg)
            micro = []
            for _ in range(accum):
                images, targets = next(loader)
                micro.append((images.to(device, non_blocking=True),
                              [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]))
            losses = train_step(model, opt, micro, cfg.grad_clip, amp)
            step += 1
            metrics = {"step": step, "lr": lr, **{loss_name(k): v for k, v in losses.items()}}
            if board:
                board.scalars({f"train/{k}": v for k, v in losses.items()} | {"train/lr": lr}, step)
            evaluate = cfg.eval_root and (step % cfg.eval_every == 0 or step == cfg.iterations)
            if evaluate and rank == 0:
                res = evaluate_model(raw, cfg.eval_root, cfg.eval_split, cfg.eval_max_images,
                                     short_edge=cfg.eval_short_edge, max_size=cfg.eval_max_size,
                                     image_root=cfg.eval_image_root,
                                     classes=catalog.classes, verbose=cfg.verbose)
                last_ap = {"AP": res["scores"]["AP"] or 0.0, "AP50": res["scores"]["AP50"] or 0.0}
                board.scalars({"val/AP": last_ap["AP"], "val/AP50": last_ap["AP50"]}, step)
                if last_ap["AP50"] > best:
                    best = last_ap["AP50"]
                    with tempfile.TemporaryDirectory() as tmp:
                        save_checkpoint(tmp, model, opt, step, spec, {**last_ap, "best_AP50": best})
                        storage.upload_dir(tmp, storage.join(run_dir, "best"))
            metrics.update({"AP": last_ap["AP"], "AP50": last_ap["AP50"], "best_AP50": best})
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                with tempfile.TemporaryDirectory() as tmp:
                    if rank == 0:
                        save_checkpoint(tmp, model, opt, step, spec, metrics)
                        board.flush(upload=True)
                    train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)
            elif step % cfg.log_every == 0 or evaluate:
                if board:
                    board.flush()
                train.report(metrics)
    finally:
        if board:
            board.close()


def make_trainer(cfg: Config, catalog=None, launch: str | None = None):
    """The TorchTrainer for ``cfg.train`` (same name + storage path = resume); paths resolved here.

    ``catalog``: the data's row catalog when the caller already built it (the experiment names its runs
    from it), so the committed parts are listed once."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from instsynth.train.failures import Trainer  # deferred: imports Ray Train (~4 s)

    cfg = resolve_paths(cfg)
    t = cfg.train
    catalog = catalog if catalog is not None else build_catalog(t.dirs, t.synthetic_ratio, t.seed)
    run_dir = storage.join(t.storage_path, t.name)
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    ingest = {}
    if t.ingest == "ray_data":
        ingest = {"datasets": ray_ingest.datasets(catalog, t, run_dir), "dataset_config": ray_ingest.data_config()}
    return Trainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg)["train"], "run_dir": run_dir, "catalog": catalog,
                           "launch": launch or ""},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                                     placement_strategy=t.placement),
        run_config=RunConfig(name=t.name, storage_path=t.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             # a lost worker or node: the group restarts from the last reported checkpoint;
                             # an input error ends the run at once (instsynth.train.failures)
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             # Ray Train's life-cycle INFO lines (resources, worker group, every report's
                             # metrics) are noise on the console; its log files keep them; --verbose shows them
                             logging_config=LoggingConfig(log_level="INFO" if t.verbose else "WARNING")),
        **ingest,
    )


def run_training(cfg: Config, log=print, catalog=None):
    """Check, then fit (or resume) the run; returns the Ray Train Result."""
    cfg = resolve_paths(cfg)
    check_inputs(cfg, cfg.train.dirs)
    started = init_ray(cfg.run.address, cfg.run.log_level)
    try:
        check_gpus(cfg)
        import uuid

        from ray.train import TrainingFailedError

        from instsynth.train.failures import input_error  # deferred: imports Ray Train (~4 s)

        launch = uuid.uuid4().hex[:12]
        try:
            result = make_trainer(cfg, catalog, launch).fit()
        except TrainingFailedError as e:
            bad = input_error(e)
            if bad is None:
                raise
            # the worker's one line, not Ray Train's wrapped traceback
            raise (ConfigError(str(bad)) if isinstance(bad, ValueError) else bad) from None
        log(training_summary(cfg, result, launch))
        return result
    finally:
        if started:
            import ray

            ray.shutdown()


def training_summary(cfg: Config, result, launch: str | None = None) -> str:
    """What a finished ``train`` says: how far it trained this time (or that there was nothing left),
    where the best checkpoint is and its validation AP50 at the stated test scale."""
    t = cfg.train
    run_dir = storage.join(t.storage_path, t.name)
    starts = []
    try:
        starts = [json.loads(ln) for ln in storage.read_bytes(storage.join(run_dir, "starts.jsonl")).decode().splitlines()
                  if ln.strip()]
    except storage.StorageError:
        pass
    mine = [s for s in starts if launch and s.get("launch") == launch]
    restarts = max(0, len(mine) - 1)  # starts of this launch after its first: the worker group was restarted
    starts = mine[:1] or starts[-1:]
    start = starts[-1]["start_step"] if starts else 0
    if start >= t.iterations:
        lines = [f"nothing left to train: {t.name} already reached step {t.iterations} (train.iterations); "
                 f"raise train.iterations to continue it"]
    else:
        lines = [f"trained {t.model.name} {t.name} from step {start} to step {t.iterations}"
                 + (" (resumed)" if start else "")
                 + (f"; {restarts} restart{'s' if restarts != 1 else ''} after a lost worker, each from the last "
                    "checkpoint" if restarts else "")]
    best = storage.join(run_dir, "best")
    try:
        meta = json.loads(storage.read_bytes(storage.join(best, "model.json")))
        recipe = meta.get("recipe", {})
        scale = scale_label(recipe.get("eval_short_edge"), recipe.get("eval_max_size"))
        ap50 = meta.get("metrics", {}).get("best_AP50")
        lines.append(f"best checkpoint: {best} (step {meta['step']}, val AP50 {100 * ap50:.1f} at test scale "
                     f"{scale}); "
                     f"evaluate it: instsynth evaluate --checkpoint {best} --data-root {t.eval_root}")
    except (storage.StorageError, ValueError, KeyError, TypeError):
        last = checkpoint_uri(result.checkpoint) or "-"
        lines.append(f"no best/ checkpoint (no validation ran: train.eval_root, train.eval_every); "
                     f"last checkpoint: {last}")
    lines.append(f"TensorBoard: tensorboard --logdir {storage.join(run_dir, 'tensorboard')}")
    return "\n".join(lines)
