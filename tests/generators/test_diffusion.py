"""The three diffusion generators on tiny random pipelines (CPU): real diffusers code paths."""

import os

import numpy as np
import pytest
import torch

from instsynth.cli import main
from instsynth.config import GeneratorConfig, load_config
from instsynth.datasets import decode_image
from instsynth.generators import GeneratorError, build_generator
from instsynth.generators.tiny import make_all
from instsynth.io import storage
from instsynth.output.readers import iter_rows
from instsynth.synth.driver import run_synth
from instsynth.synth.stages import Unit, generate
from tests.conftest import REPO_ROOT, load_script

ROOT = REPO_ROOT
TINY = {"sdxl-inpaint": "tiny-sdxl-inpaint", "blended-sdxl": "tiny-sdxl-base", "gligen": "tiny-gligen"}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return make_all(str(tmp_path_factory.mktemp("tiny-models")), resolution=64)


def _gen(tiny_models, name, **params):
    return build_generator(GeneratorConfig(name=name, params={"model": tiny_models[name], "steps": 2,
                                                              "resolution": 64, **params}))


def _items(n, size=96, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        crop = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        mask[20 + i:70, 25:60 + i] = True
        out.append({"work_id": f"img_{i}_v0", "image_id": "img", "prompt": "A photo of a red car",
                    "negative_prompt": "", "crop": crop, "mask": mask, "gen_seed": 1000 + i,
                    "crop_box": [0, 0, size, size], "bbox": [25, 20 + i, 60 + i, 70]})
    return out


@pytest.mark.parametrize("name", ["sdxl-inpaint", "blended-sdxl", "gligen"])
def test_synth_end_to_end_on_tiny_models(name, tiny_models, ray_local, sample_root, tmp_path):
    out = str(tmp_path / name)
    cfg = load_config(os.path.join(ROOT, "configs", "generators", f"{name}.tiny.yaml"),
                      [f"generator.params.model={tiny_models[name]}", "run.progress=false", "plan.min_pixels=64",
                       "run.limit=6"])
    s = run_synth(sample_root, out, cfg, log=lambda *a: None)
    assert s["committed_rows"] == 6 and s["failed_items"] == 0
    rows = list(iter_rows(out))
    assert {r["generator"] for r in rows} == {name} and {r["model_id"] for r in rows} == {tiny_models[name]}
    for r in rows:
        img = decode_image(r["image"], "x")
        assert img.shape[:2] == (r["height"], r["width"])


def test_tiny_diffusion_on_coco_input(tiny_models, ray_local, coco_root, tmp_path):
    """A COCO instances JSON through the real diffusion path (Ray executor): category ids above 65 and
    64-bit annotation ids survive; the prompt of a class without a template comes from the default."""
    out = str(tmp_path / "coco")
    cfg = load_config(os.path.join(ROOT, "configs", "generators", "sdxl-inpaint.tiny.yaml"),
                      [f"generator.params.model={tiny_models['sdxl-inpaint']}", "run.progress=false",
                       "plan.min_pixels=64", "plan.classes=[rider, trailer, caravan]", "plan.top_k=8"])
    s = run_synth(os.path.join(coco_root, "annotations", "instances_train.json"), out, cfg, log=lambda *a: None)
    rows = list(iter_rows(out))
    assert s["committed_rows"] == len(rows) > 0 and s["failed_items"] == 0
    assert {r["class_id"] for r in rows} <= {91, 120, 121} and all(r["class_id"] > 65 for r in rows)
    assert all(r["instance_id"] > 2**32 and r["dataset"] == "coco" for r in rows)
    assert {r["prompt"].split()[-1] for r in rows if r["class_name"] == "trailer"} <= {"trailer"}


@pytest.mark.parametrize("name", ["sdxl-inpaint", "blended-sdxl", "gligen"])
def test_determinism_and_batch_invariance(name, tiny_models):
    gen = _gen(tiny_models, name)
    items = _items(4)
    a, b = gen(items), gen(items)
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"])  # bitwise, same seed, same batch size
    if name != "gligen":  # GLIGEN runs at batch size 1 by construction
        for i in range(4):
            single = gen([items[i]])[0]["image"].astype(int)
            assert np.abs(single - a[i]["image"].astype(int)).max() <= 2
    other = gen([{**items[0], "gen_seed": 7}])[0]["image"]
    assert not np.array_equal(other, a[0]["image"])


def test_blended_final_latents_outside_mask_are_source(tiny_models):
    gen = _gen(tiny_models, "blended-sdxl", extra={"dilate": 1, "blend_start": 0.0})
    items = _items(2)
    images, masks = zip(*(gen.to_working(it) for it in items))
    lat, src, lmask = gen.run(items, list(images), list(masks), output_type="latent")
    outside = (lmask == 0).expand_as(lat)
    assert outside.any() and (lmask == 1).any()
    assert torch.equal(lat[outside], src[outside])
    assert not torch.equal(lat[~outside], src[~outside])  # inside, it generated


def test_blended_latent_mask_dilation(tiny_models):
    gen = _gen(tiny_models, "blended-sdxl", extra={"dilate": 2})
    m = np.zeros((64, 64), np.uint8)
    m[32, 32] = 1  # one pixel -> its latent cell (4, 4) dilated by 2 cells
    lm, px = gen.latent_masks([m])
    assert lm.shape == (1, 1, 8, 8) and lm.sum() == 25 and lm[0, 0, 2:7, 2:7].all()
    assert px[0].shape == (64, 64) and px[0][32, 32] == 1


def test_nan_and_black_outputs_are_recorded(tiny_models, monkeypatch):
    gen = _gen(tiny_models, "sdxl-inpaint")
    items = _items(3)
    fake = [np.full((64, 64, 3), np.nan, np.float32), np.zeros((64, 64, 3), np.float32),
            np.full((64, 64, 3), 0.5, np.float32)]
    monkeypatch.setattr(gen, "run", lambda batch, images, masks: fake[: len(batch)])
    unit = generate(Unit("u", [], items=[{"row": {**it, "crop_box": it["crop_box"]}, "crop": it["crop"],
                                          "mask": it["mask"], "gen_seed": it["gen_seed"]} for it in items]), gen, 3)
    reasons = [f["reason"] for f in unit.failures]
    assert len(unit.items) == 1 and len(reasons) == 2
    assert "NaN" in reasons[0] and "black" in reasons[1]


def test_simulated_oom_splits_then_records(tiny_models, monkeypatch):
    gen = _gen(tiny_models, "sdxl-inpaint")
    real = gen.run
    calls = []

    def oom_above_one(batch, images, masks):
        calls.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch, images, masks)

    monkeypatch.setattr(gen, "run", oom_above_one)
    res = gen(_items(4))
    assert all("image" in r for r in res) and calls[0] == 4 and 1 in calls

    def always_oom(batch, images, masks):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gen, "run", always_oom)
    res = gen(_items(2))
    assert [r.get("error") for r in res] == ["GPU out of memory at batch size 1 (64px)"] * 2


def test_missing_model_fails_fast_naming_the_path(sample_root, tmp_path, capsys):
    with pytest.raises(GeneratorError, match="/nope/sdxl does not exist"):
        build_generator(GeneratorConfig(name="sdxl-inpaint", params={"model": "/nope/sdxl"}))
    out = str(tmp_path / "out")
    code = main(["synth", sample_root, "--out", out, "--generator", "sdxl-inpaint",
                 "--set", "generator.params.model=/nope/sdxl"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "/nope/sdxl does not exist" in err
    assert not storage.exists(storage.join(out, "data"))


def test_wrong_unet_and_bad_params(tiny_models):
    with pytest.raises(GeneratorError, match="4-channel base model"):
        build_generator(GeneratorConfig(name="blended-sdxl", params={"model": tiny_models["sdxl-inpaint"]}))
    with pytest.raises(GeneratorError, match="unknown \\['stepz'\\]"):
        _gen(tiny_models, "sdxl-inpaint", stepz=3)
    with pytest.raises(GeneratorError, match="strength must lie in"):
        _gen(tiny_models, "sdxl-inpaint", strength=1.5)
    gen = _gen(tiny_models, "sdxl-inpaint")
    with pytest.raises(GeneratorError, match="mask: shape"):
        gen([{**_items(1)[0], "mask": np.zeros((3, 3), bool)}])


def test_gligen_box_in_crop_coordinates():
    from instsynth.generators.diffusion import GLIGEN

    assert GLIGEN.box({"crop_box": [100, 50, 300, 250], "bbox": [150, 100, 250, 200]}) == [0.25, 0.25, 0.75, 0.75]


# -- speed switches: each equal to the plain path within tolerance ---------------------------------

PLAIN = {"fuse_qkv": False, "channels_last": False, "prompt_cache": 0, "compile": False}


def _images(gen, items):
    out = gen(items)
    assert all("image" in r for r in out), out
    return np.stack([r["image"] for r in out]).astype(np.float32)


@pytest.mark.parametrize("name", ["sdxl-inpaint", "blended-sdxl", "gligen"])
def test_speed_switches_keep_the_output(name, tiny_models):
    items = _items(1 if name == "gligen" else 2)
    plain = _images(_gen(tiny_models, name, **PLAIN), items)
    fast = _gen(tiny_models, name, fuse_qkv=True, channels_last=True, prompt_cache=8)
    assert fast.fused and fast.pipe.unet.attn_processors  # the switches were applied
    got = _images(fast, items)
    # fp32 on CPU: fused GEMMs and another memory layout reorder sums; outputs agree to rounding in 8 bits
    assert np.abs(got - plain).max() <= 2.0, np.abs(got - plain).max()


def test_prompt_embeddings_are_encoded_once_per_pair(tiny_models):
    gen = _gen(tiny_models, "sdxl-inpaint", prompt_cache=4)
    items = _items(3)
    items[1]["prompt"] = "A photo of a blue car"
    calls = []
    encode = gen.encode
    gen.encode = lambda p, n: calls.append((p, n)) or encode(p, n)
    gen(items)
    gen(items)
    assert sorted(calls) == [("A photo of a blue car", ""), ("A photo of a red car", "")]
    assert (gen.embeddings.hits, gen.embeddings.misses) == (4, 2)
    for i in range(6):  # bounded: the least recently used pair goes first
        gen.embeddings.get((f"p{i}", ""), lambda p, n: p)
    assert len(gen.embeddings.data) == 4 and ("A photo of a red car", "") not in gen.embeddings.data


def test_switch_values_are_checked(tiny_models):
    with pytest.raises(GeneratorError, match="generator.params.compile"):
        _gen(tiny_models, "sdxl-inpaint", compile="max")
    with pytest.raises(GeneratorError, match="generator.params.prompt_cache"):
        _gen(tiny_models, "sdxl-inpaint", prompt_cache=-1)


@pytest.mark.slow
def test_regional_compile_keeps_the_output(tiny_models, tmp_path):
    items = _items(1)
    plain = _images(_gen(tiny_models, "sdxl-inpaint", **PLAIN), items)
    gen = _gen(tiny_models, "sdxl-inpaint", **{**PLAIN, "compile": "regional",
                                                "compile_cache": str(tmp_path / "inductor")})
    got = _images(gen, items)
    assert np.abs(got - plain).max() <= 2.0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor") and os.listdir(tmp_path / "inductor")


def test_full_size_benchmark_pipelines_build_under_a_non_cpu_device():
    """The GPU benchmark builds under ``torch.device("cuda")``; ``meta`` exercises the same code here,
    so schedulers (host-side tables) cannot land on the device again."""
    bench = load_script("bench_generate")
    for kind in ("sdxl-inpaint", "gligen"):
        pipe = bench.build_full(kind, torch.float32, "meta")
        assert next(pipe.unet.parameters()).device.type == "meta"
        pipe.scheduler.set_timesteps(30)
        assert len(pipe.scheduler.timesteps) == 30
    from instsynth.generators import generator_class

    assert bench.real_steps(generator_class("blended-sdxl"), 50) == 37  # BLD skips the first 25%
    assert bench.real_steps(generator_class("sdxl-inpaint"), 30) == 29  # strength 0.99


def test_batch_size_auto_is_sized_from_memory(tiny_models):
    from instsynth.config import Config, ConfigError, validate
    from instsynth.generators import resolve_batch_size
    from instsynth.generators.diffusion import batch_from_memory

    gib = 1 << 30
    # 1 image peaks 6 GiB above the weights, 2 images 9 GiB: 3 GiB per image + 3 GiB fixed
    assert batch_from_memory(100 * gib, 6 * gib, 9 * gib) == 27      # (85 - 3) // 3
    assert batch_from_memory(100 * gib, 6 * gib, 9 * gib, cap=16) == 16
    assert batch_from_memory(4 * gib, 6 * gib, 9 * gib) == 1          # never below one
    gen = _gen(tiny_models, "sdxl-inpaint")
    assert resolve_batch_size(gen, "auto") == 4 and resolve_batch_size(gen, 3) == 3  # off-GPU: 4
    assert resolve_batch_size(_gen(tiny_models, "gligen"), "auto") == 1              # its max_batch
    cfg = Config()
    cfg.generator.batch_size = "many"
    with pytest.raises(ConfigError, match="generator.batch_size must be >= 1 or 'auto', got 'many'"):
        validate(cfg)


def test_generator_holds_the_actor_lock_only_around_the_pipeline(tiny_models, monkeypatch):
    """Resizing to the working resolution and back runs outside the lock: in a GPU actor the other
    thread's batch keeps the GPU busy meanwhile."""
    import threading

    gen = _gen(tiny_models, "sdxl-inpaint")
    lock = threading.Lock()
    seen = {"to": [], "run": [], "from": []}
    for name, key in (("to_working", "to"), ("run", "run"), ("from_working", "from")):
        real = getattr(gen, name)
        monkeypatch.setattr(gen, name, lambda *a, _r=real, _k=key: seen[_k].append(lock.locked()) or _r(*a))
    unit = Unit("u", [], items=[{"row": it, "crop": it["crop"], "mask": it["mask"], "gen_seed": it["gen_seed"]}
                                for it in _items(2)])
    out = generate(unit, gen, 2, None, None, lock)
    assert len(out.items) == 2 and not lock.locked()
    assert seen["run"] == [True] and seen["to"] == [False, False] and seen["from"] == [False, False]
