"""CPU generators: ``identity`` (plumbing) and ``recolor`` (an honest stand-in that follows the prompt)."""

from __future__ import annotations

import numpy as np

from instsynth.io import storage


class Identity:
    """Returns the crop unchanged: exercises every stage and the commit path without a model."""

    name = "identity"
    model_id = ""
    model_revision = ""

    def __call__(self, batch: list[dict]) -> list[dict]:
        return [{"image": item["crop"].copy(), "stats": {}} for item in batch]


# sRGB of the colour words the prompts use (CSS-like values)
COLOURS = {
    "red": (200, 30, 30), "blue": (30, 70, 200), "green": (40, 150, 60), "yellow": (235, 205, 40),
    "white": (240, 240, 240), "black": (25, 25, 25), "silver": (190, 190, 195), "grey": (128, 128, 128),
    "gray": (128, 128, 128), "orange": (240, 130, 30), "purple": (120, 50, 160), "brown": (120, 75, 40),
    "pink": (235, 140, 170),
}


def _lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    import cv2

    return np.clip(np.rint(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255), 0, 255).astype(np.uint8)


def prompt_colour(prompt: str) -> str | None:
    words = [w.strip(".,").lower() for w in prompt.split()]
    for w in words:
        if w in COLOURS:
            return w
    return None


class Recolor:
    """An honest CPU stand-in for a diffusion generator that follows the prompt's colour.

    Inside the mask, CIELAB lightness keeps its own shading/texture (deviations from the mean are
    kept) while its mean moves ``strength`` of the way to the named colour's lightness; chroma
    (a*, b*) moves to the named colour with a damped copy of the original's variation.  Prompts
    without a colour word (persons, riders) get a clothing tone drawn from the item's seed.
    Pixels outside the mask are returned unchanged.
    """

    name = "recolor"
    model_id = "cielab-shift"
    model_revision = ""
    cost_s_per_item = 0.01

    def __init__(self, strength: float = 0.8, chroma_texture: float = 0.3):
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        self.strength = strength
        self.chroma_texture = chroma_texture

    def target(self, item: dict) -> str:
        colour = prompt_colour(item.get("prompt", ""))
        if colour is None:
            names = sorted(COLOURS)
            colour = names[int(np.random.default_rng(int(item["gen_seed"])).integers(len(names)))]
        return colour

    def recolor(self, crop: np.ndarray, mask: np.ndarray, colour: str) -> np.ndarray:
        if not mask.any():
            return crop.copy()
        lab = _lab(crop)
        tgt = _lab(np.array([[COLOURS[colour]]], np.uint8))[0, 0]
        m = mask.astype(bool)
        px = lab[m]
        mean = px.mean(axis=0)
        new = px.copy()
        new[:, 0] = px[:, 0] + self.strength * (tgt[0] - mean[0])
        new[:, 1:] = tgt[1:] + self.chroma_texture * (px[:, 1:] - mean[1:])
        new[:, 0] = np.clip(new[:, 0], 0, 100)
        out = crop.copy()
        lab_new = lab.copy()
        lab_new[m] = new
        out[m] = _rgb(lab_new)[m]
        return out

    def __call__(self, batch: list[dict]) -> list[dict]:
        res = []
        for item in batch:
            colour = self.target(item)
            res.append({"image": self.recolor(item["crop"], item["mask"], colour), "stats": {"colour": colour}})
        return res


class Simulate:
    """A stand-in for a GPU generator with no model: sleeps ``cost_s`` per item (a GPU's measured cost,
    e.g. 1.3 s for SDXL on an H200) and returns the crop.  With ``generator.num_gpus`` it declares the GPU
    it would hold, so the real pipeline (prepare tasks -> generator actor pool -> compose/commit)
    runs unchanged on Ray's declared fake GPUs (``ray.init(num_gpus=16)``): a fleet simulated on one
    machine.  ``trace``: a local folder where each actor appends its busy intervals (pid, start, end,
    items), from which a benchmark derives how busy the simulated GPUs were - never into the rows,
    which stay byte-identical across runs."""

    name = "simulate"
    model_id = "sleep"
    model_revision = ""

    def __init__(self, cost_s: float = 1.3, trace: str | None = None):
        if isinstance(cost_s, bool) or not isinstance(cost_s, (int, float)) or cost_s < 0:
            raise ValueError(f"cost_s must be a number >= 0, got {cost_s!r}")
        self.cost_s, self.trace = float(cost_s), trace
        self.model_id = f"sleep:{self.cost_s:g}s"

    def __call__(self, batch: list[dict]) -> list[dict]:
        import os
        import time

        t0 = time.time()
        time.sleep(self.cost_s * len(batch))
        if self.trace:
            os.makedirs(self.trace, exist_ok=True)
            storage.append_text(os.path.join(self.trace, f"{os.getpid()}.txt"),
                                f"{os.getpid()} {t0:.4f} {time.time():.4f} {len(batch)}\n")
        return [{"image": item["crop"].copy(), "stats": {}} for item in batch]
