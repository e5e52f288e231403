"""Instance segmenters behind one interface, built from config or plain arguments.

``model(images_uint8_BCHW, targets)`` -> loss dict (training; targets: list of {"masks": (N,H,W) bool,
"labels": (N,) class index into ``classes``, the training data's evaluated classes - Cityscapes' eight by
default}); ``model(images)`` in eval mode -> list of
{"masks": (K,H,W) bool, "labels": (K,), "scores": (K,)} per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from instsynth.config import ConfigError


def check_kwargs(builder, kw: dict) -> None:
    """Every keyword is one ``builder`` takes (one line naming ``train.model.params.<key>`` and the valid
    ones): a typo in a config must not reach the worker as a TypeError traceback."""
    import dataclasses
    import inspect

    params = dict(inspect.signature(builder).parameters)
    if hasattr(builder, "config_keys"):  # a Hugging Face model: its config's keys pass through **overrides
        params = {k: v for k, v in params.items() if v.kind != v.VAR_KEYWORD} | dict.fromkeys(builder.config_keys())
    if dataclasses.is_dataclass(builder):
        params = {f.name: f for f in dataclasses.fields(builder)} | {"tiny": None, "classes": None}
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ConfigError(f"train.model.params.{unknown[0]}: not a parameter of this model; valid: "
                          f"{', '.join(k for k in params if k not in ('self', 'classes'))}")


@dataclass(frozen=True)
class Family:
    """A model family and what the trainer needs to know of it, in one place (no ``if name ==`` elsewhere).

    ``builder``: "module:callable" that builds it from keywords; ``signature``: what its keywords are checked
    against ("module:Class", default the builder); ``backbone_weights``: it takes ImageNet weights through
    ``train.model.backbone_weights`` (checked key by key at launch, BatchNorm frozen with them), else a
    Hugging Face ``pretrained`` model (``pretrained``: it takes one); ``backbone``: its backbone when the
    config names none (tiny, full)."""

    builder: str
    signature: str | None = None
    backbone_weights: bool = False
    pretrained: bool = False
    backbone: tuple[str, str] = ("resnet18", "resnet50")

    def load(self, ref: str | None = None):
        import importlib

        mod, attr = (ref or self.builder).split(":")
        return getattr(importlib.import_module(mod), attr)

    def kwargs(self, m, classes: list[str] | None = None) -> dict:
        """The model's keyword arguments from its config (recorded in model.json)."""
        kw = {"tiny": m.tiny}
        if self.pretrained:
            kw["pretrained"] = m.pretrained
        if self.backbone_weights:
            kw["backbone_weights"] = m.backbone_weights
        return {**kw, **({"classes": list(classes)} if classes is not None else {}), **m.params}


FAMILIES = {
    "fastinst": Family("instsynth.train.models.fastinst:build_fastinst", "instsynth.train.models.fastinst:FastInstConfig",
                       backbone_weights=True),
    "maskrcnn": Family("instsynth.train.models.maskrcnn:MaskRCNN", backbone_weights=True),
    "mask2former": Family("instsynth.train.models.hf:Mask2Former", backbone_weights=True, pretrained=True),
    "oneformer": Family("instsynth.train.models.hf:OneFormer", pretrained=True),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"train.model.name: unknown model {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_params(name: str, **kw) -> None:
    """The driver's check of a model's keywords before any worker starts (one line)."""
    f = family(name)
    check_kwargs(f.load(f.signature), kw)


def build_model(name: str, **kw):
    """``fastinst`` | ``maskrcnn`` (the reference) | ``mask2former`` | ``oneformer`` with their own keyword arguments."""
    check_params(name, **kw)
    return family(name).load()(**kw)
