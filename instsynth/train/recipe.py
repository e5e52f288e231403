"""The optimisation recipe: parameter groups, the LR schedule, autocast - one place, recorded per run.

FastInst and Mask2Former train with AdamW, the backbone at 0.1x the base LR, no weight decay on
normalisation layers, biases and embeddings (decay there only shrinks scales and offsets), linear
warmup then poly(0.9) decay, and full-model gradient clipping; the paper's setting is lr 1e-4, batch
4, 90k iterations.  ``recipe()`` is what each checkpoint's ``model.json`` records.
"""

from __future__ import annotations

from instsynth.config import TrainConfig, grad_accum

_NO_DECAY_TYPES = ("BatchNorm", "GroupNorm", "LayerNorm", "FrozenBatchNorm", "Embedding", "SyncBatchNorm")


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Four groups: (backbone or not) x (decay or not), each with its LR and weight decay."""
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for mname, module in model.named_modules():
        no_decay_module = any(t in type(module).__name__ for t in _NO_DECAY_TYPES)
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            # the CNN trains at backbone_lr_mult; an FPN inside a "backbone" (torchvision's) is a head
            backbone = (full.startswith("backbone.") or ".backbone." in full) and ".fpn." not in full
            decay = not (no_decay_module or p.ndim <= 1 or "pos_embed" in full)
            groups.setdefault((backbone, decay), []).append(p)
    out = []
    for (backbone, decay), params in sorted(groups.items()):
        mult = cfg.backbone_lr_mult if backbone else 1.0
        out.append({"params": params, "lr": cfg.lr * mult, "base_lr": cfg.lr * mult,
                    "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{'backbone' if backbone else 'head'}{'' if decay else '/no_decay'}"})
    return out


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at (0-based) ``step``: linear warmup from ``warmup_factor``, times the decay - poly
    (``schedule: poly``) or x``lr_gamma`` at each fraction of ``iterations`` in ``lr_steps`` (``step``:
    detectron2's WarmupMultiStepLR, FastInst's published recipe: steps at 0.89 and 0.96, 10 warmup its)."""
    if cfg.schedule == "step":
        decay = cfg.lr_gamma ** sum(step >= int(f * cfg.iterations) for f in cfg.lr_steps)
    else:
        decay = (1 - min(step, cfg.iterations) / cfg.iterations) ** cfg.poly_power
    if step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        return decay * (cfg.warmup_factor * (1 - alpha) + alpha)
    return decay


def make_optimizer(model, cfg: TrainConfig):
    import torch

    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_lr(optimizer, step: int, cfg: TrainConfig) -> float:
    f = lr_factor(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * f
    return cfg.lr * f


def amp_dtype(cfg: TrainConfig, device_type: str):
    """bf16 autocast on GPUs by default (``auto``); CPUs train in fp32 unless asked otherwise."""
    import torch

    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[mode]


def recipe(cfg: TrainConfig, world: int, device_type: str, bn: str) -> dict:
    wb, accum = grad_accum(cfg)
    dt = amp_dtype(cfg, device_type)
    return {"optimizer": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "no_decay": "norms, biases, embeddings", "backbone_lr_mult": cfg.backbone_lr_mult,
            "schedule": f"linear warmup {cfg.warmup_iters} it from x{cfg.warmup_factor}, " + (
                f"x{cfg.lr_gamma} at {cfg.lr_steps} of the run" if cfg.schedule == "step" else f"poly({cfg.poly_power})"),
            "iterations": cfg.iterations, "batch_size": cfg.batch_size, "workers": world, "worker_batch": wb,
            "grad_accum": accum, "grad_clip": cfg.grad_clip, "amp": str(dt).replace("torch.", "") if dt else "fp32",
            "batchnorm": bn, "short_edge": list(cfg.short_edge), "crop": cfg.crop, "flip": cfg.flip, "mapper": cfg.mapper,
            "max_size": cfg.max_size, "eval_short_edge": cfg.eval_short_edge, "eval_max_size": cfg.eval_max_size,
            "synthetic_ratio": cfg.synthetic_ratio, "seed": cfg.seed}
