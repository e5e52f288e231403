"""Instance segmenters behind one interface, built from config or plain arguments.

``model(images_uint8_BCHW, targets)`` -> loss dict (training; targets: list of {"masks": (N,H,W) bool,
"labels": (N,) class index into ``classes``, the training data's evaluated classes - Cityscapes' eight by
default}); ``model(images)`` in eval mode -> list of
{"masks": (K,H,W) bool, "labels": (K,), "scores": (K,)} per image.
"""

from __future__ import annotations


def build_model(name: str, **kw):
    """``fastinst`` | ``maskrcnn`` (the reference) | ``mask2former`` | ``oneformer`` with their own keyword arguments."""
    if name == "fastinst":
        from instsynth.train.models.fastinst import build_fastinst

        return build_fastinst(**kw)
    if name == "maskrcnn":
        from instsynth.train.models.maskrcnn import MaskRCNN

        return MaskRCNN(**kw)
    if name == "mask2former":
        from instsynth.train.models.hf import Mask2Former

        return Mask2Former(**kw)
    if name == "oneformer":
        from instsynth.train.models.hf import OneFormer

        return OneFormer(**kw)
    raise ValueError(f"train.model.name: unknown model {name!r}; known: fastinst, maskrcnn, mask2former, oneformer")
