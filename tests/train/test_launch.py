"""Launch: shipped configs run as shipped from any working directory; full configs refuse in one line
what they lack; relative paths work; side files survive kills and live on S3 too."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.io import storage
from instsynth.synth.originals import write_originals

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")
DEBUG = os.path.join(CONFIGS, "debug.yaml")


@pytest.fixture(scope="module")
def demo_tree(sample_root, tmp_path_factory):
    """A copy of the repo's configs beside a demo-out built from the session sample (as `make demo` would)."""
    from instsynth.synth.driver import run_synth

    top = tmp_path_factory.mktemp("repo")
    shutil.copytree(CONFIGS, top / "configs")
    demo = top / "demo-out"
    shutil.copytree(sample_root, demo / "cityscapes")
    write_originals(str(demo / "cityscapes"), str(demo / "original"), load_config(DEBUG), log=lambda *a: None)
    run_synth(str(demo / "cityscapes"), str(demo / "recolor"),
              load_config(DEBUG, ["generator.name=recolor", "run.executor=local", "run.progress=false"]),
              log=lambda *a: None)
    return top


def _one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("name", ["fastinst", "maskrcnn", "mask2former", "oneformer"])
def test_shipped_tiny_configs_run_from_another_directory(ray_local, demo_tree, tmp_path, monkeypatch, name):
    from instsynth.train.trainer import run_training

    monkeypatch.chdir(tmp_path)  # not the repo: paths in the config are relative to the config file
    cfg = load_config(str(demo_tree / "configs" / "train" / f"{name}.tiny.yaml"))
    result = run_training(cfg, log=lambda *a: None)
    assert result.error is None and result.metrics["step"] == cfg.train.iterations
    run_dir = demo_tree / "demo-out" / "runs" / cfg.train.name
    assert (run_dir / "starts.jsonl").exists() and not (tmp_path / "demo-out").exists()
    meta = json.load(open(os.path.join(result.checkpoint.path, "model.json")))
    assert meta["recipe"]["eval_short_edge"] == 192 and meta["recipe"]["batch_size"] == cfg.train.batch_size
    if name == "fastinst":
        # its 2 workers relaunched with the same name and more iterations continue from the last checkpoint
        again = run_training(load_config(str(demo_tree / "configs" / "train" / f"{name}.tiny.yaml"),
                                         [f"train.iterations={cfg.train.iterations + 2}"]), log=lambda *a: None)
        assert again.error is None and again.metrics["step"] == cfg.train.iterations + 2
        starts = [json.loads(ln) for ln in open(run_dir / "starts.jsonl")]
        assert [(s["start_step"], s["resumed"]) for s in starts] == [(0, False), (cfg.train.iterations, True)]
        assert starts[0]["recipe"]["workers"] == 2 and starts[0]["recipe"]["grad_accum"] == 1
        assert (run_dir / "tensorboard").is_dir() and meta["data"]["rows_original"] > 0
        # a launch that found the run finished (its start at train.iterations) says so
        from instsynth.train.trainer import training_summary

        storage.append_text(str(run_dir / "starts.jsonl"), json.dumps(
            {"start_step": cfg.train.iterations, "world_size": 2, "resumed": True, "launch": "again"}) + "\n")
        text = training_summary(cfg, result, "again")
        assert f"nothing left to train: {cfg.train.name} already reached step {cfg.train.iterations}" in text


def test_shipped_debug_experiment_on_s3_and_fingerprinted_runs(ray_local, s3_session, demo_tree, tmp_path,
                                                               monkeypatch, capsys):
    """`instsynth experiment --seeds 2` (the debug config) with train.storage_path and experiment.out on S3:
    every run trains there, the final checkpoints (s3:// URIs, which Ray names without their scheme) are
    scored, the report lands on S3; run names fingerprint the data."""
    from instsynth.synth.driver import run_synth
    from instsynth.train.data import build_catalog
    from instsynth.train.experiment import run_name
    from instsynth.train.launch import resolve_paths

    monkeypatch.chdir(tmp_path)
    path = str(demo_tree / "configs" / "experiments" / "debug.yaml")
    runs, exp = "s3://bucket/runs", "s3://bucket/experiments/debug"
    assert main(["experiment", "--config", path, "--seeds", "2", "--set", f"train.storage_path={runs}",
                 "--set", f"experiment.out={exp}"]) == 0, capsys.readouterr().err[-3000:]
    report = json.loads(storage.read_bytes(storage.join(exp, "report.json")))
    assert report["baseline"]["images"] == 2 and report["test_scale"] == "short edge 192 px"
    # seeds: run k trains with train.seed + k; seed 0 keeps the one-seed names; final checkpoints are scored
    assert report["seeds"] == [0, 1] and len(report["per_seed"]) == 2
    assert {a: n[0] for a, n in report["seed_runs"].items()} == report["runs"]
    assert all("-seed1-" in report["seed_runs"][a][1] for a in report["seed_runs"])
    assert not any("-seed" in n for n in report["runs"].values())  # seed 0: the one-seed names
    for arm in ("baseline", "augmented"):
        assert report[arm]["step"] == 2 and os.path.basename(report[arm]["checkpoint"]) != "best"
        assert report[arm]["checkpoint"].startswith(f"{runs}/{report['runs'][arm]}/checkpoint_")
        assert set(report["arms"][arm]["AP"]) == {"mean", "std"}
    assert report["paired"]["AP50"]["n"] == 2 and report["paired"]["AP50"]["lo"] is not None
    text = storage.read_bytes(storage.join(exp, "report.md")).decode()
    assert "95% interval" in text and "seed" in text and "final (step 2)" in text and "recolor" in text
    assert set(storage.list_names(runs)) >= set(report["runs"].values())
    assert not (demo_tree / "demo-out" / "experiment").exists()  # nothing went to the config's local paths

    def names(cfg):
        cfg = resolve_paths(cfg)
        e = cfg.experiment
        out = {}
        for arm, dirs in (("baseline", e.originals), ("augmented", e.originals + e.synthetic)):
            cfg.train.dirs = dirs
            out[arm] = run_name(cfg, arm, build_catalog(dirs, cfg.train.synthetic_ratio, cfg.train.seed))
        return out
    assert names(load_config(path)) == report["runs"]  # the same experiment again resumes its runs
    other = demo_tree / "demo-out" / "recolor-seed1"  # other synthetic rows: never the stale runs
    run_synth(str(demo_tree / "demo-out" / "cityscapes"), str(other),
              load_config(DEBUG, ["generator.name=recolor", "run.executor=local", "run.progress=false", "plan.seed=1"]),
              log=lambda *a: None)
    changed = names(load_config(path, [f"experiment.synthetic=[{other}]"]))
    assert changed["augmented"] != report["runs"]["augmented"] and changed["baseline"] == report["runs"]["baseline"]
    ratio = names(load_config(path, ["train.synthetic_ratio=0.5"]))  # the baseline has no synthetic rows
    assert ratio["augmented"] != report["runs"]["augmented"] and ratio["baseline"] == report["runs"]["baseline"]
    longer = names(load_config(path, ["train.iterations=3"]))  # a changed config: new names for both arms
    assert longer["baseline"] != report["runs"]["baseline"] and longer["augmented"] != report["runs"]["augmented"]
    capped = names(load_config(path, ["train.max_size=4096"]))  # a key added later: new names once it is set
    assert capped["baseline"] != report["runs"]["baseline"] and capped["augmented"] != report["runs"]["augmented"]
    tested = names(load_config(path, ["train.eval_max_size=853"]))  # so is the test-scale cap: scores differ
    assert tested["baseline"] not in (report["runs"]["baseline"], capped["baseline"])


@pytest.mark.parametrize("cmd,config,key", [
    ("train", "train/fastinst.yaml", "train.dirs"),
    ("train", "train/mask2former.yaml", "train.dirs"),
    ("train", "train/oneformer.yaml", "train.dirs"),
    ("experiment", "experiments/fastinst-sdxl.yaml", "train.dirs"),
])
def test_full_configs_refuse_at_launch_in_one_line(capsys, tmp_path, cmd, config, key):
    err = _one_line_error(capsys, [cmd, "--config", os.path.join(CONFIGS, config)])
    assert key in err and "/data/is-cityscapes" in err
    assert not os.path.exists("/data/runs")


def test_full_config_names_missing_weights_then_gpus(ray_local, capsys, demo_tree):
    demo = demo_tree / "demo-out"
    have = [f"train.dirs=[{demo / 'original'}]", f"train.eval_root={demo / 'cityscapes'}", "train.eval_split=val"]
    fastinst = os.path.join(CONFIGS, "train", "fastinst.yaml")
    err = _one_line_error(capsys, ["train", "--config", fastinst, *sum((["--set", s] for s in have), [])])
    assert "train.model.backbone_weights: /models/resnet50-imagenet.pth: no such file" in err
    err = _one_line_error(capsys, ["train", "--config", os.path.join(CONFIGS, "train", "mask2former.yaml"),
                                   *sum((["--set", s] for s in have), [])])
    assert "train.model.pretrained" in err and "facebook/mask2former-swin-tiny-coco-instance" in err
    weights = demo_tree / "r50.pth"
    weights.write_bytes(b"not a state dict")
    err = _one_line_error(capsys, ["train", "--config", fastinst, *sum((["--set", s] for s in have), []),
                                   "--set", f"train.model.backbone_weights={weights}"])
    assert f"train.model.backbone_weights: {weights}: not a PyTorch state dict" in err
    import torch
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)  # checked key by key at launch
    err = _one_line_error(capsys, ["train", "--config", fastinst, *sum((["--set", s] for s in have), []),
                                   "--set", f"train.model.backbone_weights={weights}"])
    assert "train.use_gpu: 4 GPU worker(s) asked for, this machine has 0 GPU(s)" in err


def test_config_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    (d / "c.yaml").write_text("train:\n  dirs: [../x, /abs/y, s3://bucket/z]\n  eval_root: ../../root\n")
    monkeypatch.chdir(tmp_path / "a")
    cfg = load_config("b/c.yaml", ["train.storage_path=runs"])
    assert cfg.train.dirs == [str(tmp_path / "a" / "x"), "/abs/y", "s3://bucket/z"]
    assert cfg.train.eval_root == str(tmp_path / "root")
    assert cfg.train.storage_path == "runs"  # the command line stays relative to the current dir
    from instsynth.train.launch import resolve_paths

    assert resolve_paths(cfg).train.storage_path == str(tmp_path / "a" / "runs")


def test_evaluate_takes_relative_paths(sample_root, tmp_path, monkeypatch, capsys):
    from instsynth.train.models import build_model
    from instsynth.train.trainer import save_checkpoint

    model = build_model("fastinst", tiny=True)
    ckpt = tmp_path / "ckpt"
    spec = {"name": "fastinst", "kwargs": {"tiny": True}, "recipe": {"eval_short_edge": 128}}
    import torch

    save_checkpoint(str(ckpt), model, torch.optim.AdamW(model.parameters()), 3, spec, {})
    shutil.copytree(sample_root, tmp_path / "cs")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", "ckpt", "--data-root", "cs", "--max-images", "1"]) == 0
    out = capsys.readouterr().out
    assert "evaluated at test scale short edge 128 px on 1 image" in out
    res = json.load(open(tmp_path / "ckpt" / "eval_val.json"))
    assert res["images"] == 1 and res["step"] == 3
    err = _one_line_error(capsys, ["evaluate", "--checkpoint", "ckpt", "--data-root", "nowhere"])
    assert "--data-root: " in err and "nowhere" in err


def test_tensorboard_scalars_survive_a_killed_run(tmp_path):
    code = ("import os; from instsynth.train.trainer import Board\n"
            f"b = Board({str(tmp_path)!r}); b.scalars({{'train/loss': 1.5}}, 1); b.flush(); os._exit(9)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    files = os.listdir(tmp_path / "tensorboard")
    assert len(files) == 1
    data = open(tmp_path / "tensorboard" / files[0], "rb").read()
    assert b"train/loss" in data  # flushed at the report, not only at close


def _events(path):
    """The Event protos of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, out, pos = open(path, "rb").read(), [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(Event.FromString(data[pos + 12:pos + 12 + n]))
        pos += 12 + n + 4
    return out


def test_a_resumed_board_purges_the_steps_after_its_checkpoint(tmp_path):
    """A worker reported steps 1-5, its last checkpoint was step 3: the restarted worker's events file starts
    with TensorBoard's purge marker at step 4, its first step (SessionLog START: TensorBoard drops earlier
    events with a step >= 4), so steps 4-5 show once, from the restart."""
    from tensorboardX.proto.event_pb2 import SessionLog

    from instsynth.train.trainer import Board

    first = Board(str(tmp_path))
    for step in range(1, 6):
        first.scalars({"train/loss": 1.0}, step)
    first.close()
    import time

    time.sleep(1.1)  # event files are named by the second they were opened in
    again = Board(str(tmp_path), purge_step=4)
    again.scalars({"train/loss": 0.5}, 4)
    again.close()
    files = sorted(os.listdir(tmp_path / "tensorboard"))
    assert len(files) == 2
    events = _events(tmp_path / "tensorboard" / files[1])
    start = [e for e in events if e.HasField("session_log")]
    assert len(start) == 1 and start[0].step == 4 and start[0].session_log.status == SessionLog.START
    assert not any(e.HasField("session_log") for e in _events(tmp_path / "tensorboard" / files[0]))


def test_side_files_on_s3(s3, tmp_path):
    from instsynth.train.trainer import Board

    run = "s3://bucket/runs/x"
    storage.append_text(storage.join(run, "starts.jsonl"), '{"start_step": 0}\n')
    storage.append_text(storage.join(run, "starts.jsonl"), '{"start_step": 5}\n')
    lines = storage.read_bytes(storage.join(run, "starts.jsonl")).decode().splitlines()
    assert [json.loads(ln)["start_step"] for ln in lines] == [0, 5]
    b = Board(run)
    b.scalars({"train/loss": 2.0}, 1)
    b.flush(upload=True)
    names = storage.list_names(storage.join(run, "tensorboard"))
    assert len(names) == 1 and b"train/loss" in storage.read_bytes(storage.join(run, "tensorboard", names[0]))
    b.close()
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.json").write_text("{}")
    storage.upload_dir(str(tmp_path / "best"), storage.join(run, "best"))
    assert storage.read_bytes(storage.join(run, "best", "model.json")) == b"{}"


def test_generator_model_paths_relative_to_the_config(tmp_path, monkeypatch):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "g.yaml").write_text("generator:\n  name: sdxl-inpaint\n  params: {model: ../models/m, vae: org/vae}\n")
    (d / "h.yaml").write_text("generator:\n  name: sdxl-inpaint\n  params: {model: org/some-model}\n")
    monkeypatch.chdir(tmp_path / "configs")
    assert load_config("g.yaml").generator.params == {"model": str(tmp_path / "models" / "m"), "vae": "org/vae"}
    assert load_config("h.yaml").generator.params["model"] == "org/some-model"  # a hub id stays as it is


def test_loss_names():
    from instsynth.train.trainer import loss_name

    assert (loss_name("loss"), loss_name("ce"), loss_name("loss_mask")) == ("loss", "loss_ce", "loss_mask")


def test_checkpoints_on_s3_evaluate_and_final(s3, sample_root, tmp_path, capsys):
    """`evaluate --checkpoint s3://...` and the experiment's final-checkpoint check read through storage (they
    opened local files before: a FileNotFoundError on every s3:// run)."""
    import torch

    from instsynth.train.experiment import final_checkpoint
    from instsynth.train.models import build_model
    from instsynth.train.trainer import save_checkpoint

    model = build_model("fastinst", tiny=True)
    local = tmp_path / "best"
    spec = {"name": "fastinst", "kwargs": {"tiny": True}, "recipe": {"eval_short_edge": 128}}
    save_checkpoint(str(local), model, torch.optim.AdamW(model.parameters()), 4, spec, {})
    best = "s3://bucket/runs/s3-ckpt/best"
    storage.upload_dir(str(local), best)
    assert main(["evaluate", "--checkpoint", best, "--data-root", sample_root, "--max-images", "1"]) == 0
    assert "evaluated at test scale short edge 128 px on 1 image" in capsys.readouterr().out
    res = json.loads(storage.read_bytes(storage.join(best, "eval_val.json")))
    assert res["step"] == 4 and res["checkpoint"] == best
    from ray.train import Checkpoint

    ckpt = Checkpoint(best)  # Ray names it without its scheme: bucket/runs/...
    assert not ckpt.path.startswith("s3://")
    assert final_checkpoint(type("R", (), {"checkpoint": ckpt})(), 4) == best


def test_input_errors_end_the_run_lost_workers_are_retried():
    """The failure policy: an input error from any worker ends the run at once; anything else is the default
    policy's (retried up to train.max_failures)."""
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from instsynth.config import ConfigError
    from instsynth.datasets import DataError
    from instsynth.train.failures import InputErrorsEndTheRun, input_error

    policy = InputErrorsEndTheRun(FailureConfig(max_failures=3))
    lost = WorkerGroupError("worker died", {1: RuntimeError("The actor died unexpectedly")})
    assert policy.make_decision(lost) == FailureDecision.RETRY
    for bad in (ConfigError("train.crop: bad"), DataError("x.json: not JSON"), storage.StorageError("d: cannot read")):
        err = WorkerGroupError("input", {0: RuntimeError("collateral"), 1: bad})
        assert input_error(err) is bad and policy.make_decision(err) == FailureDecision.RAISE
    assert policy.make_decision(lost) == FailureDecision.RETRY  # two lost workers so far, limit 3


def test_an_input_error_inside_a_worker_is_one_line_and_not_retried(ray_local, demo_tree, tmp_path, capsys):
    """An evaluation root that passes the launch check (the split dir exists) but holds no images: the worker
    raises at its first evaluation; the run ends there (one start recorded, no retries) with one line."""
    demo = demo_tree / "demo-out"
    empty = tmp_path / "empty-root"
    (empty / "leftImg8bit" / "val").mkdir(parents=True)
    (empty / "gtFine" / "val").mkdir(parents=True)
    runs = tmp_path / "runs"
    rc = main(["train", "--config", str(demo_tree / "configs" / "train" / "fastinst.tiny.yaml"),
               "--set", f"train.dirs=[{demo / 'original'}]", "--set", f"train.eval_root={empty}",
               "--set", "train.eval_every=1", "--set", "train.num_workers=1", "--set", "train.name=bad-eval",
               "--set", f"train.storage_path={runs}"])
    err = capsys.readouterr().err  # (this in-process Ray also relays its own actors' lines here)
    assert rc == 2 and err.strip().splitlines()[-1] == f"instsynth train: error: {empty}: no images in split 'val'"
    assert "Traceback" not in err  # the worker's traceback of an input error stays off the console
    assert len((runs / "bad-eval" / "starts.jsonl").read_text().splitlines()) == 1  # max_failures=3: not retried
