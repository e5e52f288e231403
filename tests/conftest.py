import os

import numpy as np
import pytest

from instsynth.config import Config, load_config
from instsynth.sample import write_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> str:
    """A small synthetic sample (8 scenes, 512x256) in Cityscapes layout, shared by the session."""
    root = str(tmp_path_factory.mktemp("cityscapes"))
    write_sample(root, images=8, size=(512, 256), seed=0)
    return root


@pytest.fixture
def small_cfg() -> Config:
    return load_config(os.path.join(ROOT, "configs", "debug.yaml"))


def make_ids(h: int, w: int, blobs: list[tuple[int, tuple[int, int, int, int]]]) -> np.ndarray:
    """An id map with rectangles (id, (x0, y0, x1, y1)) drawn in order on road (7)."""
    ids = np.full((h, w), 7, np.int32)
    for v, (x0, y0, x1, y1) in blobs:
        ids[y0:y1, x0:x1] = v
    return ids
