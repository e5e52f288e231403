"""Deployment files: cluster.yaml passes the launcher's offline validation; Dockerfile and RayJob fields."""

import copy
import os

import pytest
import yaml

from instsynth.cli import main
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT


def _yaml(path):
    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_passes_launcher_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _yaml("cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(cfg)))
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}  # no work on the head
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1 and gpu["resources"]["GPU"] == 1
    assert cfg["idle_timeout_minutes"] > 0 and cfg["docker"]["image"]
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["gpu_worker"]["bogus_field"] = 1
    with pytest.raises(Exception, match="bogus_field"):
        validate_config(prepare_config(broken))


def test_generator_configs_ask_for_gpu_nodes():
    for name in ("sdxl-inpaint", "blended-sdxl", "gligen"):
        g = _yaml(f"configs/generators/{name}.yaml")["generator"]
        assert g["num_gpus"] == 1 and g["max_actors"] >= g["min_actors"] >= 1


def test_dockerfile_installs_the_package():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=os.path.join(ROOT, "docker", "Dockerfile"))
    assert "cuda" in df.baseimage
    runs = " ".join(i["value"] for i in df.structure if i["instruction"] == "RUN")
    copies = [i["value"] for i in df.structure if i["instruction"] == "COPY"]
    assert "pip install" in runs and any(v.startswith("instsynth") for v in copies)
    assert any("pyproject.toml" in v for v in copies)


def test_kuberay_rayjob_fields():
    job = _yaml("deploy/kuberay/rayjob.yaml")
    assert job["kind"] == "RayJob" and "ray_jobs/synthesize.py" in job["spec"]["entrypoint"]
    spec = job["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_models_prefetch_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = main(["models", "prefetch", "--offline", "--set", "generator.name=sdxl-inpaint"])
    err = capsys.readouterr().err
    assert code == 2 and "diffusers/stable-diffusion-xl-1.0-inpainting-0.1" in err and "not in the local cache" in err
    from instsynth.generators.tiny import make_sdxl

    local = make_sdxl(str(tmp_path / "m"), 9)
    assert main(["models", "prefetch", "--set", "generator.name=sdxl-inpaint",
                 "--set", f"generator.params.model={local}"]) == 0
    assert "local" in capsys.readouterr().out


def test_kuberay_training_job_is_a_valid_launch():
    """The training RayJob's entrypoint is `ray_jobs/train.py` with a config and overrides that load (every key
    valid), its checkpoints on s3:// and one GPU worker pod per train worker."""
    import shlex

    from instsynth.config import load_config

    job = _yaml("deploy/kuberay/train-rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "ray_jobs/train.py"]
    config = os.path.join(ROOT, argv[argv.index("--config") + 1])
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    t = load_config(config, sets).train
    assert t.storage_path.startswith("s3://") and t.eval_root.startswith("s3://") and t.ingest == "ray_data"
    gpu = [g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["maxReplicas"] >= t.num_workers and t.use_gpu
