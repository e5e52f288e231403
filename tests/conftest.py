import os
import subprocess
import tempfile

import numpy as np
import pytest

from instsynth.config import Config, load_config
from instsynth.datasets.sample import write_sample

# The tests run with a HOME of their own, so no tool they start (Ray, Hugging Face, torch, matplotlib, a
# browser) writes into the user's, and every temp file of the tests, their subprocesses (TMPDIR) and Ray
# lies under one folder that is removed at the end, so a test run leaves /tmp as it found it.  Short
# name: Ray's socket paths under it must stay within the 107-byte limit of a Unix socket path.
_TMP = tempfile.mkdtemp(prefix="ist-")
os.environ["TMPDIR"] = _TMP
tempfile.tempdir = _TMP
_REAL_HOME = os.path.expanduser("~")
os.environ["HOME"] = os.path.join(_TMP, "home")
os.makedirs(os.environ["HOME"])
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_TMP, "mpl"))
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(_TMP, "torch"))
# Ray Train's controller polls its workers every 2 s and starts a preemption watcher actor per run: with
# some twenty short runs in the suite, a 0.5 s poll and no watcher (no cloud preempts a test) save minutes
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
#: where the tools the tests run keep their state under a home: with HOME redirected these stay empty
#: in the user's home unless something finds it another way (``pwd``); a browser or editor the user runs
#: meanwhile writes elsewhere (``.config/chromium``, ``.cache/dconf``), so it cannot trip the check
_TOOL_DIRS = (".ray", ".cache/huggingface", ".cache/torch", ".cache/matplotlib", ".config/matplotlib",
              ".cache/instsynth", ".cache/ray", ".cache/pip/instsynth", ".pki")


def _home_snapshot() -> set[str]:
    out = set()
    for sub in _TOOL_DIRS:
        d = os.path.join(_REAL_HOME, sub)
        if os.path.isdir(d):
            out |= {os.path.join(sub, n) for n in os.listdir(d)} | {sub}
    return out


_HOME_BEFORE = _home_snapshot()


def _ours(pid: str) -> bool:
    """A process started by this test session: it carries the session's TMPDIR (every Ray process and
    subprocess inherits it), so the Ray of another session or of a job running beside the tests on this
    machine is never counted as left behind (nor hidden by having been there first)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"TMPDIR={_TMP}".encode() in f.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def _ray_processes() -> list[str]:
    r = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray::"], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if "pgrep" not in ln and _ours(ln.split()[0])]


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
        left = _ray_processes()
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
        problems.append(f"tests wrote into {_REAL_HOME}: {new_home}")
    if problems:
        print("\n" + "\n".join(problems))
        session.exitstatus = 1


def _s3_env(endpoint: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="session")
def session_s3():
    """A local S3 server for the whole session whose environment the session's Ray workers carry (the
    ``ray_local`` fixture's runtime env), so in-process Ray Train runs can keep their runs on ``s3://``;
    bucket ``bucket`` exists.  Tests that use it set the same environment in-process (``s3_session``)."""
    from tests.s3server import CountingS3

    server = CountingS3().start()
    server.env = _s3_env(server.endpoint)
    import boto3

    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bucket")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_local(session_s3):
    """One local Ray for the session, with more logical CPUs than cores so stages can overlap; its workers
    reach the session's S3 server."""
    import ray

    from instsynth.ray_runtime import QUIET_HOOK

    if not ray.is_initialized():  # the worker hook of the Ray `instsynth` itself starts (init_ray)
        ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=os.path.join(_TMP, "ray"),
                 runtime_env={"env_vars": session_s3.env, "worker_process_setup_hook": QUIET_HOOK})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray


@pytest.fixture
def s3_session(session_s3, monkeypatch):
    """The session S3 server's environment, set in this process too (for tests that train on Ray with
    their runs on ``s3://``)."""
    for k, v in session_s3.env.items():
        monkeypatch.setenv(k, v)
    return session_s3.env


REPO_ROOT = ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout (tests in any folder)


def load_script(name: str):
    """A module of ``scripts/`` (not a package) imported by path, for testing a benchmark's pieces."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    env = _s3_env(server.endpoint)
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
