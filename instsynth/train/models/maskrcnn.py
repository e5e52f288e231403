"""torchvision's Mask R-CNN as the reference model: a segmenter people already trust, trained side by
side with FastInst through the same loader, recipe and evaluator.

Why a reference: when FastInst learns slowly, the question is whether the model, the trainer or the
data is at fault.  The reference takes the same backbones and weights (``backbones.py``), its own
losses (RPN + box + mask heads), and sees exactly the pixels FastInst sees: torchvision's own
resizing is switched off (the loader already chose the scale), so both are compared at one test scale.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from instsynth.datasets.cityscapes import THING_CLASSES
from instsynth.train.models import backbones


class _Body(nn.Module):
    """Stride-8/16/32 features as the OrderedDict torchvision's FPN takes."""

    def __init__(self, stem, stages):
        super().__init__()
        self.stem = stem
        self.res3, self.res4, self.res5 = stages

    def forward(self, x):
        c3 = self.res3(self.stem(x))
        c4 = self.res4(c3)
        return OrderedDict([("0", c3), ("1", c4), ("2", self.res5(c4))])


class _Features(nn.Module):
    def __init__(self, body: nn.Module, channels, out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(self.body(x))


class MaskRCNN(nn.Module):
    """``model(images_uint8_BCHW, targets)`` -> losses (``loss`` = their sum); eval -> masks, labels, scores."""

    def __init__(self, backbone: str = "resnet50", backbone_weights: str | None = None, tiny: bool = False,
                 frozen_bn: bool | None = None, fpn_channels: int | None = None, num_classes: int = len(THING_CLASSES),
                 detections: int = 100, classes: list[str] | None = None):
        super().__init__()
        if classes is not None:  # the training data's label space (its evaluated classes)
            num_classes = len(classes)
        from torchvision.models.detection import MaskRCNN as TVMaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.ops import MultiScaleRoIAlign

        if tiny and backbone == "resnet50":
            backbone = "resnet18"
        net, stem, stages, channels = backbones.build(backbone)
        if backbone_weights:
            backbones.load_weights(net, backbone_weights, backbone)
        body = _Body(stem, stages)
        if (bool(backbone_weights) if frozen_bn is None else frozen_bn):
            backbones.freeze_batchnorm(body)
        dim = fpn_channels or (64 if tiny else 256)
        levels = ["0", "1", "2", "pool"]
        anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
        self.net = TVMaskRCNN(
            _Features(body, channels, dim), num_classes=num_classes + 1, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(levels[:3], 7, 2), mask_roi_pool=MultiScaleRoIAlign(levels[:3], 14, 2),
            min_size=1, max_size=100000, box_detections_per_img=detections,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        self.net.transform.resize = lambda image, target=None: (image, target)  # the loader chose the scale

    def forward(self, images, targets=None):
        x = list(images.float() / 255.0)
        if self.training and targets is not None:
            losses = self.net(x, [_target(t) for t in targets])
            return {"loss": sum(losses.values()), **losses}
        with torch.no_grad():
            out = self.net(x)
        return [{"masks": (o["masks"][:, 0] > 0.5).cpu(), "labels": (o["labels"] - 1).cpu(),
                 "scores": o["scores"].cpu()} for o in out]


def _target(t: dict) -> dict:
    """Project targets (masks, 0-based labels) as torchvision's (boxes, 1-based labels, masks)."""
    from torchvision.ops import masks_to_boxes

    masks = t["masks"].bool()
    keep = masks.flatten(1).any(1) if len(masks) else torch.zeros(0, dtype=torch.bool, device=masks.device)
    masks, labels = masks[keep], t["labels"][keep]
    boxes = masks_to_boxes(masks) if len(masks) else torch.zeros((0, 4), device=masks.device)
    boxes[:, 2:] += 1  # inclusive max -> exclusive: every box has positive width and height
    return {"boxes": boxes.float(), "labels": labels.long() + 1, "masks": masks.to(torch.uint8)}
