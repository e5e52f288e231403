"""FastInst unit tests: query selection, GT-mask-guided attention, location-aware matching, shapes."""

import torch

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


def test_query_selection_takes_top_scoring_local_maxima():
    logits = torch.full((1, 3, 8, 8), -10.0)
    logits[0, 2] = 0.0  # no-object everywhere...
    for (y, x), v in {(1, 1): 9.0, (5, 6): 8.0, (3, 3): 7.0}.items():  # ...except three peaks
        logits[0, 0, y, x] = v
    logits[0, 1, 1, 2] = 8.9  # neighbour of the strongest peak: not a local maximum
    idx = select_queries(logits, 3)
    assert idx.shape == (1, 3)
    assert [int(i) for i in idx[0]] == [1 * 8 + 1, 5 * 8 + 6, 3 * 8 + 3]
    assert select_queries(logits, 100).shape == (1, 64)  # capped at the number of pixels


def test_output_shapes_for_a_two_image_batch():
    m = _model()
    m.eval()
    out = m(torch.randint(0, 255, (2, 3, 128, 256), dtype=torch.uint8))
    assert len(out) == 2
    assert out[0]["masks"].shape == (20, 128, 256) and out[0]["masks"].dtype == torch.bool
    assert out[0]["scores"].shape == (20,) and int(out[0]["labels"].max()) < 8
    m.train()
    losses = m(torch.randint(0, 255, (2, 3, 128, 256), dtype=torch.uint8), _targets())
    assert {"loss", "ce", "bce", "dice", "proposal"} <= set(losses) and losses["loss"].requires_grad


def test_gt_mask_guided_pass_uses_gt_masks_as_attention_masks():
    m = _model(dec_layers=1)
    m.train()
    seen = []
    layer = m.layers[0]
    orig = layer.forward

    def spy(pix, pix_pos, q, q_pos, attn_mask):
        seen.append(attn_mask.clone())
        return orig(pix, pix_pos, q, q_pos, attn_mask)

    layer.forward = spy
    targets = _targets()
    m(torch.randint(0, 255, (2, 3, 128, 256), dtype=torch.uint8), targets)
    assert len(seen) == 2  # the guided pass, then the normal pass
    guided, normal = seen
    gt0 = torch.nn.functional.interpolate(targets[0]["masks"][:, None].float(), size=(16, 32), mode="nearest")[:, 0]
    rows = [guided[0, q] for q in range(m.cfg.num_queries)]
    for t in range(2):  # every GT mask appears as some query's attention mask in the guided pass
        assert any(torch.equal(r, gt0[t].flatten() > 0.5) for r in rows)
    assert not torch.equal(guided, normal)


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
    # equal class/mask predictions: the penalty alone decides which query is matched
    cls = torch.zeros(1, m.cfg.num_queries, 9)
    mask_logits = torch.zeros(1, m.cfg.num_queries, 16, 32)
    (qi, ti), = m.match(cls, mask_logits, [{"masks": masks, "labels": torch.tensor([2])}], idx[None], (h4, w4))
    assert qi.tolist() == [1] and ti.tolist() == [0]
    m.cfg.location_penalty = 0.0
    (qi0, _), = m.match(cls, mask_logits, [{"masks": masks, "labels": torch.tensor([2])}], idx[None], (h4, w4))
    assert qi0.tolist() == [0]  # without the penalty the first (outside) query wins the tie
