"""Phase 2 generators behind one small protocol, looked up by name.

A generator is a callable built once per worker (it may hold a model) from its config:

    gen = build_generator(GeneratorConfig(name="recolor"))
    results = gen(batch)   # batch: list of plan-row dicts + "crop" (HxWx3 uint8) + "mask" (HxW bool)
                           #        + "gen_seed"; results: one dict per item:
                           #        {"image": HxWx3 uint8, "stats": {...}} or {"error": reason}

It carries ``name``, ``model_id`` and ``model_revision`` for provenance.  The ``negative_prompt`` of
a row wins over a generator's configured default.  Diffusion generators import torch/diffusers
lazily, so the registry itself is cheap to import.
"""

from __future__ import annotations

import importlib

from instsynth.config import GeneratorConfig
from instsynth.errors import GeneratorError  # noqa: F401 - raised here, importable from here

# name -> "module:Class"; classes take the generator's ``params`` as keywords (``build_generator``)
REGISTRY = {
    "identity": "instsynth.generators.simple:Identity",
    "recolor": "instsynth.generators.simple:Recolor",
    "simulate": "instsynth.generators.simple:Simulate",
    "sdxl-inpaint": "instsynth.generators.diffusion:SDXLInpaint",
    "blended-sdxl": "instsynth.generators.diffusion:BlendedSDXL",
    "gligen": "instsynth.generators.diffusion:GLIGEN",
}


def generator_class(name: str):
    if name not in REGISTRY:
        raise GeneratorError(f"generator.name: unknown generator {name!r}; known: {', '.join(sorted(REGISTRY))}")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def build_generator(cfg: GeneratorConfig):
    """Instantiate the configured generator (loads its model, if any, once)."""
    cls = generator_class(cfg.name)
    try:
        return cls(**cfg.params)
    except TypeError as e:
        raise GeneratorError(f"generator.params for {cfg.name!r}: {e}") from None


def check_generator(cfg: GeneratorConfig) -> None:
    """Cheap, read-only checks the driver runs before writing anything: unknown or out-of-range
    parameters, a missing local model path."""
    cls = generator_class(cfg.name)
    if hasattr(cls, "check_config"):  # model generators: the parameter object, the weights' path
        cls.check_config(cfg.params)
        return
    try:  # CPU generators hold no model: building one is the check
        cls(**cfg.params)
    except (TypeError, ValueError) as e:
        raise GeneratorError(f"generator.params for {cfg.name!r}: {e}") from None


#: ``batch_size: auto`` where there is no GPU memory to size it from
AUTO_BATCH_OFF_GPU = 4


def resolve_batch_size(gen, requested: int | str) -> int:
    """The batch size a built generator runs at: ``requested``, or for ``auto`` what the generator's
    ``auto_batch()`` measures (diffusion generators probe their peak GPU memory), else 4."""
    if requested != "auto":
        return int(requested)
    probe = getattr(gen, "auto_batch", None)
    return int(probe()) if probe is not None else AUTO_BATCH_OFF_GPU
