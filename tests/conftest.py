import os
import subprocess
import tempfile

import numpy as np
import pytest

from instsynth.config import Config, load_config
from instsynth.datasets.sample import write_sample

# Keep every tool's caches out of the user's home (checked at session end, see pytest_sessionfinish),
# and every temp file of the tests, their subprocesses (TMPDIR) and Ray under one folder that is removed
# at the end, so a test run leaves /tmp as it found it.  Short name: Ray's socket paths under it must
# stay within the 107-byte limit of a Unix socket path.
_TMP = tempfile.mkdtemp(prefix="ist-")
os.environ["TMPDIR"] = _TMP
tempfile.tempdir = _TMP
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_TMP, "mpl"))
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(_TMP, "torch"))
_HOME = os.path.expanduser("~")


def _home_snapshot() -> set[str]:
    out = set()
    for sub in ("", ".cache", ".config"):
        d = os.path.join(_HOME, sub)
        if os.path.isdir(d):
            out |= {os.path.join(sub, n) for n in os.listdir(d)}
    return out


_HOME_BEFORE = _home_snapshot()


def _ray_processes() -> list[str]:
    r = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray::"], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if "pgrep" not in ln]


_RAY_BEFORE = set(_ray_processes())


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if tests left Ray processes behind or wrote into the user's home."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001
        pass
    import time

    for _ in range(30):
        left = [p for p in _ray_processes() if p not in _RAY_BEFORE]
        if not left:
            break
        time.sleep(0.5)
    if not left:
        import shutil

        shutil.rmtree(_TMP, ignore_errors=True)
    new_home = sorted(_home_snapshot() - _HOME_BEFORE)
    problems = []
    if left:
        problems.append(f"Ray processes left behind: {left[:5]}")
    if new_home:
        problems.append(f"tests wrote into {_HOME}: {new_home}")
    if problems:
        print("\n" + "\n".join(problems))
        session.exitstatus = 1


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, with more logical CPUs than cores so stages can overlap."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR",
                 _temp_dir=os.path.join(_TMP, "ray"))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray


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


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory) -> str:
    """The same 8 scenes as a COCO dataset (``annotations/instances_{train,val}.json``, JPEG images)."""
    root = str(tmp_path_factory.mktemp("coco"))
    write_sample(root, images=8, size=(512, 256), seed=0, format="coco")
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


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on 127.0.0.1 (the real HTTP protocol, not a client mock) that counts every
    request (``tests/s3server.py``); bucket ``bucket`` exists."""
    from tests.s3server import CountingS3

    server = CountingS3().start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": server.endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bucket")
    server.env = env
    server.reset()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server):
    """The environment (endpoint, credentials) of the local S3 server."""
    return s3_server.env
