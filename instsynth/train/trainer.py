"""Ray Train (V2) trainer: ``TorchTrainer`` over IS-Cityscapes output dirs, resumable by name.

One training-step function (``train_step``) serves the distributed loop and in-process use.  A
crashed or re-launched run with the same ``train.name`` and ``train.storage_path`` resumes from its
latest checkpoint (Ray Train V2: re-create the trainer; ``ray.train.get_checkpoint()`` returns it).
Metrics go through ``ray.train.report`` and to TensorBoard (``<storage>/<name>/tensorboard``);
periodic validation AP keeps the best checkpoint as ``best/``.
"""

from __future__ import annotations

import json
import os
import tempfile

from instsynth.config import Config, ModelConfig, TrainConfig, to_dict


def model_kwargs(m: ModelConfig) -> dict:
    if m.name == "fastinst":
        return {"tiny": m.tiny, "backbone_weights": m.backbone_weights, **m.params}
    return {"pretrained": m.pretrained, "tiny": m.tiny, **m.params}


def train_step(model, optimizer, images, targets, grad_clip: float = 0.0) -> dict[str, float]:
    """One optimisation step; returns the loss dict as floats."""
    import torch

    model.train()
    losses = model(images, targets)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def save_checkpoint(path: str, model, optimizer, step: int, spec: dict, metrics: dict) -> None:
    import torch

    os.makedirs(path, exist_ok=True)
    raw = model.module if hasattr(model, "module") else model
    torch.save({"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
               os.path.join(path, "model.pt"))
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump({**spec, "step": step, "metrics": metrics}, f)


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import torch
    from ray import train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from instsynth.config import load_config
    from instsynth.train.data import collate
    from instsynth.train.evaluate import evaluate_model
    from instsynth.train.models import build_model

    cfg = load_config(values={"train": config["train"]}).train if "train" in config else TrainConfig()
    torch.manual_seed(cfg.seed)
    spec = {"name": cfg.model.name, "kwargs": model_kwargs(cfg.model)}
    model = build_model(spec["name"], **spec["kwargs"])
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = get_device()
    model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) if world > 1 \
        else model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best = 0, -1.0
    ckpt = train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "model.pt"), map_location="cpu", weights_only=True)
            (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
            with open(os.path.join(d, "model.json")) as f:
                best = float(json.load(f).get("metrics", {}).get("best_AP50", -1.0))
    writer = None
    if rank == 0:
        from tensorboardX import SummaryWriter

        os.makedirs(config["run_dir"], exist_ok=True)
        with open(os.path.join(config["run_dir"], "starts.jsonl"), "a") as f:  # run history: where each launch began
            f.write(json.dumps({"start_step": step, "world_size": world, "resumed": bool(ckpt)}) + "\n")
        writer = SummaryWriter(os.path.join(config["run_dir"], "tensorboard"))
    shard = train.get_dataset_shard("train")
    per_worker = max(1, cfg.batch_size // world)
    last_ap = {"AP": -1.0, "AP50": -1.0}
    while step < cfg.iterations:
        for images, targets in shard.iter_torch_batches(batch_size=per_worker, collate_fn=collate,
                                                        drop_last=True):
            images = images.to(device)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = train_step(model, opt, images, targets, cfg.grad_clip)
            step += 1
            metrics = {"step": step, **{f"loss_{k}": v for k, v in losses.items()}}
            if writer:
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v, step)
            if cfg.eval_root and (step % cfg.eval_every == 0 or step == cfg.iterations) and rank == 0:
                raw = model.module if hasattr(model, "module") else model
                res = evaluate_model(raw, cfg.eval_root, cfg.eval_split, cfg.eval_max_images)
                last_ap = {"AP": res["cityscapes"]["AP"] or 0.0, "AP50": res["cityscapes"]["AP50"] or 0.0}
                if writer:
                    writer.add_scalar("val/AP", last_ap["AP"], step)
                    writer.add_scalar("val/AP50", last_ap["AP50"], step)
                if last_ap["AP50"] > best:
                    best = last_ap["AP50"]
                    save_checkpoint(os.path.join(config["run_dir"], "best"), model, opt, step, spec,
                                    {**last_ap, "best_AP50": best})
            metrics.update({"AP": last_ap["AP"], "AP50": last_ap["AP50"], "best_AP50": best})
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                with tempfile.TemporaryDirectory() as tmp:
                    if rank == 0:
                        save_checkpoint(tmp, model, opt, step, spec, metrics)
                    train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)
            else:
                train.report(metrics)
            if step >= cfg.iterations:
                break
    if writer:
        writer.close()


def make_trainer(cfg: Config, datasets: dict | None = None):
    """The TorchTrainer for ``cfg.train`` (same name + storage path = resume)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from instsynth.train.data import train_dataset

    t = cfg.train
    storage_path = os.path.abspath(t.storage_path) if "://" not in t.storage_path else t.storage_path
    run_dir = os.path.join(storage_path, t.name)
    datasets = datasets or {"train": train_dataset(t)}
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg)["train"], "run_dir": run_dir},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=t.name, storage_path=storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=3)),
        datasets=datasets,
    )


def run_training(cfg: Config, log=print):
    """Fit (or resume) the run; returns the Ray Train Result."""
    from instsynth.pipeline import init_ray

    started = init_ray(cfg.run.address, cfg.run.log_level)
    try:
        result = make_trainer(cfg).fit()
        log(f"trained {cfg.train.model.name} to step {result.metrics.get('step')}; "
            f"checkpoint {result.checkpoint.path if result.checkpoint else '-'}; "
            f"TensorBoard: tensorboard --logdir {os.path.join(os.path.abspath(cfg.train.storage_path), cfg.train.name)}")
        return result
    finally:
        if started:
            import ray

            ray.shutdown()
