"""The optimisation recipe: LR schedule, parameter groups, gradient accumulation, autocast choice."""

import pytest
import torch

from instsynth.config import ConfigError, grad_accum, load_config
from instsynth.train.models import build_model
from instsynth.train.recipe import amp_dtype, lr_factor, make_optimizer, param_groups, set_lr


def _cfg(*sets):
    return load_config(None, list(sets)).train


def test_lr_schedule_warmup_then_poly():
    c = _cfg("train.iterations=1000", "train.warmup_iters=100", "train.warmup_factor=0.001", "train.lr=1e-4")
    assert lr_factor(0, c) == pytest.approx(0.001)
    assert lr_factor(50, c) == pytest.approx((0.001 * 0.5 + 0.5) * (1 - 0.05) ** 0.9)
    assert lr_factor(100, c) == pytest.approx((1 - 0.1) ** 0.9)  # warmup end: the poly value
    assert lr_factor(999, c) == pytest.approx((1 / 1000) ** 0.9)  # last iteration
    assert lr_factor(1000, c) == 0.0
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "base_lr": 1e-5}], lr=1e-4)
    assert set_lr(opt, 100, c) == pytest.approx(1e-4 * 0.9 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 * 0.9 ** 0.9)  # each group scales its own LR


def test_fastinsts_published_step_schedule():
    """schedule: step - constant LR after a 10-iteration warmup from x1.0 (no ramp), x0.1 at 89% and 96%."""
    c = _cfg("train.iterations=1000", "train.schedule=step", "train.warmup_iters=10", "train.warmup_factor=1.0")
    assert [lr_factor(s, c) for s in (0, 5, 10, 889)] == [1.0, 1.0, 1.0, 1.0]
    assert lr_factor(890, c) == pytest.approx(0.1) and lr_factor(959, c) == pytest.approx(0.1)
    assert lr_factor(960, c) == pytest.approx(0.01) and lr_factor(999, c) == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="train.lr_steps"):
        _cfg("train.lr_steps=[0.5, 1.5]")


def test_param_groups_backbone_multiplier_and_no_decay():
    model = build_model("fastinst", tiny=True)
    c = _cfg("train.lr=1e-4", "train.backbone_lr_mult=0.1", "train.weight_decay=0.05")
    groups = {g["name"]: g for g in param_groups(model, c)}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["head"]["lr"] == pytest.approx(1e-4)
    assert groups["head/no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.05
    ids = {n: {id(p) for p in g["params"]} for n, g in groups.items()}
    assert id(model.aux_queries.weight) in ids["head/no_decay"]  # embeddings
    assert id(model.pos_embed) in ids["head/no_decay"]
    assert id(model.heads[0].norm.weight) in ids["head/no_decay"]  # norms
    assert id(model.heads[0].cls.layers[0].bias) in ids["head/no_decay"]  # biases
    assert id(model.heads[0].cls.layers[0].weight) in ids["head"]
    assert id(model.backbone.stem[1].weight) in ids["backbone/no_decay"]  # BN affine
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_params
    assert len(make_optimizer(model, c).param_groups) == 4


def test_grad_accum_makes_up_the_batch():
    assert grad_accum(_cfg("train.batch_size=4", "train.num_workers=1", "train.worker_batch=1")) == (1, 4)
    assert grad_accum(_cfg("train.batch_size=4", "train.num_workers=4")) == (1, 1)
    assert grad_accum(_cfg("train.batch_size=8", "train.num_workers=2", "train.worker_batch=2")) == (2, 2)
    with pytest.raises(ConfigError, match="train.batch_size"):
        _cfg("train.batch_size=4", "train.num_workers=3")


def test_bf16_autocast_on_gpus_fp32_on_cpus_by_default():
    c = _cfg()
    assert amp_dtype(c, "cuda") == torch.bfloat16 and amp_dtype(c, "cpu") is None
    assert amp_dtype(_cfg("train.amp=fp32"), "cuda") is None
    assert amp_dtype(_cfg("train.amp=bf16"), "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="train.amp"):
        _cfg("train.amp=int4")


def test_paper_defaults():
    c = _cfg()
    assert (c.lr, c.batch_size, c.iterations, c.crop) == (1e-4, 4, 90000, "720x360")
    assert c.short_edge == [512, 2048] and c.eval_short_edge == 1024
    assert (c.poly_power, c.backbone_lr_mult) == (0.9, 0.1)
