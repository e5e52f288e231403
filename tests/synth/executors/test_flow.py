"""The Ray pipeline's flow: prepare is held back by the in-flight budget, commit and the generators never are."""

import json
import os

from instsynth.config import load_config
from instsynth.output.layout import plan_path
from instsynth.output.readers import iter_tables
from instsynth.plan.planner import read_plan
from instsynth.synth.driver import run_synth
from instsynth.synth.executors.flow import may_feed, may_prepare
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT


def test_feed_splits_one_block_at_a_time_while_prepare_has_little_waiting():
    assert may_feed(active=0, waiting=3, slots=2)
    assert not may_feed(active=1, waiting=0, slots=2)  # one block at a time
    assert not may_feed(active=0, waiting=4, slots=2)  # two units per slot are enough


def test_prepare_yields_to_commit_and_to_the_budget():
    assert may_prepare(active=1, active_after=0, slots=2, in_flight=0, budget=10)
    assert not may_prepare(active=1, active_after=1, slots=2, in_flight=0, budget=10)  # commit's slot
    assert not may_prepare(active=0, active_after=2, slots=2, in_flight=0, budget=10)
    assert not may_prepare(active=0, active_after=0, slots=2, in_flight=10, budget=10)  # budget full
    # nothing of ours running: one may start even on a cluster reporting no free slot
    assert may_prepare(active=0, active_after=0, slots=0, in_flight=0, budget=10)


def _run(sample_root, out, inflight_mb):
    cfg = load_config(os.path.join(ROOT, "configs", "debug.yaml"),
                      ["run.progress=false", "run.rows_per_unit=1", "generator.name=simulate",
                       "generator.params.cost_s=0.2", "generator.batch_size=1", "generator.min_actors=1",
                       "generator.max_actors=1", "plan.variants=4", f"run.inflight_mb={inflight_mb}"])
    summary = run_synth(sample_root, out, cfg, log=lambda *a: None)
    planned = read_plan(plan_path(out))[0].column("work_id").to_pylist()
    ids = [w for t in iter_tables(out, ["work_id"]) for w in t.column("work_id").to_pylist()]
    assert sorted(ids) == sorted(planned) and summary["pending_items"] == 0  # every item, exactly once
    record = json.load(open(os.path.join(out, "_runs", os.listdir(os.path.join(out, "_runs"))[0])))
    # the most units prepared and not yet committed at any one time: what the budget bounds
    spans = [(u["stages"]["prepare"][1], u["stages"]["commit"][0]) for u in record["units"]]
    return max(sum(a <= t < b for a, b in spans) for t, _ in spans), len(spans)


def test_a_small_budget_holds_prepared_units_back_and_loses_nothing(ray_local, sample_root, tmp_path):
    """One slow generator: with the default budget prepare runs ahead; with 1 MB it stays a few units ahead."""
    loose, n = _run(sample_root, str(tmp_path / "loose"), 1024)
    tight, _ = _run(sample_root, str(tmp_path / "tight"), 1)
    print(f"prepared, not yet committed: {loose} (1 GB budget), {tight} (1 MB), of {n} units")
    assert loose > n // 2  # the generator is the bottleneck: with room, prepare runs ahead
    # 1 MB holds ~4 prepared units (~250 KB each here) plus one per prepare slot (4 CPUs in ray_local)
    assert tight <= 12 and 2 * tight <= loose


def test_op_reservation_hands_scheduling_back_to_ray():
    from ray.data import DataContext
    from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY

    from instsynth.synth.executors.flow import FLOW_CONFIG_KEY, HoldPreparePolicy
    from instsynth.synth.executors.ray import configure_context

    ctx = DataContext.get_current()
    saved = ctx.copy()
    try:
        configure_context(load_config(os.path.join(ROOT, "configs", "debug.yaml"), ["run.inflight_mb=64"]))
        assert HoldPreparePolicy in ctx.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)
        assert ctx.get_config(FLOW_CONFIG_KEY)["budget_bytes"] == 64 * 2**20
        configure_context(load_config(os.path.join(ROOT, "configs", "debug.yaml"), ["run.op_reservation=true"]))
        assert ctx.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY) is None and ctx.op_resource_reservation_enabled
    finally:
        DataContext._set_current(saved)
