"""Instance segmenters behind one interface, built from config or plain arguments.

``model(images_uint8_BCHW, targets)`` -> loss dict (training; targets: list of {"masks": (N,H,W) bool,
"labels": (N,) class index into ``classes``, the training data's evaluated classes - Cityscapes' eight by
default}); ``model(images)`` in eval mode -> list of
{"masks": (K,H,W) bool, "labels": (K,), "scores": (K,)} per image.
"""

from __future__ import annotations


def check_kwargs(builder, kw: dict) -> None:
    """Every keyword is one ``builder`` takes (one line naming ``train.model.params.<key>`` and the valid
    ones): a typo in a config must not reach the worker as a TypeError traceback."""
    import dataclasses
    import inspect

    from instsynth.config import ConfigError

    params = dict(inspect.signature(builder).parameters)
    if dataclasses.is_dataclass(builder):
        params = {f.name: f for f in dataclasses.fields(builder)} | {"tiny": None, "classes": None}
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ConfigError(f"train.model.params.{unknown[0]}: not a parameter of this model; valid: "
                          f"{', '.join(k for k in params if k not in ('self', 'classes'))}")


def _builder(name: str):
    """(the callable that builds model ``name``, what its keywords are checked against)."""
    if name == "fastinst":
        from instsynth.train.models.fastinst import FastInstConfig, build_fastinst

        return build_fastinst, FastInstConfig
    if name == "maskrcnn":
        from instsynth.train.models.maskrcnn import MaskRCNN

        return MaskRCNN, MaskRCNN
    if name == "mask2former":
        from instsynth.train.models.hf import Mask2Former

        return Mask2Former, Mask2Former
    if name == "oneformer":
        from instsynth.train.models.hf import OneFormer

        return OneFormer, OneFormer
    from instsynth.config import ConfigError

    raise ConfigError(f"train.model.name: unknown model {name!r}; known: fastinst, maskrcnn, mask2former, oneformer")


def check_params(name: str, **kw) -> None:
    """The driver's check of a model's keywords before any worker starts (one line)."""
    check_kwargs(_builder(name)[1], kw)


def build_model(name: str, **kw):
    """``fastinst`` | ``maskrcnn`` (the reference) | ``mask2former`` | ``oneformer`` with their own keyword arguments."""
    build, signature = _builder(name)
    check_kwargs(signature, kw)
    return build(**kw)
