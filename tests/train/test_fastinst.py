"""FastInst unit tests, one per published design point: query selection, the proposal loss over every
E4 pixel, masks from the updated pixel path, shared positions, GT-mask-guided learning with the last
layer's matching, location-aware matching, ``num_points``, FrozenBN."""

import torch
import torch.nn.functional as F

from instsynth.train.models import fastinst as fi
from instsynth.train.models.fastinst import FastInst, FastInstConfig, select_queries


def _model(**kw):
    torch.manual_seed(0)
    return FastInst(FastInstConfig.tiny(**kw))


def _targets(b=2, h=128, w=256):
    out = []
    for _ in range(b):
        m = torch.zeros(2, h, w, dtype=torch.bool)
        m[0, 10:60, 20:90] = True
        m[1, 70:120, 100:200] = True
        out.append({"masks": m, "labels": torch.tensor([2, 0])})
    return out


def _images(b=2, h=128, w=256):
    return torch.randint(0, 255, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_query_selection_ranks_per_class_local_maxima_first():
    logits = torch.full((1, 3, 8, 8), -30.0)
    logits[0, 2] = 0.0  # no-object everywhere (foreground below the 1e-6 floor of a maximum), except:
    logits[0, 0, 1, 1] = 3.0  # a class-0 peak
    logits[0, 0, 1, 2] = 2.5  # its class-0 neighbour: not a maximum of the class-0 map
    logits[0, 1, 5, 5] = 1.0  # a weaker class-1 peak: a maximum of its own class map
    idx = select_queries(logits, 3)
    assert [int(i) for i in idx[0][:2]] == [1 * 8 + 1, 5 * 8 + 5]  # both maxima before the stronger non-maximum
    assert int(idx[0][2]) == 1 * 8 + 2
    # a pixel next to a stronger pixel of *another* class is still a maximum of its own class
    logits[0, 1, 1, 2], logits[0, 0, 1, 2] = 2.9, -30.0
    logits[0, 0, 1, 1] = 3.0
    idx = select_queries(logits, 3)
    assert set(int(i) for i in idx[0][:3]) == {9, 10, 45}
    many = select_queries(logits, 100)  # more queries than the 64 cells: every cell, then again in rank order
    assert many.shape == (1, 100) and set(many[0, :64].tolist()) == set(range(64))
    assert torch.equal(many[0, 64:], many[0, :36])


def test_output_shapes_and_losses():
    m = _model()
    m.eval()
    out = m(_images())
    assert len(out) == 2
    assert out[0]["masks"].shape == (20, 128, 256) and out[0]["masks"].dtype == torch.bool
    assert out[0]["scores"].shape == (20,) and int(out[0]["labels"].max()) < 8
    m.train()
    losses = m(_images(), _targets())
    assert {"loss", "ce", "bce", "dice", "proposal"} <= set(losses) and losses["loss"].requires_grad


def test_proposal_loss_supervises_every_e4_pixel():
    m = _model()
    aux = torch.zeros(2, 9, 16, 32, requires_grad=True)
    m.proposal_loss(aux, _targets()).backward()
    per_pixel = aux.grad.abs().sum(1)  # (B, H4, W4)
    assert bool((per_pixel > 0).all())  # every pixel gets a target (matched class or no-object)
    # the matched pixels are one per GT and lie inside their GT masks
    (pi, ti), _ = m.match_pixels(aux.detach(), _targets())
    inside = fi.proposal_cells(_targets()[0]["masks"], (16, 32)).flatten(1)
    assert len(pi) == 2 and all(bool(inside[t, p]) for p, t in zip(pi.tolist(), ti.tolist()))


def test_proposal_cells_mark_every_cell_holding_a_pixel():
    """The authors' rule (adaptive average pooling > 0): a 2x2 GT at (1, 1) of a 64x64 mask marks cell 0 of
    a 4x4 grid and only it; a one-pixel GT still gets its cell (nearest downsampling loses it)."""
    m = torch.zeros(2, 64, 64, dtype=torch.bool)
    m[0, 1:3, 1:3] = True
    m[1, 37, 50] = True
    cells = fi.proposal_cells(m, (4, 4))
    assert cells.shape == (2, 4, 4) and cells.dtype == torch.bool
    assert cells[0].nonzero().tolist() == [[0, 0]]
    assert cells[1].nonzero().tolist() == [[2, 3]]
    assert fi.proposal_cells(m[:0], (4, 4)).shape == (0, 4, 4)


def test_location_cost_samples_the_full_resolution_mask_at_the_query():
    """Official compute_coordinates + point_sample: cell (y, x) of an h x w grid sits at
    (linspace(0,1,w)[x], linspace(0,1,h)[y]); the corner cells sit on the image corners."""
    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[0, :4, :4] = True  # the top-left corner only
    inside = fi.query_inside(m, torch.arange(16), (4, 4))  # (Q, T)
    assert inside[:, 0].nonzero().flatten().tolist() == [0]
    assert torch.allclose(fi.query_locations(torch.tensor([5]), (4, 4)), torch.tensor([[1 / 3, 1 / 3]]))


def test_location_rule_cells_agrees_with_the_proposal_targets():
    """``location_rule: cells``: a query is inside a GT exactly when its cell holds a pixel of it (the
    proposal targets' rule), where the authors' point of that cell can miss a small GT; an unknown rule fails
    in one line naming the key and the valid ones."""
    import pytest

    from instsynth.errors import ConfigError

    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[0, 20:24, 20:24] = True  # in cell 5 (pixels 16-31), over its point (x = y = 1/3 of the side)
    m[0, 40:42, 60:62] = True  # in cell 11, whose point sits on the right border (x = 1): not over it
    idx = torch.arange(16)
    cells = _model(location_rule="cells").location_cost(idx, m, (4, 4))[:, 0] == 0
    assert cells.nonzero().flatten().tolist() == fi.proposal_cells(m, (4, 4))[0].flatten().nonzero().flatten().tolist()
    assert cells.nonzero().flatten().tolist() == [5, 11]
    authors = _model().location_cost(idx, m, (4, 4))[:, 0] == 0
    assert authors.nonzero().flatten().tolist() == [5]  # cell 11's point misses the GT it holds
    with pytest.raises(ConfigError, match=r"^train.model.params.location_rule: unknown 'centre'; valid: authors, cells$"):
        FastInstConfig(location_rule="centre")


def test_small_inputs_with_fewer_cells_than_queries():
    """20 queries on an input whose E4 grid has 8 cells: training and inference run (it crashed in the
    attention mask before)."""
    m = _model()
    images = torch.randint(0, 255, (1, 3, 64, 128), dtype=torch.uint8)
    targets = [{"masks": torch.zeros(1, 64, 128, dtype=torch.bool), "labels": torch.tensor([1])}]
    targets[0]["masks"][0, 10:40, 20:60] = True
    m.train()
    assert torch.isfinite(m(images, targets)["loss"])
    m.eval()
    assert len(m(images)[0]["scores"]) == m.cfg.test_topk


def test_masks_follow_the_updated_pixel_path():
    m = _model(dec_layers=2)
    m.eval()
    seen = {}
    m.layers[-1].register_forward_hook(lambda mod, inp, out: seen.__setitem__("layer", out[0]))
    m.heads[-1].register_forward_hook(lambda mod, inp, out: seen.__setitem__("head", inp[1]))
    preds, *_ = m.decode(_images())
    assert torch.equal(seen["head"], seen["layer"])  # the last head projects the last layer's pixels
    # changing the pixel path (its FFN) changes the masks predicted from it
    with torch.no_grad():
        m.layers[-1].pix_ffn[2].weight.mul_(1.5)
    preds2, *_ = m.decode(_images())
    assert not torch.allclose(preds[-1][1], preds2[-1][1])


def test_query_and_pixel_positions_come_from_one_embedding():
    m = _model()
    e4 = torch.randn(1, 64, 16, 32)
    q, pos, idx, _ = m.initial_queries(e4)
    grid = m.positions((16, 32))[0]
    assert torch.equal(pos[0, : m.cfg.num_queries], grid[idx[0]])
    assert m.positions((32, 64)).shape == (1, 32 * 64, 64)  # the pixel grid: same embedding, resized


def test_gt_mask_guided_pass_reuses_the_last_layers_matching():
    m = _model(dec_layers=2)
    m.train()
    seen, calls = [], []
    for i, layer in enumerate(m.layers):
        orig = layer.forward

        def spy(pix, pix_pos, q, q_pos, attn_mask, orig=orig, i=i):
            seen.append((i, attn_mask.clone()))
            return orig(pix, pix_pos, q, q_pos, attn_mask)
        layer.forward = spy
    match = m.match

    def match_spy(preds, *a, **k):
        calls.append(len(preds))
        return match(preds, *a, **k)
    m.match = match_spy
    targets = _targets()
    m(_images(), targets)
    assert [i for i, _ in seen] == [0, 1, 0, 1]  # the normal pass, then every layer again, guided
    assert calls == [1, 2]  # last layer matched once (for guidance); the two earlier stages in one batch
    guided = seen[2][1]
    assert torch.equal(seen[2][1], seen[3][1])  # one GT attention mask from the last layer's matching
    gt0 = F.interpolate(targets[0]["masks"][:, None].float(), size=(16, 32), mode="nearest")[:, 0]
    rows = [guided[0, q] for q in range(m.cfg.num_queries)]
    for t in range(2):  # every GT mask appears as some query's attention mask
        assert any(torch.equal(r, gt0[t].flatten() > 0.5) for r in rows)


def test_location_penalty_steers_matching():
    m = _model(location_penalty=1e4)
    h4, w4 = 8, 16
    masks = torch.zeros(1, 128, 256, dtype=torch.bool)
    masks[0, 64:128, 128:256] = True  # bottom-right quarter
    inside = 6 * w4 + 12  # a source pixel inside the GT mask on E4
    outside = 0
    idx = torch.tensor([outside, inside] + [1] * (m.cfg.num_queries - 2))
    cost = m.location_cost(idx, masks, (h4, w4))
    assert cost[0, 0] == 1e4 and cost[1, 0] == 0
    cls = torch.zeros(1, m.cfg.num_queries, 9)
    mask_logits = torch.zeros(1, m.cfg.num_queries, 16, 32)
    tgt = [{"masks": masks, "labels": torch.tensor([2])}]
    ((qi, ti),), = m.match([(cls, mask_logits)], tgt, idx[None], (h4, w4))
    assert qi.tolist() == [1] and ti.tolist() == [0]
    m.cfg.location_penalty = 0.0
    ((qi0, _),), = m.match([(cls, mask_logits)], tgt, idx[None], (h4, w4))
    assert qi0.tolist() == [0]  # without the penalty the first (outside) query wins the tie


def test_num_points_is_honoured_and_importance_sampled(monkeypatch):
    logits = torch.full((3, 1, 64, 64), 8.0)
    logits[:, :, :, 30:34] = 0.0  # an uncertain band
    pts = fi.importance_points(logits, 12544, 3.0, 0.75)
    assert pts.shape == (3, 12544, 2)
    in_band = ((pts[..., 0] * 64 >= 29.5) & (pts[..., 0] * 64 <= 34.5)).float().mean()
    # the band is 5/64 of the map: uniform points would put ~8% there; importance sampling keeps every
    # uncertain candidate of the 3x oversampled set (3 x 8% = 23%) plus its share of the uniform 25%
    assert 0.22 < in_band < 0.3
    m = _model(num_points=5000)
    asked = []
    real = fi.importance_points
    monkeypatch.setattr(fi, "importance_points", lambda *a: asked.append(a[1]) or real(*a))
    m.train()
    m(_images(), _targets())
    assert asked and set(asked) == {5000}


def test_frozen_bn_with_backbone_weights(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    m = _model(backbone_weights=str(path))
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.backbone.modules())
    before = {k: v.clone() for k, v in m.backbone.state_dict().items() if "running" in k}
    m.train()
    m(_images(), _targets())["loss"].backward()
    after = m.backbone.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in _model().backbone.modules())  # trains without weights


def test_revert_restores_each_old_deviation_for_the_ablation():
    """``revert`` (ablation only) brings back exactly the named pre-issue-30 behaviour: nearest proposal
    cells and location cost (a 2x2 GT at (1, 1) has no cell), 1,024 points, the old PPM-FPN, the guided
    pass on each layer's input; an unknown name fails in one line naming the key and the valid ones."""
    import pytest

    from instsynth.errors import ConfigError

    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[0, 1:3, 1:3] = True
    tgt = [{"masks": m, "labels": torch.tensor([0])}]
    logits = torch.zeros(1, 9, 4, 4)
    logits[0, 0, 1, 1] = 5.0  # class 0 most likely at cell 5
    assert _model().match_pixels(logits, tgt)[0][0].tolist() == [0]  # the authors' rule: the GT's cell 0
    old = _model(revert=["proposal"])
    assert old.match_pixels(logits, tgt)[0][0].tolist() == [5]  # nearest: no cell holds the GT
    idx = torch.arange(16).repeat(2)[:20]
    near = torch.zeros(1, 64, 64, dtype=torch.bool)
    near[0, :4, 18:24] = True  # covers cell 1's location (x = 1/3 of the width) but not pixel (0, 16)
    assert _model().location_cost(idx, near, (4, 4))[1, 0] == 0
    assert _model(revert=["location"]).location_cost(idx, near, (4, 4))[1, 0] > 0
    assert _model(revert=("points",)).cfg.num_points == fi.OLD_NUM_POINTS and _model().cfg.num_points == 12544
    assert isinstance(_model(revert=["ppm"]).pixel_decoder, fi.OldPPMFPN)
    assert isinstance(_model().pixel_decoder, fi.PPMFPN)
    for revert, inputs_of_layer1 in (((), "output of layer 0"), (("guided",), "input of layer 0")):
        model = _model(dec_layers=2, revert=revert)
        model.train()
        seen = []
        for layer in model.layers:
            orig = layer.forward
            layer.forward = lambda pix, *a, orig=orig, seen=seen: seen.append(pix) or orig(pix, *a)
        model(_images(), _targets())
        # calls: the normal pass (inputs p0, p1), then the guided pass (two layers)
        first_guided = seen[2]
        want = seen[1] if inputs_of_layer1 == "output of layer 0" else seen[0]
        assert torch.equal(first_guided, want), revert
    with pytest.raises(ConfigError, match=r"train.model.params.revert: unknown 'ppx'; valid: proposal"):
        FastInstConfig(revert=["ppx"])
