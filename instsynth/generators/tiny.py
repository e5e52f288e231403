"""Tiny, randomly initialised diffusers pipelines, saved as ``from_pretrained`` directories.

Why: weights cannot be downloaded here (nor in CI), yet the diffusion generators must run their
real code path - ``from_pretrained``, tokenizers, text encoders, UNet, VAE, schedulers - in the tests
and when smoke-testing a cluster without weights.  The architectures are the real ones (SDXL-style
dual text encoders and micro-conditioning, 9-channel inpainting UNet, 4-channel base UNet, GLIGEN
gated attention), just a few channels wide; outputs are noise-like, which is all a test needs.

Facts this relies on (diffusers 0.42, transformers 5): a CLIP tokenizer loads offline from a
``vocab.json`` holding the two special tokens, the 256 byte-level symbols, their ``</w>`` forms and
every merge result, plus a ``merges.txt`` starting ``#version: 0.2``; an SDXL UNet needs
``addition_embed_type="text_time"`` with ``projection_class_embeddings_input_dim = 6 *
addition_time_embed_dim + text_embed_dim`` and ``cross_attention_dim`` = the sum of both encoders'
hidden sizes; a GLIGEN UNet needs ``attention_type="gated"`` and 9 input channels.
"""

from __future__ import annotations

import json
import os

from instsynth.io import storage

HIDDEN = 32
TIME_DIM = 8
MERGES = [("c", "a"), ("ca", "r</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("o", "f</w>")]


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(path: str) -> int:
    """A byte-level BPE CLIP tokenizer (vocab.json + merges.txt); returns the vocab size."""
    os.makedirs(path, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    storage.write_bytes(os.path.join(path, "vocab.json"), json.dumps(vocab).encode())
    storage.write_bytes(os.path.join(path, "merges.txt"),
                        ("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n").encode())
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), model_max_length=77)
    tok.save_pretrained(path)
    return len(vocab)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=HIDDEN, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=vocab_size, max_position_embeddings=77, projection_dim=HIDDEN,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                          hidden_act="gelu")


def _vae(sample_size: int):
    from diffusers import AutoencoderKL

    # four blocks: the real 8x down-scaling, with 16 channels per block
    return AutoencoderKL(block_out_channels=(16, 16, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=4, norm_num_groups=8, sample_size=sample_size, layers_per_block=1)


def _tokenizers():
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        n = write_tokenizer(tmp)
        return CLIPTokenizer.from_pretrained(tmp), n


def make_sdxl(out: str, in_channels: int, resolution: int = 64, seed: int = 0) -> str:
    """A tiny SDXL inpainting (``in_channels=9``) or base (``in_channels=4``) pipeline directory."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok, n = _tokenizers()
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * TIME_DIM + HIDDEN, cross_attention_dim=2 * HIDDEN)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLInpaintPipeline(
        vae=_vae(resolution), text_encoder=CLIPTextModel(_text_config(n)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(n)), tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=sched, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out)
    return out


def make_gligen(out: str, resolution: int = 64, seed: int = 0) -> str:
    """A tiny GLIGEN text-box inpainting pipeline directory (SD 1.x layout, gated attention)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionGLIGENPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok, n = _tokenizers()
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), cross_attention_dim=HIDDEN, attention_type="gated")
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionGLIGENPipeline(vae=_vae(resolution), text_encoder=CLIPTextModel(_text_config(n)),
                                         tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def make_all(out: str, resolution: int = 64) -> dict[str, str]:
    """Write all three tiny pipelines under ``out``; returns {generator name: model dir}."""
    os.makedirs(out, exist_ok=True)
    return {
        "sdxl-inpaint": make_sdxl(os.path.join(out, "tiny-sdxl-inpaint"), 9, resolution),
        "blended-sdxl": make_sdxl(os.path.join(out, "tiny-sdxl-base"), 4, resolution, seed=1),
        "gligen": make_gligen(os.path.join(out, "tiny-gligen"), resolution),
    }
