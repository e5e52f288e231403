"""Generator throughput: a naive loop vs our settings, with FLOPs, GPU busy fraction and MFU.

    python scripts/bench_generate.py --generator sdxl-inpaint --scale full --resolution 1024 --steps 30   # GPU
    python scripts/bench_generate.py --generator sdxl-inpaint --scale tiny                              # CPU smoke
    python scripts/bench_generate.py --generator sdxl-inpaint --scale full --e2e --skip-naive          # + the job

Builds the actor's own generator class (instsynth.generators.diffusion) around a pipeline whose
architecture comes from the published configs in configs/arch/ (full) or the tiny test models (tiny),
with random weights - throughput does not depend on the weights.  Measures:

* naive: batch 1, fp32, classic attention, no compile (what a first script does);
* ours:  the configured batch, bf16 (fp32 on CPU), SDPA attention, optional torch.compile.

A few steps are timed at two step counts and the per-step slope is extrapolated to ``--steps``, so
a 50-step 1024^2 run fits in a 10-minute command.  FLOPs per image come from
torch.utils.flop_counter.FlopCounterMode over the UNet (with classifier-free guidance) and the VAE on
the meta device; MFU = achieved FLOP/s / ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import torch

ARCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "arch")


def _json(name):
    with open(os.path.join(ARCH, name)) as f:
        return json.load(f)


def build_full(kind: str, dtype, device):
    """A full-size pipeline (random weights) from the published architecture configs."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionGLIGENPipeline,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from instsynth.generators.tiny import write_tokenizer

    tmp = tempfile.mkdtemp(prefix="tok-")
    write_tokenizer(tmp)
    tok = CLIPTokenizer.from_pretrained(tmp)
    # schedulers hold host-side tables (numpy timesteps): built outside the device context, or their
    # tensors land on the GPU and ``set_timesteps`` fails converting them back
    scheduler = DDIMScheduler() if kind == "gligen" else EulerDiscreteScheduler()
    with torch.device(device):
        if kind == "gligen":
            unet = UNet2DConditionModel.from_config(_json("gligen-sd14-unet.json"))
            vae = AutoencoderKL.from_config(_json("sd14-vae.json"))
            te = CLIPTextModel(CLIPTextConfig(**_json("clip-vit-l-text.json")))
        else:
            unet = UNet2DConditionModel.from_config(_json("sdxl-inpaint-unet.json" if kind == "sdxl-inpaint"
                                                          else "sdxl-base-unet.json"))
            vae = AutoencoderKL.from_config(_json("sdxl-vae.json"))
            te1 = CLIPTextModel(CLIPTextConfig(**_json("clip-vit-l-text.json")))
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_json("openclip-bigg-text.json")))
    if kind == "gligen":
        pipe = StableDiffusionGLIGENPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                                tokenizer_2=tok, unet=unet, scheduler=scheduler,
                                                requires_aesthetics_score=False)
    return pipe.to(dtype=dtype)


def build_tiny(kind: str, dtype):
    from diffusers import AutoPipelineForInpainting, StableDiffusionGLIGENPipeline

    from instsynth.generators import tiny

    d = tempfile.mkdtemp(prefix="tiny-")
    if kind == "gligen":
        return StableDiffusionGLIGENPipeline.from_pretrained(tiny.make_gligen(os.path.join(d, "g")), dtype=dtype)
    path = tiny.make_sdxl(os.path.join(d, "s"), 9 if kind == "sdxl-inpaint" else 4)
    return AutoPipelineForInpainting.from_pretrained(path, dtype=dtype)


def flops_per_image(kind: str, scale: str, resolution: int, steps: int, strength: float) -> dict:
    """UNet FLOPs per step (with CFG: batch 2) and VAE encode/decode FLOPs, counted on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    if scale == "full":
        ucfg = _json("gligen-sd14-unet.json" if kind == "gligen" else
                     "sdxl-inpaint-unet.json" if kind == "sdxl-inpaint" else "sdxl-base-unet.json")
        vcfg = _json("sd14-vae.json" if kind == "gligen" else "sdxl-vae.json")
    else:
        pipe = build_tiny(kind, torch.float32)
        ucfg, vcfg = dict(pipe.unet.config), dict(pipe.vae.config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(ucfg)
        vae = AutoencoderKL.from_config(vcfg)
        f = 2 ** (len(vcfg["block_out_channels"]) - 1)
        h = resolution // f
        x = torch.randn(2, ucfg["in_channels"], h, h)
        ctx = torch.randn(2, 77, ucfg["cross_attention_dim"])
        kw = {}
        if ucfg.get("addition_embed_type") == "text_time":
            kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, ucfg["projection_class_embeddings_input_dim"]
                                                                  - 6 * ucfg["addition_time_embed_dim"]),
                                       "time_ids": torch.randn(2, 6)}
        if ucfg.get("attention_type") == "gated":
            kw["cross_attention_kwargs"] = {"gligen": {"boxes": torch.randn(2, 30, 4),
                                                       "positive_embeddings": torch.randn(2, 30, ucfg["cross_attention_dim"]),
                                                       "masks": torch.randn(2, 30)}}
        with FlopCounterMode(display=False) as fc:
            unet(x, torch.tensor([10]), encoder_hidden_states=ctx, **kw)
        unet_step = fc.get_total_flops()
        img = torch.randn(1, 3, resolution, resolution)
        with FlopCounterMode(display=False) as fc:
            vae.encode(img)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.decode(torch.randn(1, 4, h, h))
        dec = fc.get_total_flops()
    n_steps = max(1, int(steps * strength))
    return {"unet_step": unet_step, "vae_encode": enc, "vae_decode": dec,
            "unet_params": sum(p.numel() for p in unet.parameters()),
            "per_image": n_steps * unet_step + enc + dec}


class GpuBusy:
    """Samples nvidia-smi-style utilisation through torch.cuda.utilization (needs pynvml)."""

    def __init__(self):
        self.samples, self.times, self.stop = [], [], threading.Event()

    def __enter__(self):
        def loop():
            while not self.stop.is_set():
                try:
                    self.samples.append(torch.cuda.utilization())
                    self.times.append(time.time())
                except Exception:  # noqa: BLE001
                    return
                time.sleep(0.05)
        if torch.cuda.is_available():
            threading.Thread(target=loop, daemon=True).start()
        return self

    def __exit__(self, *a):
        self.stop.set()

    @property
    def fraction(self):
        return float(np.mean(self.samples)) / 100 if self.samples else None

    def between(self, t0: float, t1: float):
        v = [s for s, t in zip(self.samples, self.times) if t0 <= t <= t1]
        return float(np.mean(v)) / 100 if v else None


def e2e(gen_name: str, pipe, params: dict, batch: int, items: int, rows_per_unit: int, executor: str,
        bare_img_s: float, log=print) -> dict:
    """The same pipeline saved as a ``from_pretrained`` directory and run through the real job
    (``run_synth``: plan, Ray Data stages or the local loop, commits) on a generated sample.

    Steady state = from the first unit's commit to the last (actor start-up and the first unit's
    pipeline fill excluded): rows/s there, GPU busy there, and the ratio to the bare generator."""
    from instsynth.config import load_config
    from instsynth.datasets.sample import write_sample
    from instsynth.output.layout import marker_path
    from instsynth.output.ledger import committed_units
    from instsynth.synth.driver import run_synth

    work = tempfile.mkdtemp(prefix="bench-e2e-")
    model = os.path.join(work, "model")
    t0 = time.perf_counter()
    pipe.save_pretrained(model)
    log(f"e2e: pipeline saved to {model} in {time.perf_counter() - t0:.0f} s")
    root, out = os.path.join(work, "root"), os.path.join(work, "out")
    write_sample(root, images=max(6, items // 2), size=(1024, 512))
    cuda = torch.cuda.is_available()
    overrides = [f"generator.params.{k}={v}" for k, v in params.items() if v is not None] + [
        f"generator.params.model={model}", f"generator.batch_size={batch}",
        f"generator.num_gpus={1 if cuda else 0}", "generator.num_cpus=1", "run.progress=false",
        "plan.min_pixels=64", f"run.limit={items}", f"run.rows_per_unit={rows_per_unit}", f"run.executor={executor}"]
    cfg = load_config(os.path.join(os.path.dirname(ARCH), "generators", f"{gen_name}.tiny.yaml"), overrides)
    start = time.time()
    with GpuBusy() as busy:
        summary = run_synth(root, out, cfg, log=lambda *a: None)
    wall = time.time() - start
    shutil.rmtree(model, ignore_errors=True)  # several GB at full scale
    stamps = sorted((os.path.getmtime(marker_path(out, u)), m["rows"])
                    for u, m in committed_units(out).items())
    first, last = stamps[0][0], stamps[-1][0]
    steady_rows = sum(r for _, r in stamps[1:])
    steady = steady_rows / (last - first) if len(stamps) > 1 and last > first else None
    res = {"rows": summary["committed_rows"], "failed": summary["failed_items"], "wall_s": wall,
           "rows_per_s": summary["committed_rows"] / wall, "steady_rows_per_s": steady,
           "gpu_busy_run": busy.fraction, "gpu_busy_steady": busy.between(first, last),
           "bare_images_per_s": bare_img_s,
           "ratio_to_bare": steady / bare_img_s if steady and bare_img_s else None, "executor": executor}
    gb = res["gpu_busy_steady"]
    steady_txt = (f"steady {steady:.3f} rows/s = {100 * res['ratio_to_bare']:.0f}% of the bare generator"
                  if steady else "no steady state (one unit committed: raise --e2e-items)")
    log(f"e2e: {res['rows']} rows ({res['failed']} failed) in {wall:.1f} s; {steady_txt}; GPU busy (steady) "
        + ("-" if gb is None else f"{100 * gb:.0f}%"))
    return res


def make_items(batch: int, resolution: int, prompts: int = 2) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(batch):
        crop = rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)
        mask = np.zeros((resolution, resolution), bool)
        mask[resolution // 4: 3 * resolution // 4, resolution // 4: 3 * resolution // 4] = True
        items.append({"work_id": f"b{i}", "prompt": f"A photo of a {['red', 'blue'][i % prompts]} car",
                      "negative_prompt": "", "crop": crop, "mask": mask, "gen_seed": i,
                      "crop_box": [0, 0, resolution, resolution],
                      "bbox": [resolution // 4, resolution // 4, 3 * resolution // 4, 3 * resolution // 4]})
    return items


def measure(gen_cls, pipe, params: dict, batch: int, steps: int, probe: tuple[int, int], resolution: int) -> dict:
    """Images/s extrapolated from timing ``probe`` step counts at ``batch``; ``startup_s`` is the wrapper's
    construction plus the first call (where compilation happens)."""
    from instsynth.generators.diffusion import denoising_steps

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    t_start = time.perf_counter()
    gen = gen_cls(_pipeline=pipe, **params)
    items = make_items(batch, resolution)
    gen.p.steps = probe[0]
    gen(items)  # warm-up (and compile)
    sync()
    startup = time.perf_counter() - t_start
    times, real = [], []
    with GpuBusy() as busy:
        for s in probe:
            gen.p.steps = s
            real.append(denoising_steps(gen))
            sync()
            t0 = time.perf_counter()
            res = gen(items)
            sync()
            times.append(time.perf_counter() - t0)
    errors = [r["error"] for r in res if "error" in r]
    per_step = (times[1] - times[0]) / max(real[1] - real[0], 1)  # per UNet evaluation really run
    fixed = max(times[0] - real[0] * per_step, 0.0)
    gen.p.steps = steps
    n_real = denoising_steps(gen)
    total = fixed + n_real * per_step
    return {"batch": batch, "denoising_steps": n_real, "per_step_s": per_step, "fixed_s": fixed, "batch_s": total,
            "images_per_s": batch / total, "gpu_busy": busy.fraction, "startup_s": startup, "errors": errors[:1],
            "prompt_cache": {"hits": gen.embeddings.hits, "misses": gen.embeddings.misses}}


def real_steps(cls, steps: int) -> int:
    from types import SimpleNamespace

    from instsynth.generators.diffusion import denoising_steps

    d = cls.defaults
    fake = SimpleNamespace(p=SimpleNamespace(steps=steps, strength=d.get("strength", 1.0)),
                           blend_start=d.get("extra", {}).get("blend_start", 0))
    return denoising_steps(fake)


NAIVE = {"dtype": "fp32", "attention": "default", "fuse_qkv": False, "channels_last": False, "prompt_cache": 0}
#: cumulative settings: each row adds one switch to the previous one (fuse_qkv last: it cannot be undone)
LADDER = [("bf16, sdpa", {"attention": "sdpa", "fuse_qkv": False, "channels_last": False, "prompt_cache": 0}),
          ("+ channels_last", {"channels_last": True}),
          ("+ prompt cache", {"prompt_cache": 256}),
          ("+ fused QKV", {"fuse_qkv": True})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="sdxl-inpaint", choices=["sdxl-inpaint", "blended-sdxl", "gligen"])
    ap.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", default="4", help="ours' batch size, or auto (sized from free GPU memory)")
    ap.add_argument("--probe", default="2,4", help="two step counts timed to get the per-step slope")
    ap.add_argument("--compile", action="store_true", help="ours with regional compilation (compile: regional)")
    ap.add_argument("--compile-cache", help="inductor cache dir (warm starts reuse it)")
    ap.add_argument("--ladder", action="store_true", help="measure each switch's gain, one added at a time")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 FLOP/s the GPU sustains")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--flops-only", action="store_true", help="print the FLOP counts (meta device) and stop")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile", help="write a torch profiler table of one ours call into this dir")
    ap.add_argument("--e2e", action="store_true", help="also run ours through the real job (instsynth synth)")
    ap.add_argument("--e2e-items", type=int, default=48, help="work items the --e2e job runs")
    ap.add_argument("--e2e-unit", type=int, default=16, help="run.rows_per_unit of the --e2e job")
    ap.add_argument("--e2e-executor", default="ray", choices=["ray", "local"])
    args = ap.parse_args()
    from instsynth.generators import generator_class

    cls = generator_class(args.generator)
    res = args.resolution or (64 if args.scale == "tiny" else cls.defaults["resolution"])
    steps = args.steps or cls.defaults["steps"]
    n_real = real_steps(cls, steps)
    probe = tuple(int(v) for v in args.probe.split(","))
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    fl = flops_per_image(args.generator, args.scale, res, n_real, 1.0)
    print(f"{args.generator} ({args.scale}), {res}px, {steps} steps ({n_real} denoising steps run), device {dev}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    print(f"UNet {fl['unet_params'] / 1e9:.2f} B params; {fl['unet_step'] / 1e12:.2f} TFLOPs/step with CFG; VAE "
          f"encode {fl['vae_encode'] / 1e12:.2f} + decode {fl['vae_decode'] / 1e12:.2f} TFLOPs; "
          f"{fl['per_image'] / 1e12:.1f} TFLOPs/image -> floor {fl['per_image'] / (args.peak_tflops * 1e12):.3f} s/image "
          f"at {args.peak_tflops:.0f} TFLOP/s", flush=True)
    if args.flops_only:
        return
    common = {"steps": steps, "resolution": res, "device": dev}
    rows = []
    if not args.skip_naive:
        pipe = build_full(args.generator, torch.float32, dev) if args.scale == "full" else build_tiny(args.generator, torch.float32)
        rows.append(("naive (b1, fp32, classic attn)", measure(cls, pipe, {**common, **NAIVE}, 1, steps, probe, res)))
        print(f"{rows[-1][0]}: {rows[-1][1]['images_per_s']:.3f} img/s", flush=True)
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    dtype = torch.bfloat16 if cuda else torch.float32
    pipe = build_full(args.generator, dtype, dev) if args.scale == "full" else build_tiny(args.generator, dtype)
    ours = {**common, "dtype": "bf16" if cuda else "fp32"}
    if args.batch == "auto":  # what generator.batch_size: auto picks in the actor
        t0 = time.perf_counter()
        batch = cls(_pipeline=pipe, **ours).auto_batch()
        print(f"batch_size auto -> {batch} ({time.perf_counter() - t0:.1f} s probe)", flush=True)
    else:
        batch = 1 if cls.max_batch == 1 else int(args.batch)
    if args.ladder:
        settings = {}
        for name, extra in LADDER:
            settings.update(extra)
            rows.append((f"ours b{batch} {name}", measure(cls, pipe, {**ours, **settings}, batch, steps, probe, res)))
            print(f"{rows[-1][0]}: {rows[-1][1]['images_per_s']:.3f} img/s", flush=True)
    else:
        if args.compile:
            ours.update({"compile": "regional", "compile_cache": args.compile_cache})
        label = f"ours (b{batch}, {ours['dtype']}, defaults{', regional compile' if args.compile else ''})"
        rows.append((label, measure(cls, pipe, ours, batch, steps, probe, res)))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            gen = cls(_pipeline=pipe, **{**ours, "steps": probe[0]})
            items = make_items(batch, res)
            gen(items)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                gen(items)
                if cuda:
                    torch.cuda.synchronize()
            os.makedirs(args.profile, exist_ok=True)
            with open(os.path.join(args.profile, f"profile_{args.generator}.txt"), "w") as f:
                f.write(f"{probe[0]} steps, batch {batch}\n")
                f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    e2e_res = None
    if args.e2e:
        e2e_res = e2e(args.generator, pipe, {k: v for k, v in ours.items() if k != "device"}, batch,
                      args.e2e_items, args.e2e_unit, args.e2e_executor, rows[-1][1]["images_per_s"])
    print(f"\n{'setting':<44}{'img/s':>9}{'s/img':>9}{'GPU busy':>10}{'MFU':>8}{'start s':>9}")
    out = {"generator": args.generator, "scale": args.scale, "resolution": res, "steps": steps,
           "denoising_steps": n_real, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "peak_tflops": args.peak_tflops, "tflops_per_image": fl["per_image"] / 1e12, "rows": []}
    for name, r in rows:
        mfu = r["images_per_s"] * fl["per_image"] / (args.peak_tflops * 1e12)
        busy = f"{100 * r['gpu_busy']:.0f}%" if r["gpu_busy"] is not None else "-"
        print(f"{name:<44}{r['images_per_s']:>9.3f}{1 / r['images_per_s']:>9.3f}{busy:>10}"
              f"{100 * mfu:>7.1f}%{r['startup_s']:>9.1f}" + (f"  errors: {r['errors']}" if r["errors"] else ""))
        out["rows"].append({"name": name, "mfu": mfu, **r})
    if not args.skip_naive and len(rows) >= 2:
        print(f"\nbest ours vs naive: {max(r['images_per_s'] for _, r in rows[1:]) / rows[0][1]['images_per_s']:.2f}x images/s")
    out["e2e"] = e2e_res
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
