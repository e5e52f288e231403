"""A simulated GPU fleet: the real pipeline with the ``simulate`` generator on Ray's declared fake GPUs.

Runs in its own process: the session's Ray (``ray_local``) declares no GPUs, and other tests rely on that.
"""

import json
import os
import subprocess
import sys

import pytest

from instsynth.config import GeneratorConfig
from instsynth.generators import GeneratorError, build_generator
from instsynth.output.layout import plan_path
from instsynth.output.readers import iter_tables
from instsynth.plan.planner import read_plan
from instsynth.views.status import stage_queues
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT

FLEET = """
import json, sys, ray
from instsynth.config import load_config
from instsynth.synth.driver import run_synth
root, out, trace = sys.argv[1:4]
ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=sys.argv[4])
from ray.data import DataContext
DataContext.get_current().enable_progress_bars = False
cfg = load_config(sys.argv[5], ["run.progress=false", "run.rows_per_unit=1", "generator.name=simulate",
                   "generator.params.cost_s=0.2", f"generator.params.trace={trace}", "generator.batch_size=1",
                   "generator.num_gpus=1", "generator.num_cpus=0", "generator.min_actors=4",
                   "generator.max_actors=4"])
s = run_synth(root, out, cfg, log=lambda *a: None)
print("RESULT " + json.dumps(s))
ray.shutdown()
"""


def test_simulate_checks_its_cost():
    with pytest.raises(GeneratorError, match="cost_s"):
        from instsynth.generators import check_generator

        check_generator(GeneratorConfig(name="simulate", params={"cost_s": -1}))
    gen = build_generator(GeneratorConfig(name="simulate", params={"cost_s": 0}))
    import numpy as np

    crop = np.zeros((4, 4, 3), np.uint8)
    assert (gen([{"crop": crop}])[0]["image"] == crop).all() and gen.model_id == "sleep:0s"


def test_fleet_of_fake_gpus_commits_every_item_once_on_several_actors(sample_root, tmp_path):
    import tempfile

    out, trace = str(tmp_path / "out"), str(tmp_path / "trace")
    ray_tmp = tempfile.mkdtemp(prefix="rf-")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-c", FLEET, sample_root, out, trace, ray_tmp,
                        os.path.join(ROOT, "configs", "debug.yaml")],
                       capture_output=True, text=True, env=env, timeout=600)
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, r.stderr[-3000:]
    summary = json.loads(line[0][7:])
    planned = read_plan(plan_path(out))[0].column("work_id").to_pylist()
    ids = [w for t in iter_tables(out, ["work_id"]) for w in t.column("work_id").to_pylist()]
    assert sorted(ids) == sorted(planned) and len(ids) == len(set(ids))
    assert summary["pending_items"] == 0 and summary["ok"]
    pids = {ln.split()[0] for f in os.listdir(trace) for ln in open(os.path.join(trace, f))}
    assert len(pids) > 1  # the work was spread over several simulated GPUs
    # the run record carries each unit's stage intervals, in pipeline order, from which queue depths follow
    record = json.load(open(next(os.path.join(out, "_runs", f) for f in os.listdir(os.path.join(out, "_runs")))))
    for u in record["units"]:
        st = u["stages"]
        assert st["prepare"][0] <= st["prepare"][1] <= st["generate"][0] <= st["generate"][1] <= st["commit"][0]
    q = stage_queues(record["units"], step=0.05)
    assert max(q["running"]["generate"]) > 1 and max(q["running"]["generate"]) <= 4 * 2  # 2 calls per actor
    assert all(v >= 0 for vals in q["queued"].values() for v in vals)
