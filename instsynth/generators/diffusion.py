"""The paper's three diffusion generators (section III.B.2), each wrapped once around diffusers.

* ``sdxl-inpaint`` ("DiffInpainting"): any diffusers inpainting checkpoint through
  ``AutoPipelineForInpainting`` (SDXL by default; SD 1.x/2.x inpainting too - the authors' scripts
  ran ``stabilityai/stable-diffusion-2-inpainting``).  It does not preserve pixels outside the mask;
  Phase 3's paste-back does.
* ``blended-sdxl`` ("BlendedDiff"): Blended Latent Diffusion on SDXL base.  diffusers'
  ``StableDiffusionXLInpaintPipeline`` with a 4-channel UNet already replaces, after every step, the
  latents outside the mask by the source latents noised to that step; we add only what it lacks -
  mask dilation at latent resolution, and a blend applied from our own deterministic source latents
  (the VAE posterior mode), so the final latents outside the latent mask *are* the source latents.
  The authors skip the first ``blend_start`` fraction of the schedule (BLD's
  ``blending_start_percentage``, 0.25); here that maps to the pipeline's ``strength = 1 - blend_start``.
* ``gligen``: ``StableDiffusionGLIGENPipeline`` in text-box inpainting mode: phrase = the prompt's
  object, box = the instance box in the crop.  It inpaints the whole box (Phase 3's mask paste-back
  restores the rest) and draws noise from the global RNG, so it runs at batch size 1 with the
  global seed set per sample.

Common: model path or hub id + revision (``from_pretrained``, offline with ``HF_HUB_OFFLINE=1``),
dtype (fp16/bf16 on GPU, fp32 on CPU), scheduler, steps, guidance, strength, negative prompt,
working resolution (crops resized to it and back), per-sample ``torch.Generator``s, SDPA attention,
fused QKV projections and channels-last weights (switches, off: no gain measured), regional compilation of the
UNet's repeated transformer blocks with an on-disk inductor cache (``compile: regional``), an LRU of
prompt embeddings (each (prompt, negative) pair encoded once per actor), VAE slicing/tiling, an
fp16-safe VAE (replacement id or upcasting), no safety checker.  Failures of the generator itself (NaN/black output, GPU OOM after splitting the
batch down to 1) come back as per-item errors, never as exceptions that kill the job.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, fields

import cv2
import numpy as np

from instsynth.generators import AUTO_BATCH_OFF_GPU, GeneratorError
from instsynth.plan.prompts import prompt_object

DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp32": "float32", "float32": "float32"}


@dataclass
class DiffusionParams:
    """Parameters shared by the diffusion generators (``generator.params`` in the config)."""

    model: str = ""
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    scheduler: str | None = None
    steps: int = 30
    guidance: float = 8.0
    strength: float = 0.99
    negative_prompt: str = ""
    resolution: int = 1024
    attention: str = "sdpa"
    compile: bool | str = False
    compile_cache: str | None = None
    fuse_qkv: bool = False
    channels_last: bool = False
    prompt_cache: int = 256
    vae: str | None = None
    upcast_vae: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    local_files_only: bool | None = None
    black_threshold: float = 2.0
    extra: dict = field(default_factory=dict)


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(model))


def check_model(model: str, key: str = "generator.params.model") -> None:
    """Fail fast, naming the path, when a local model directory is missing or not a pipeline."""
    if not model:
        raise GeneratorError(f"{key}: no model given (a local directory or a hub id)")
    if is_local_path(model):
        path = os.path.expanduser(model)
        if not os.path.isdir(path):
            raise GeneratorError(f"{key}: {model} does not exist (make tiny ones with scripts/make_tiny_models.py, "
                                 "or download real weights with `instsynth models prefetch`)")
        if not os.path.exists(os.path.join(path, "model_index.json")):
            raise GeneratorError(f"{key}: {model} is not a diffusers pipeline directory (no model_index.json)")


COMPILE_MODES = {False: None, "none": None, True: "regional", "regional": "regional", "full": "full"}


class PromptCache:
    """A bounded LRU of prompt embeddings keyed by (prompt, negative prompt)."""

    def __init__(self, size: int):
        from collections import OrderedDict

        self.size, self.data, self.hits, self.misses = size, OrderedDict(), 0, 0

    def get(self, key: tuple[str, str], encode):
        if key in self.data:
            self.hits += 1
            self.data.move_to_end(key)
            return self.data[key]
        self.misses += 1
        value = encode(*key)
        self.data[key] = value
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


def batch_from_memory(free: int, peak1: int, peak2: int, headroom: float = 0.85, cap: int = 32) -> int:
    """Largest batch whose peak memory fits ``headroom`` of ``free`` bytes, from the peak extra memory
    of a batch of 1 and of 2 (``peak2 - peak1`` per image, the rest fixed), clamped to [1, cap]."""
    per = max(peak2 - peak1, 1)
    fixed = max(peak1 - per, 0)
    return int(min(max((headroom * free - fixed) // per, 1), cap))


def _oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class DiffusionGenerator:
    """Base wrapper: load once, check inputs, batch, resize to the working resolution and back."""

    name = "diffusion"
    default_model = ""
    defaults: dict = {}
    cost_s_per_item = 3.0
    max_batch: int | None = None
    embedding_names: tuple[str, ...] = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                        "negative_pooled_prompt_embeds")

    def __init__(self, _pipeline=None, **params):
        """Load the pipeline named by ``params`` (or wrap ``_pipeline``, an already built one - the
        benchmark builds full-size architectures with random weights that way)."""
        self._set_params(params, in_memory=_pipeline)
        self.model_lock = contextlib.nullcontext()  # the GPU actor's lock (stages.generate sets it)
        self.model_id = self.p.model
        self.model_revision = self.p.revision or ""
        import torch

        self.torch = torch
        dev = self.p.device
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        if self.p.dtype == "auto":
            self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        else:
            self.dtype = getattr(torch, DTYPES[self.p.dtype])
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        self.local_only = self.p.local_files_only if self.p.local_files_only is not None else offline
        try:
            self.pipe = _pipeline if _pipeline is not None else self.load()
        except (OSError, ValueError) as e:
            raise GeneratorError(f"generator {self.name!r}: cannot load {self.p.model!r} "
                                 f"(revision {self.p.revision or 'default'}): {str(e).splitlines()[0]}") from None
        self.configure()

    def _set_params(self, params: dict, in_memory=None) -> None:
        valid = {f.name for f in fields(DiffusionParams)}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise GeneratorError(f"generator.params for {self.name!r}: unknown {unknown}; valid: {sorted(valid)}")
        merged = {**self.defaults, **params}
        self.p = DiffusionParams(**merged)
        self.p.model = self.p.model or self.default_model
        if in_memory is not None:
            self.p.model = self.p.model if "model" in params else f"(in-memory {type(in_memory).__name__})"
        self.check_params(check_path=in_memory is None)

    @classmethod
    def check_config(cls, params: dict) -> None:
        """Every check of ``params`` that needs no model (the driver runs it before writing anything)."""
        cls.__new__(cls)._set_params(params)

    # -- checks ---------------------------------------------------------------------------------
    def check_params(self, check_path: bool = True) -> None:
        p = self.p
        if check_path:
            check_model(p.model)
        if p.dtype != "auto" and p.dtype not in DTYPES:
            raise GeneratorError(f"generator.params.dtype: {p.dtype!r} is not one of auto, {', '.join(DTYPES)}")
        if p.steps < 1:
            raise GeneratorError(f"generator.params.steps must be >= 1, got {p.steps}")
        if not 0 < p.strength <= 1:
            raise GeneratorError(f"generator.params.strength must lie in (0, 1], got {p.strength}")
        if p.resolution % 8 or p.resolution < 8:
            raise GeneratorError(f"generator.params.resolution must be a positive multiple of 8, got {p.resolution}")
        if p.attention not in ("sdpa", "default"):
            raise GeneratorError(f"generator.params.attention: {p.attention!r} is not sdpa or default")
        if p.compile not in COMPILE_MODES:
            raise GeneratorError(f"generator.params.compile: {p.compile!r} is not one of false, true, regional, full")
        if p.prompt_cache < 0:
            raise GeneratorError(f"generator.params.prompt_cache must be >= 0, got {p.prompt_cache}")

    def check_batch(self, batch: list[dict]) -> None:
        for item in batch:
            crop, mask = item.get("crop"), item.get("mask")
            if crop is None or crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
                raise GeneratorError(f"crop: expected HxWx3 uint8, got {getattr(crop, 'shape', None)} "
                                     f"{getattr(crop, 'dtype', None)} for {item.get('work_id')}")
            if mask is None or mask.shape != crop.shape[:2]:
                raise GeneratorError(f"mask: shape {getattr(mask, 'shape', None)} does not match crop "
                                     f"{crop.shape[:2]} for {item.get('work_id')}")
            if not item.get("prompt"):
                raise GeneratorError(f"prompt: empty for {item.get('work_id')}")

    # -- loading --------------------------------------------------------------------------------
    def pretrained_kwargs(self) -> dict:
        kw = {"dtype": self.dtype, "local_files_only": self.local_only}
        if self.p.revision:
            kw["revision"] = self.p.revision
        if self.p.vae:
            from diffusers import AutoencoderKL

            kw["vae"] = AutoencoderKL.from_pretrained(self.p.vae, dtype=self.dtype,
                                                      local_files_only=self.local_only)
        return kw

    def load(self):
        raise NotImplementedError

    def configure(self) -> None:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        pipe = self.pipe
        if self.p.scheduler:
            import diffusers

            cls = getattr(diffusers, self.p.scheduler, None)
            if cls is None:
                raise GeneratorError(f"generator.params.scheduler: diffusers has no {self.p.scheduler!r}")
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        if hasattr(pipe, "safety_checker"):
            pipe.safety_checker = None  # it blacks out images; IS-Cityscapes is street scenes
        if self.p.attention == "sdpa":
            from diffusers.models.attention_processor import AttnProcessor2_0

            if not getattr(pipe.unet.config, "attention_type", "default").startswith("gated"):
                pipe.unet.set_attn_processor(AttnProcessor2_0())
        if self.p.upcast_vae:
            pipe.vae.config.force_upcast = True
        if self.p.vae_slicing:
            pipe.vae.enable_slicing()
        if self.p.vae_tiling:
            pipe.vae.enable_tiling()
        pipe.to(self.device)
        for m in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if getattr(pipe, m, None) is not None:
                getattr(pipe, m).eval()
        # both off by default: measured on an H200 (bf16, batch 4, 1024^2) neither helped - channels-last
        # cost 11%, fused QKV was within noise (README, "Generation speed")
        self.fused = self.p.fuse_qkv and self.p.attention == "sdpa"
        if self.fused:  # one GEMM for q, k, v (k, v in cross-attention) instead of three
            for m in (pipe.unet, pipe.vae):
                m.fuse_qkv_projections()
        if self.p.channels_last:
            pipe.unet.to(memory_format=self.torch.channels_last)
            pipe.vae.to(memory_format=self.torch.channels_last)
        mode = COMPILE_MODES[self.p.compile]
        if mode:
            if self.p.compile_cache:  # inductor's on-disk caches: a restarted actor skips most compile work
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.expanduser(self.p.compile_cache)
                os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
                os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
            if mode == "regional":  # compile the repeated transformer block once, reuse it everywhere
                pipe.unet.compile_repeated_blocks(fullgraph=True)
            else:
                pipe.unet = self.torch.compile(pipe.unet, fullgraph=False)
        self.embeddings = PromptCache(self.p.prompt_cache)
        pipe.set_progress_bar_config(disable=True)

    def encode(self, prompt: str, negative: str) -> tuple:
        """The pipeline's own prompt encoding of one (prompt, negative) pair, batch dimension 1."""
        return self.pipe.encode_prompt(prompt=prompt, device=self.device, num_images_per_prompt=1,
                                       do_classifier_free_guidance=self.p.guidance > 1, negative_prompt=negative)

    def prompt_kwargs(self, batch: list[dict]) -> dict:
        """Prompt embeddings for a batch, each (prompt, negative) pair encoded once per actor (LRU).

        Prompts repeat (a few hundred distinct pairs per run), so the text encoders run a few hundred
        times instead of once per image.  With ``prompt_cache: 0`` the pipeline encodes as usual."""
        if not self.p.prompt_cache:
            return {"prompt": [it["prompt"] for it in batch], "negative_prompt": [self.negative(it) for it in batch]}
        parts = [self.embeddings.get((it["prompt"], self.negative(it)), self.encode) for it in batch]
        names = self.embedding_names
        return {n: (self.torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None)
                for k, n in enumerate(names)}

    # -- running --------------------------------------------------------------------------------
    def to_working(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        r = self.p.resolution
        crop, mask = item["crop"], item["mask"]
        interp = cv2.INTER_AREA if crop.shape[0] > r else cv2.INTER_CUBIC
        img = cv2.resize(crop, (r, r), interpolation=interp)
        m = cv2.resize(mask.astype(np.uint8), (r, r), interpolation=cv2.INTER_NEAREST)
        return img, m

    def from_working(self, out: np.ndarray, item: dict) -> np.ndarray:
        h, w = item["crop"].shape[:2]
        interp = cv2.INTER_AREA if out.shape[0] > h else cv2.INTER_CUBIC
        return cv2.resize(out, (w, h), interpolation=interp)

    def generators(self, batch: list[dict]):
        gdev = "cpu" if self.device == "mps" else self.device
        return [self.torch.Generator(gdev).manual_seed(int(it["gen_seed"])) for it in batch]

    def auto_batch(self, cap: int = 32) -> int:
        """``batch_size: auto``: time nothing, measure memory.  On CUDA, one-step calls at batch 1 and 2
        give the peak memory per image (activations, VAE decode); the batch is what fits 85% of the
        memory free now (23 GB of 141 at batch 4 measured on an H200: far more fits).  Off-GPU: 4."""
        limit = min(cap, self.max_batch or cap)
        if not self.device.startswith("cuda"):
            return min(AUTO_BATCH_OFF_GPU, limit)
        cuda, steps = self.torch.cuda, self.p.steps
        r = self.p.resolution
        crop = np.full((r, r, 3), 127, np.uint8)
        mask = np.zeros((r, r), bool)
        mask[r // 4: 3 * r // 4, r // 4: 3 * r // 4] = True
        item = {"work_id": "probe", "prompt": "A photo of a car", "negative_prompt": "", "crop": crop, "mask": mask,
                "gen_seed": 0, "crop_box": [0, 0, r, r], "bbox": [r // 4, r // 4, 3 * r // 4, 3 * r // 4]}
        peaks = []
        try:
            self.p.steps = 1
            for n in (1, 2):
                cuda.synchronize()
                cuda.empty_cache()
                base = cuda.memory_allocated()
                cuda.reset_peak_memory_stats()
                self([dict(item) for _ in range(n)])
                cuda.synchronize()
                peaks.append(cuda.max_memory_allocated() - base)
        finally:
            self.p.steps = steps
        free, _ = cuda.mem_get_info()
        return min(batch_from_memory(free, peaks[0], peaks[1], cap=limit), limit)

    def negative(self, item: dict) -> str:
        return item.get("negative_prompt") or self.p.negative_prompt

    def run(self, batch: list[dict], images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """The pipeline call on working-resolution inputs; returns float images in [0, 1], NHWC."""
        raise NotImplementedError

    def _run_split(self, batch, images, masks) -> list:
        """Run; on GPU OOM split the batch in halves down to one item, then record the failure."""
        try:
            with self.torch.inference_mode():
                out = self.run(batch, images, masks)
            return list(out)
        except Exception as e:  # noqa: BLE001 - only OOM is handled here
            if not _oom(e):
                raise
            if self.device.startswith("cuda"):
                self.torch.cuda.empty_cache()
            if len(batch) == 1:
                return [GeneratorError(f"GPU out of memory at batch size 1 ({self.p.resolution}px)")]
            h = len(batch) // 2
            return self._run_split(batch[:h], images[:h], masks[:h]) + self._run_split(batch[h:], images[h:], masks[h:])

    def __call__(self, batch: list[dict]) -> list[dict]:
        self.check_batch(batch)
        work = [self.to_working(it) for it in batch]
        images, masks = [w[0] for w in work], [w[1] for w in work]
        t0 = time.perf_counter()
        size = self.max_batch or len(batch)
        outs: list = []
        with self.model_lock:  # only the model call: to_working above and from_working below overlap it
            for s in range(0, len(batch), size):
                outs += self._run_split(batch[s:s + size], images[s:s + size], masks[s:s + size])
        per = (time.perf_counter() - t0) / max(1, len(batch))
        results = []
        for it, out in zip(batch, outs):
            if isinstance(out, Exception):
                results.append({"error": str(out), "stats": {"seconds": per}})
                continue
            arr = np.asarray(out, dtype=np.float32)
            if not np.isfinite(arr).all():
                results.append({"error": "NaN/inf in generated image (fp16 VAE overflow? try params.upcast_vae "
                                         "or a fp16-fix VAE)", "stats": {"seconds": per}})
                continue
            img = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
            if float(img.max()) <= self.p.black_threshold:
                results.append({"error": "all-black generated image", "stats": {"seconds": per}})
                continue
            results.append({"image": self.from_working(img, it),
                            "stats": {"seconds": round(per, 4), "resolution": self.p.resolution,
                                      "steps": self.p.steps}})
        return results


def denoising_steps(gen) -> int:
    """UNet evaluations per image that the pipeline really runs (img2img strength, BLD's blend start)."""
    strength = min(gen.p.strength, 1.0)
    if getattr(gen, "blend_start", 0):
        strength = min(strength, 1.0 - gen.blend_start)
    return max(1, int(gen.p.steps * strength))


class SDXLInpaint(DiffusionGenerator):
    """DiffInpainting: a 9-channel inpainting UNet (SDXL by default; any diffusers inpainting checkpoint)."""

    name = "sdxl-inpaint"
    default_model = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    defaults = {"steps": 30, "guidance": 8.0, "strength": 0.99, "resolution": 1024}
    cost_s_per_item = 3.0

    def load(self):
        from diffusers import AutoPipelineForInpainting

        return AutoPipelineForInpainting.from_pretrained(self.p.model, **self.pretrained_kwargs())

    def pipe_kwargs(self, batch, images, masks) -> dict:
        r = self.p.resolution
        from PIL import Image

        return dict(**self.prompt_kwargs(batch),
                    image=[Image.fromarray(i) for i in images],
                    mask_image=[Image.fromarray((m > 0).astype(np.uint8) * 255, "L") for m in masks],
                    height=r, width=r, num_inference_steps=self.p.steps, guidance_scale=self.p.guidance,
                    strength=self.p.strength, generator=self.generators(batch))

    def run(self, batch, images, masks):
        return self.pipe(**self.pipe_kwargs(batch, images, masks), output_type="np").images


class BlendedSDXL(SDXLInpaint):
    """BlendedDiff: Blended Latent Diffusion on SDXL base (4-channel UNet)."""

    name = "blended-sdxl"
    default_model = "stabilityai/stable-diffusion-xl-base-1.0"
    defaults = {"steps": 50, "guidance": 5.0, "strength": 1.0, "resolution": 1024,
                "extra": {"dilate": 1, "blend_start": 0.25}}
    cost_s_per_item = 5.0

    def load(self):
        from diffusers import StableDiffusionXLInpaintPipeline

        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(self.p.model, **self.pretrained_kwargs())
        if pipe.unet.config.in_channels != 4:
            raise GeneratorError(f"generator 'blended-sdxl': {self.p.model} has a {pipe.unet.config.in_channels}-"
                                 "channel UNet; blending needs a 4-channel base model (use sdxl-inpaint for 9)")
        return pipe

    def check_params(self, check_path: bool = True) -> None:
        super().check_params(check_path)
        extra = {"dilate": 1, "blend_start": 0.25, **self.p.extra}
        unknown = sorted(set(extra) - {"dilate", "blend_start"})
        if unknown:
            raise GeneratorError(f"generator.params.extra for 'blended-sdxl': unknown {unknown}; valid: blend_start, dilate")
        if not 0 <= extra["blend_start"] < 1:
            raise GeneratorError(f"generator.params.extra.blend_start must lie in [0, 1), got {extra['blend_start']}")
        if int(self.p.steps * (1 - extra["blend_start"])) < 1:
            raise GeneratorError(f"generator.params.steps: {self.p.steps} steps with blend_start "
                                 f"{extra['blend_start']} leave no denoising step")
        self.dilate = int(extra["dilate"])
        self.blend_start = float(extra["blend_start"])

    def latent_masks(self, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(binary latent masks N x 1 x h x w, the matching pixel masks): any masked pixel marks its
        latent cell, then ``dilate`` cells of dilation; the pixel mask is its nearest upsampling."""
        f = self.pipe.vae_scale_factor
        out, px = [], []
        for m in masks:
            h, w = m.shape[0] // f, m.shape[1] // f
            lm = m[: h * f, : w * f].reshape(h, f, w, f).max(axis=(1, 3)).astype(np.uint8)
            if self.dilate > 0:
                lm = cv2.dilate(lm, np.ones((2 * self.dilate + 1,) * 2, np.uint8))
            out.append(lm[None])
            px.append(np.kron(lm, np.ones((f, f), np.uint8)))
        return np.stack(out), px

    def source_latents(self, images: list[np.ndarray]):
        t = self.torch
        x = t.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device, self.pipe.vae.dtype) / 127.5 - 1
        vae = self.pipe.vae
        upcast = vae.dtype == t.float16 and vae.config.force_upcast
        if upcast:
            vae.to(t.float32)
            x = x.float()
        lat = vae.encode(x).latent_dist.mode()
        if upcast:
            vae.to(t.float16)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((lat - shift) * vae.config.scaling_factor).to(self.dtype)

    def run(self, batch, images, masks, output_type: str = "np"):
        t = self.torch
        lmask_np, px_masks = self.latent_masks(masks)
        src = self.source_latents(images)
        lmask = t.from_numpy(lmask_np).to(self.device, src.dtype)
        gdev = "cpu" if self.device == "mps" else self.device
        gens = [t.Generator(gdev).manual_seed(int(it["gen_seed"]) ^ 0x5EED) for it in batch]
        noise = t.stack([t.randn(src.shape[1:], generator=g, device=g.device, dtype=src.dtype).to(self.device)
                         for g in gens])

        def blend(pipe, i, step_t, kw):
            lat = kw["latents"]
            ts = pipe.scheduler.timesteps
            proper = src if i >= len(ts) - 1 else pipe.scheduler.add_noise(src, noise, ts[i + 1:i + 2])
            return {"latents": (1 - lmask) * proper.to(lat.dtype) + lmask * lat}

        kw = self.pipe_kwargs(batch, images, [m.astype(bool) for m in px_masks])
        kw["strength"] = min(self.p.strength, 1.0 - self.blend_start) if self.blend_start else self.p.strength
        out = self.pipe(**kw, output_type=output_type, callback_on_step_end=blend,
                        callback_on_step_end_tensor_inputs=["latents"])
        if output_type == "latent":
            return out.images, src, lmask
        return out.images


class GLIGEN(DiffusionGenerator):
    """GLIGEN text-box inpainting: phrase = prompt object, box = instance box in the crop (batch 1)."""

    name = "gligen"
    default_model = "masterful/gligen-1-4-inpainting-text-box"
    defaults = {"steps": 50, "guidance": 7.5, "resolution": 512, "strength": 1.0}
    cost_s_per_item = 2.0
    max_batch = 1
    embedding_names = ("prompt_embeds", "negative_prompt_embeds")

    def load(self):
        import warnings

        from diffusers import StableDiffusionGLIGENPipeline

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = StableDiffusionGLIGENPipeline.from_pretrained(
                self.p.model, safety_checker=None, requires_safety_checker=False, **self.pretrained_kwargs())
        pipe.vae.config.sample_size = self.p.resolution  # the pipeline centre-crops inpaint images to this size
        return pipe

    @staticmethod
    def box(item: dict) -> list[float]:
        sx0, sy0, sx1, _ = (int(v) for v in item["crop_box"])
        side = float(sx1 - sx0)
        x0, y0, x1, y1 = (int(v) for v in item["bbox"])
        return [min(max((x0 - sx0) / side, 0.0), 1.0), min(max((y0 - sy0) / side, 0.0), 1.0),
                min(max((x1 - sx0) / side, 0.0), 1.0), min(max((y1 - sy0) / side, 0.0), 1.0)]

    def run(self, batch, images, masks):
        from PIL import Image

        (item,), (img,) = batch, images
        r = self.p.resolution
        self.torch.manual_seed(int(item["gen_seed"]))  # the pipeline draws noise from the global RNG too
        return self.pipe(**self.prompt_kwargs(batch),
                         gligen_phrases=[prompt_object(item["prompt"])], gligen_boxes=[self.box(item)],
                         gligen_inpaint_image=Image.fromarray(img), height=r, width=r,
                         num_inference_steps=self.p.steps, guidance_scale=self.p.guidance,
                         generator=self.generators(batch), output_type="np").images
