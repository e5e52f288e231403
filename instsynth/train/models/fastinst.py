"""FastInst (He et al., "FastInst: A Simple Query-Based Model for Real-Time Instance Segmentation",
CVPR 2023) in plain PyTorch - detectron2 is not installable for our Python/torch/NumPy.

Written from the paper's description; each part cites its section:

* backbone: torchvision ResNet res3-res5 (Sec. 3.1), pretrained weights from a local file;
* pixel decoder: PPM-FPN, 256 channels, pyramid pooling on the res5 lateral, giving E5/E4/E3 (Sec. 3.1);
* instance activation-guided queries: an auxiliary K+1-class head on E4 scores each pixel by its
  best foreground class, local maxima favoured; the top-N pixels' E4 features become queries, plus
  a few auxiliary learnable queries that are attended but not supervised (Sec. 3.2);
* dual-path decoder: pixels cross-attend to queries + FFN, then queries do masked cross-attention
  to pixels (mask from the previous prediction), self-attention and FFN (Sec. 3.3);
* ground-truth mask-guided learning: in training, matched queries re-run each layer with their GT
  mask as the attention mask, and that output is supervised too (Sec. 3.4);
* losses: Hungarian matching with 2*class + 5*BCE + 5*dice on sampled points and a large location
  penalty when a query's source pixel lies outside the GT mask; CE 2 (no-object 0.1), BCE 5,
  dice 5, proposal 20 (Sec. 3.5);
* inference: top-k over query x class, mask = sigmoid > 0.5, score = class prob x mean mask prob
  inside (Sec. 4).  R50-D3 = ResNet-50 with 3 decoder layers (the paper's and IS-Cityscapes' setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


@dataclass
class FastInstConfig:
    num_classes: int = 8
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 1024
    dec_layers: int = 3
    num_queries: int = 100
    num_aux_queries: int = 8
    class_weight: float = 2.0
    bce_weight: float = 5.0
    dice_weight: float = 5.0
    proposal_weight: float = 20.0
    no_object_weight: float = 0.1
    location_penalty: float = 1e4
    num_points: int = 12544
    gt_mask_guided: bool = True
    test_topk: int = 100

    @classmethod
    def tiny(cls, **kw) -> FastInstConfig:
        """A CPU-sized configuration for tests (ResNet-18, 64 channels, 20 queries)."""
        base = dict(backbone="resnet18", hidden_dim=64, num_heads=4, ffn_dim=128, num_queries=20,
                    num_aux_queries=4, num_points=1024, test_topk=20)
        return cls(**{**base, **kw})


# -- backbone and pixel decoder (Sec. 3.1) -------------------------------------------------------

class Backbone(nn.Module):
    """ResNet res3-res5 (strides 8, 16, 32); weights from a local state-dict file if given."""

    def __init__(self, name: str, weights: str | None):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state.get("state_dict", state), strict=False)
            if len(missing) > 2:
                raise ValueError(f"backbone_weights: {weights} does not fit {name} ({len(missing)} missing keys)")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.res3, self.res4, self.res5 = net.layer2, net.layer3, net.layer4
        c = 512 if name in ("resnet18", "resnet34") else 2048
        self.channels = (c // 4, c // 2, c)

    def forward(self, x):
        c3 = self.res3(self.stem(x))
        c4 = self.res4(c3)
        return c3, c4, self.res5(c4)


def _conv(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(32 if cout % 32 == 0 else 8, cout),
                         nn.ReLU(inplace=True))


class PPMFPN(nn.Module):
    """PPM-FPN: laterals to D channels, pyramid pooling on the res5 lateral, top-down fusion."""

    def __init__(self, channels, dim, bins=(1, 2, 3, 6)):
        super().__init__()
        self.lat = nn.ModuleList(_conv(c, dim, 1) for c in channels)
        self.bins = bins
        self.ppm = nn.ModuleList(_conv(dim, dim // 4, 1) for _ in bins)
        self.ppm_fuse = _conv(dim + len(bins) * (dim // 4), dim, 3)
        self.out4, self.out3 = _conv(dim, dim), _conv(dim, dim)

    def forward(self, c3, c4, c5):
        l3, l4, l5 = (lat(c) for lat, c in zip(self.lat, (c3, c4, c5)))
        size = l5.shape[-2:]
        pooled = [F.interpolate(m(F.adaptive_avg_pool2d(l5, b)), size=size, mode="bilinear", align_corners=False)
                  for b, m in zip(self.bins, self.ppm)]
        e5 = self.ppm_fuse(torch.cat([l5, *pooled], 1))
        e4 = self.out4(l4 + F.interpolate(e5, size=l4.shape[-2:], mode="nearest"))
        e3 = self.out3(l3 + F.interpolate(e4, size=l3.shape[-2:], mode="nearest"))
        return e3, e4, e5


def sine_pos(h, w, dim, device):
    """2-D sine positional encoding, (h*w, dim)."""
    d = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(d, device=device) / d))
    y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                          torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    out = [torch.sin(x.flatten()[:, None] * omega), torch.cos(x.flatten()[:, None] * omega),
           torch.sin(y.flatten()[:, None] * omega), torch.cos(y.flatten()[:, None] * omega)]
    return torch.cat(out, 1)


# -- instance activation-guided queries (Sec. 3.2) -----------------------------------------------

def select_queries(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the top-k pixels by best foreground probability, local maxima first.

    ``logits``: (B, K+1, H, W) from the auxiliary head (last channel = no object).  A pixel that is
    the maximum of its 3x3 neighbourhood keeps its score; others are ranked after all maxima.
    """
    prob = logits.softmax(1)[:, :-1].amax(1)  # (B, H, W)
    peak = prob == F.max_pool2d(prob[:, None], 3, 1, 1)[:, 0]
    score = torch.where(peak, prob, prob - 2.0).flatten(1)
    return score.topk(min(k, score.shape[1]), dim=1).indices


# -- dual-path decoder (Sec. 3.3) ----------------------------------------------------------------

class DualPathLayer(nn.Module):
    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.pix_cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.pix_norm1, self.pix_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.pix_ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.q_cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.q_self = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.q_norm1, self.q_norm2, self.q_norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.heads = heads

    def forward(self, pix, pix_pos, q, q_pos, attn_mask):
        """``attn_mask``: (B, Q, HW) bool, True = may attend (rows with no True attend everywhere)."""
        # pixel path: pixels gather from queries
        pix = self.pix_norm1(pix + self.pix_cross(pix + pix_pos, q + q_pos, q, need_weights=False)[0])
        pix = self.pix_norm2(pix + self.pix_ffn(pix))
        # query path: masked cross-attention to pixels, self-attention, FFN
        allowed = attn_mask | ~attn_mask.any(-1, keepdim=True)
        blocked = (~allowed).repeat_interleave(self.heads, 0)
        q = self.q_norm1(q + self.q_cross(q + q_pos, pix + pix_pos, pix, attn_mask=blocked, need_weights=False)[0])
        q = self.q_norm2(q + self.q_self(q + q_pos, q + q_pos, q, need_weights=False)[0])
        q = self.q_norm3(q + self.q_ffn(q))
        return pix, q


class FastInst(nn.Module):
    """FastInst R50-D3 (configurable).  ``forward(images, targets)`` -> loss dict or predictions."""

    def __init__(self, cfg: FastInstConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.backbone = Backbone(cfg.backbone, cfg.backbone_weights)
        self.pixel_decoder = PPMFPN(self.backbone.channels, d)
        self.aux_head = nn.Conv2d(d, cfg.num_classes + 1, 1)  # instance activation head on E4
        self.aux_queries = nn.Embedding(cfg.num_aux_queries, d)
        self.aux_pos = nn.Embedding(cfg.num_aux_queries, d)
        self.query_proj = nn.Linear(d, d)
        self.layers = nn.ModuleList(DualPathLayer(d, cfg.num_heads, cfg.ffn_dim) for _ in range(cfg.dec_layers))
        self.class_head = nn.Linear(d, cfg.num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.ReLU(inplace=True),
                                        nn.Linear(d, d))
        self.mask_features = nn.Conv2d(d, d, 1)
        self.query_norm = nn.LayerNorm(d)

    # -- pieces --------------------------------------------------------------------------------
    def features(self, images: torch.Tensor):
        x = (images.float() - MEAN.to(images.device)) / STD.to(images.device)
        e3, e4, _ = self.pixel_decoder(*self.backbone(x))
        return e3, e4

    def initial_queries(self, e4: torch.Tensor):
        """(queries, their positions, source pixel indices on E4, aux logits)."""
        b, d, h, w = e4.shape
        aux_logits = self.aux_head(e4)
        idx = select_queries(aux_logits.detach(), self.cfg.num_queries)  # (B, N)
        flat = e4.flatten(2).transpose(1, 2)  # (B, HW, D)
        q = self.query_proj(torch.gather(flat, 1, idx[..., None].expand(-1, -1, d)))
        pos = sine_pos(h, w, d, e4.device)[idx]  # (B, N, D)
        q = torch.cat([q, self.aux_queries.weight[None].expand(b, -1, -1)], 1)
        pos = torch.cat([pos, self.aux_pos.weight[None].expand(b, -1, -1)], 1)
        return q, pos, idx, aux_logits

    def predict(self, q, mask_feats):
        """Class logits and mask logits for the supervised (IA) queries."""
        qn = self.query_norm(q[:, : self.cfg.num_queries])
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_embed(qn), mask_feats)
        return self.class_head(qn), masks

    def attn_mask(self, mask_logits, size):
        m = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False).sigmoid() > 0.5
        m = m.flatten(2)
        b, _, n = m.shape
        aux = torch.ones(b, self.cfg.num_aux_queries, n, dtype=torch.bool, device=m.device)
        return torch.cat([m, aux], 1)

    def decode(self, images, targets=None):
        e3, e4 = self.features(images)
        b, d, h3, w3 = e3.shape
        mask_feats = self.mask_features(e3)
        pix = e3.flatten(2).transpose(1, 2)
        pix_pos = sine_pos(h3, w3, d, e3.device)[None]
        q, q_pos, idx, aux_logits = self.initial_queries(e4)
        preds = [self.predict(q, mask_feats)]
        guided = []
        for layer in self.layers:
            cls_l, mask_l = preds[-1]
            am = self.attn_mask(mask_l, (h3, w3))
            if targets is not None and self.cfg.gt_mask_guided:
                # Sec. 3.4: matched queries re-run this layer attending through their GT masks
                match = self.match(cls_l, mask_l, targets, idx, e4.shape[-2:])
                gam = am.clone()
                for bi, (qi, ti) in enumerate(match):
                    if len(qi):
                        gt = F.interpolate(targets[bi]["masks"][ti][:, None].float(), size=(h3, w3),
                                           mode="nearest")[:, 0] > 0.5
                        gam[bi, qi] = gt.flatten(1)
                _, qg = layer(pix, pix_pos, q, q_pos, gam)
                guided.append((self.predict(qg, mask_feats), match))
            pix, q = layer(pix, pix_pos, q, q_pos, am)
            preds.append(self.predict(q, mask_feats))
        return preds, guided, idx, aux_logits, e4.shape[-2:]

    # -- matching and losses (Sec. 3.5) --------------------------------------------------------
    @torch.no_grad()
    def match(self, cls_logits, mask_logits, targets, idx, e4_size):
        """Hungarian matching per image: 2*class + 5*BCE + 5*dice on sampled points + location penalty."""
        out = []
        h4, w4 = e4_size
        for b, t in enumerate(targets):
            labels, masks = t["labels"], t["masks"]
            if len(labels) == 0:
                out.append((torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)))
                continue
            prob = cls_logits[b].softmax(-1)[:, labels]  # (Q, T)
            pts = torch.rand(1, min(self.cfg.num_points, 4096), 2, device=mask_logits.device)
            pm = _sample(mask_logits[b][:, None], pts).squeeze(1)  # (Q, P)
            tm = _sample(masks[:, None].float(), pts).squeeze(1)  # (T, P)
            cost = (self.cfg.class_weight * -prob + self.cfg.bce_weight * _bce_cost(pm, tm)
                    + self.cfg.dice_weight * _dice_cost(pm, tm))
            cost = cost + self.location_cost(idx[b], masks, (h4, w4))
            qi, ti = linear_sum_assignment(cost.float().cpu().numpy())
            out.append((torch.as_tensor(qi, dtype=torch.long), torch.as_tensor(ti, dtype=torch.long)))
        return out

    def location_cost(self, idx, masks, e4_size):
        """Large penalty (Q, T) where a query's source pixel on E4 lies outside the GT mask."""
        h4, w4 = e4_size
        small = F.interpolate(masks[:, None].float(), size=(h4, w4), mode="nearest")[:, 0].flatten(1) > 0.5
        inside = small[:, idx].T  # (Q, T)
        return (~inside).float() * self.cfg.location_penalty

    def set_losses(self, cls_logits, mask_logits, targets, match):
        k = self.cfg.num_classes
        weight = torch.ones(k + 1, device=cls_logits.device)
        weight[-1] = self.cfg.no_object_weight
        tgt = torch.full(cls_logits.shape[:2], k, dtype=torch.long, device=cls_logits.device)
        src_m, tgt_m = [], []
        for b, (qi, ti) in enumerate(match):
            tgt[b, qi] = targets[b]["labels"][ti]
            src_m.append(mask_logits[b, qi])
            tgt_m.append(targets[b]["masks"][ti].float())
        loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), tgt, weight)
        src_m, tgt_m = torch.cat(src_m), torch.cat(tgt_m)
        if len(src_m) == 0:
            zero = mask_logits.sum() * 0
            return {"ce": loss_ce, "bce": zero, "dice": zero}
        pts = torch.rand(len(src_m), min(self.cfg.num_points, 4096), 2, device=src_m.device)
        pm = _sample(src_m[:, None], pts).squeeze(1)
        tm = _sample(tgt_m[:, None], pts).squeeze(1)
        bce = F.binary_cross_entropy_with_logits(pm, tm)
        p = pm.sigmoid()
        dice = (1 - (2 * (p * tm).sum(1) + 1) / (p.sum(1) + tm.sum(1) + 1)).mean()
        return {"ce": loss_ce, "bce": bce, "dice": dice}

    def proposal_loss(self, aux_logits, idx, targets, match):
        """CE of the auxiliary head at the selected pixels: matched -> GT class, others -> no object."""
        k = self.cfg.num_classes
        logits = aux_logits.flatten(2).transpose(1, 2)  # (B, HW, K+1)
        sel = torch.gather(logits, 1, idx[..., None].expand(-1, -1, k + 1))
        tgt = torch.full(idx.shape, k, dtype=torch.long, device=idx.device)
        for b, (qi, ti) in enumerate(match):
            tgt[b, qi] = targets[b]["labels"][ti]
        weight = torch.ones(k + 1, device=idx.device)
        weight[-1] = self.cfg.no_object_weight
        return F.cross_entropy(sel.transpose(1, 2), tgt, weight)

    def losses(self, images, targets):
        preds, guided, idx, aux_logits, e4_size = self.decode(images, targets)
        c = self.cfg
        total, out = 0.0, {}
        for i, (cls_l, mask_l) in enumerate(preds):
            match = self.match(cls_l, mask_l, targets, idx, e4_size)
            ls = self.set_losses(cls_l, mask_l, targets, match)
            if i == 0:
                out["proposal"] = self.proposal_loss(aux_logits, idx, targets, match)
                total = total + c.proposal_weight * out["proposal"]
            total = total + c.class_weight * ls["ce"] + c.bce_weight * ls["bce"] + c.dice_weight * ls["dice"]
            if i == len(preds) - 1:
                out.update(ls)
        for (cls_g, mask_g), match in guided:
            ls = self.set_losses(cls_g, mask_g, targets, match)
            total = total + c.class_weight * ls["ce"] + c.bce_weight * ls["bce"] + c.dice_weight * ls["dice"]
        out["loss"] = total
        return out

    # -- public ---------------------------------------------------------------------------------
    def forward(self, images, targets=None):
        if self.training and targets is not None:
            return self.losses(images, targets)
        return self.inference(images)

    @torch.no_grad()
    def inference(self, images):
        preds, _, _, _, _ = self.decode(images)
        cls_l, mask_l = preds[-1]
        h, w = images.shape[-2:]
        results = []
        k = self.cfg.num_classes
        for b in range(images.shape[0]):
            scores = cls_l[b].softmax(-1)[:, :-1]  # (Q, K)
            top = scores.flatten().topk(min(self.cfg.test_topk, scores.numel()))
            qi, labels = top.indices // k, top.indices % k
            m = F.interpolate(mask_l[b, qi][None], size=(h, w), mode="bilinear", align_corners=False)[0].sigmoid()
            binary = m > 0.5
            mscore = (m * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
            results.append({"masks": binary.cpu(), "labels": labels.cpu(), "scores": (top.values * mscore).cpu()})
        return results


def _sample(x, pts):
    """Bilinear samples of maps ``x`` (N, 1, H, W) at points ``pts`` (1 or N, P, 2) in [0, 1]."""
    grid = pts[:, None] * 2 - 1
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, align_corners=False)[:, :, 0]


def _bce_cost(pm, tm):
    n = pm.shape[1]
    pos = F.binary_cross_entropy_with_logits(pm, torch.ones_like(pm), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pm, torch.zeros_like(pm), reduction="none")
    return (pos @ tm.T + neg @ (1 - tm).T) / n


def _dice_cost(pm, tm):
    p = pm.sigmoid()
    num = 2 * p @ tm.T
    den = p.sum(-1)[:, None] + tm.sum(-1)[None]
    return 1 - (num + 1) / (den + 1)


def build_fastinst(**kw) -> FastInst:
    tiny = kw.pop("tiny", False)
    cfg = FastInstConfig.tiny(**kw) if tiny else FastInstConfig(**kw)
    return FastInst(cfg)


