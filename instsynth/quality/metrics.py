"""Metric glue: the set metrics come from torchmetrics (FID, KID); the per-sample SSIM map is
torchmetrics' definition computed with OpenCV (checked against it in the tests); only masking and
aggregation are written here.

Per-sample numbers are computed on the generator's *raw* output, before Phase 3's paste-back (after
it, everything outside the mask equals the source by construction): PSNR and SSIM against the source
crop inside and outside the mask separately (how much of the scene a generator disturbed), the
fraction of the mask that changed, the share of changed pixels that fall inside the mask, and
(with a CLIP model) a region CLIP score of the prompt against the instance's box with the background
greyed out.
"""

from __future__ import annotations

import numpy as np

PSNR_CAP = 100.0  # dB, reported for identical pixels (MSE 0)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float | None:
    """PSNR (dB) over the pixels in ``where``; capped at PSNR_CAP for identical pixels; None if empty."""
    if not where.any():
        return None
    mse = float(np.mean((a[where].astype(np.float64) - b[where].astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))


SSIM_MAX_SIDE = 256  # per-sample SSIM maps are computed at most at this size (CPU cost; the score is local)


SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03  # Wang et al. 2004, torchmetrics' defaults


def ssim_map(a: np.ndarray, b: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """Per-pixel SSIM (HxW, mean over channels) with torchmetrics' Gaussian-window definition (11x11,
    sigma 1.5, reflected borders, K1 0.01, K2 0.03, data range 255), computed with OpenCV.

    Why not torchmetrics itself (``tests/quality`` checks both agree within 1e-5): importing it costs
    5-8 s in every fresh worker, which was most of a resumed job's time to its first commit.
    With ``max_side``, both images are area-downscaled first so the longer side is at most that, and
    the map is scaled back (nearest) to the input size.
    """
    import cv2

    h, w = a.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
    x, y = a.astype(np.float64), b.astype(np.float64)
    k = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1

    def blur(z):
        return cv2.GaussianBlur(z, (k, k), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    full = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    m = (full.mean(axis=2) if full.ndim == 3 else full).astype(np.float32)
    return m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)


def per_sample(source: np.ndarray, generated: np.ndarray, mask: np.ndarray, change_threshold: int = 12) -> dict:
    """Numbers for one raw generated crop against its source crop and instance mask."""
    m = mask.astype(bool)
    smap = ssim_map(generated, source, SSIM_MAX_SIDE)
    diff = np.abs(generated.astype(np.int16) - source.astype(np.int16)).max(axis=2) > change_threshold
    changed = int(diff.sum())
    out = {
        "psnr_in": psnr(generated, source, m), "psnr_out": psnr(generated, source, ~m),
        "ssim_in": float(smap[m].mean()) if m.any() else None,
        "ssim_out": float(smap[~m].mean()) if (~m).any() else None,
        "changed_inside": float(diff[m].mean()) if m.any() else 0.0,
        "inside_share": float(diff[m].sum() / changed) if changed else 0.0,
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def region_image(crop: np.ndarray, mask: np.ndarray, bbox_in_crop: tuple[int, int, int, int]) -> np.ndarray:
    """The instance's box with everything outside the instance greyed out (for region CLIP)."""
    x0, y0, x1, y1 = bbox_in_crop
    img = np.where(mask[..., None], crop, 128).astype(np.uint8)
    return img[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else img


class ClipScorer:
    """CLIPScore as Hessel et al. define it: 100 * max(cos(text, image), 0), from a transformers CLIP
    (local path or hub id).  Wrapped here because torchmetrics 1.9's CLIPScore breaks on transformers 5
    (``get_image_features`` returns a ModelOutput there)."""

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(model).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(model)
        self.device = device

    def _features(self, out):
        return out if isinstance(out, self.torch.Tensor) else getattr(out, "pooler_output", out[0])

    @staticmethod
    def _norm(x):
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def image_embeds(self, images: list[np.ndarray]):
        with self.torch.no_grad():
            px = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
            return self._norm(self._features(self.model.get_image_features(pixel_values=px)))

    def text_embeds(self, texts: list[str]):
        with self.torch.no_grad():
            tok = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
            return self._norm(self._features(self.model.get_text_features(**tok)))

    def text_image(self, images: list[np.ndarray], texts: list[str]) -> list[float]:
        sims = (self.image_embeds(images) * self.text_embeds(texts)).sum(-1)
        return [float(100 * max(s, 0.0)) for s in sims.tolist()]

    def image_image(self, a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
        """Cosine similarity of image embeddings x 100 - what the authors' code reports as 'CLIPScore'."""
        sims = (self.image_embeds(a) * self.image_embeds(b)).sum(-1)
        return [float(100 * s) for s in sims.tolist()]


class SetMetrics:
    """Streaming FID + KID (torchmetrics) between real and synthesized crops, resized to ``size``.

    ``feature``: an ``nn.Module`` mapping (N,3,H,W) uint8 images to features (tests pass a tiny one), or
    a path to the standard FID Inception weights (needs torch-fidelity).  Both metrics keep features
    only, never images, so memory stays flat as the set grows.
    """

    def __init__(self, feature, size: int = 299):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        kw = ({"feature": 2048, "feature_extractor_weights_path": feature} if isinstance(feature, str)
              else {"feature": feature})
        self.fid = FrechetInceptionDistance(**kw)
        self.kid = KernelInceptionDistance(subset_size=2, **kw)
        self.size, self.count = size, 0

    def _batch(self, imgs):
        import cv2
        import torch

        arr = np.stack([cv2.resize(i, (self.size, self.size), interpolation=cv2.INTER_AREA) for i in imgs])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def update(self, real: list[np.ndarray], fake: list[np.ndarray]) -> None:
        for s in range(0, max(len(real), len(fake)), 32):
            for imgs, flag in ((real[s:s + 32], True), (fake[s:s + 32], False)):
                if imgs:
                    b = self._batch(imgs)
                    self.fid.update(b, real=flag)
                    self.kid.update(b, real=flag)
        self.count += len(fake)

    def compute(self) -> dict:
        self.kid.subset_size = min(self.count, 1000)
        kid_mean, kid_std = self.kid.compute()
        return {"FID": float(self.fid.compute()), "KID": float(kid_mean), "KID_std": float(kid_std)}


def set_metrics(real: list[np.ndarray], fake: list[np.ndarray], feature, size: int = 299) -> dict:
    """FID and KID between two sets of crops (see SetMetrics)."""
    m = SetMetrics(feature, size)
    m.update(real, fake)
    return m.compute()
