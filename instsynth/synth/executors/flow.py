"""How units flow through the Ray pipeline: the feed and prepare are held back, the rest always runs.

Why our own backpressure (measured, issue #18): with Ray Data 2.60's per-operator reservation off (our
default, ``run.op_reservation: false``: the reservation idled cores between our short stages), Ray Data
enforces no object-store budget at all, and its ``DownstreamCapacityBackpressurePolicy`` stops *reading
the outputs* of an operator whose output queue outgrows its consumer's pending inputs. A prepare task
streaming a block of 64 units then stopped in the middle of its block while it held its CPU; with every
CPU held that way no commit task could start, the generators' outputs were not read either, and a
16-GPU fleet ran at a trickle for ~540 s (``docs/bench_fleet_1600.json``) until Ray's escape hatch, one
unit now and then, let the job finish.

The rule here, for this pipeline's shape (plan blocks -> feed -> prepare -> generators -> commit):
- the outputs of a running task are always read: no task waits while it holds a CPU or a GPU;
- the feed (which splits the plan's blocks of many units into one block per unit, at a tiny CPU
  share) runs one task at a time and only while prepare has fewer than ``2 x slots`` units waiting;
- prepare (one unit per task) starts a task only while the object-store bytes in flight from prepare
  on (prepared units queued for the generators, inside them, waiting for commit, or for the driver) are
  under the budget (``run.inflight_mb``), and only on a CPU that no commit task is waiting for: its
  slots are the CPUs Ray Data may use (they change as nodes join) less the active tasks of the CPU
  stages after the generators. Commit goes first, so generated units do not wait behind prepare;
- the generators and commit are never held: they are what frees the budget, so nothing can deadlock.
In flight therefore stays within the budget plus one unit per prepare slot, however large the plan.

Ray Data's policy interface is internal (``ray.data._internal``); this module is the only place that
touches it, written against Ray 2.60 (the pinned version).
"""

from __future__ import annotations

import math
import time

import ray
from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
    ConcurrencyCapBackpressurePolicy,
    DownstreamCapacityBackpressurePolicy,
)
from ray.data._internal.execution.backpressure_policy.resource_budget_backpressure_policy import (
    ResourceBudgetBackpressurePolicy,
)
from ray.data._internal.execution.operators.map_operator import MapOperator
from ray.data._internal.execution.operators.task_pool_map_operator import TaskPoolMapOperator

#: how often the cluster's CPU count is re-read (a GCS call) while a job runs
CPUS_REFRESH_S = 5.0

#: DataContext config key of the policy's settings: {"budget_bytes": int, "task_cpus": float, "feed": the
#: feed function's name, "prepare": the prepare function's} - the names by which it knows its pipeline
FLOW_CONFIG_KEY = "instsynth.flow"


def may_feed(active: int, waiting: int, slots: int) -> bool:
    """The feed splits one block at a time, and only while prepare has under two units per slot waiting."""
    return active == 0 and waiting < 2 * slots


def may_prepare(active: int, active_after: int, slots: int, in_flight: int, budget: int) -> bool:
    """A prepare task starts while the bytes in flight are under the budget, on a slot that neither another
    prepare task nor a commit task (``active_after``) takes; with nothing of ours running, one always may."""
    free = slots - active - active_after > 0 or active + active_after == 0
    return free and in_flight < budget


class HoldPreparePolicy(BackpressurePolicy):
    """Holds back the first two map operators (feed, prepare); see the module doc."""

    @property
    def name(self) -> str:
        return "HoldPrepare"

    def __init__(self, data_context, topology, resource_manager):
        super().__init__(data_context, topology, resource_manager)
        cfg = data_context.get_config(FLOW_CONFIG_KEY, {})
        self.budget = int(cfg.get("budget_bytes", 2**30))
        self.task_cpus = float(cfg.get("task_cpus", 1.0)) or 1.0
        self.names = (cfg.get("feed") or "\0", cfg.get("prepare") or "\0")  # no names: no operator matches
        self._cpus, self._cpus_at = 1.0, -math.inf
        ops = list(topology)  # the topology lists operators from the source to the sink
        maps = [op for op in ops if isinstance(op, MapOperator)]
        self.feed, self.prepare = (maps + [None, None])[:2]
        self.fallback, self.downstream, self.cpu_after = [], [], []
        if not (self.prepare is not None and self.names[0] in self.feed.name and self.names[1] in self.prepare.name):
            # another Dataset of this process (a training read, a user's): Ray Data's own policies
            self.feed = self.prepare = None
            self.fallback = [p(data_context, topology, resource_manager)
                             for p in (ResourceBudgetBackpressurePolicy, DownstreamCapacityBackpressurePolicy)]
            return
        self.downstream = ops[ops.index(self.prepare):]
        # the CPU task stages after the first actor pool (the generators): commit
        pool = next((i for i, op in enumerate(self.downstream) if not isinstance(op, TaskPoolMapOperator)), None)
        if pool is not None:
            self.cpu_after = [op for op in self.downstream[pool + 1:] if isinstance(op, TaskPoolMapOperator)]

    def in_flight_bytes(self) -> int:
        """Object-store bytes held from prepare to the driver (queued, in tasks, outputs not yet taken)."""
        return sum(self._resource_manager.get_op_usage(op).object_store_memory for op in self.downstream)

    def slots(self) -> int:
        """Prepare tasks the cluster's CPUs allow now (at least one): its CPUs less those the actor pools
        hold. Ray's own count, re-read every few seconds as nodes join or leave (Ray Data's global limit
        is what its autoscaler has reserved so far, which starts at zero)."""
        now = time.monotonic()
        if now - self._cpus_at > CPUS_REFRESH_S:
            self._cpus, self._cpus_at = float(ray.cluster_resources().get("CPU", 1.0)), now
        held = sum(self._resource_manager.get_op_usage(op).cpu for op in self._topology
                   if isinstance(op, MapOperator) and not isinstance(op, TaskPoolMapOperator))
        return max(1, math.floor((self._cpus - held) / self.task_cpus + 1e-9))

    def waiting_for_prepare(self) -> int:
        """Units the feed has split off that prepare has not started."""
        return (self._topology[self.feed].total_enqueued_output_blocks()
                + self._topology[self.prepare].total_enqueued_input_blocks())

    def can_add_input(self, op) -> bool:
        if self.prepare is None:
            return all(p.can_add_input(op) for p in self.fallback)
        if op not in (self.feed, self.prepare):
            return True
        if op is self.feed:
            return may_feed(op.num_active_tasks(), self.waiting_for_prepare(), self.slots())
        return may_prepare(self.prepare.num_active_tasks(), sum(o.num_active_tasks() for o in self.cpu_after),
                           self.slots(), self.in_flight_bytes(), self.budget)

    def max_task_output_bytes_to_read(self, op):
        if self.prepare is None:
            limits = [x for x in (p.max_task_output_bytes_to_read(op) for p in self.fallback) if x is not None]
            return min(limits) if limits else None
        return None  # never stop reading a running task: it would wait holding its CPU or GPU


def configure_flow(ctx, budget_bytes: int, task_cpus: float, feed, prepare) -> None:
    """Install HoldPreparePolicy on ``ctx``, with Ray's policy that enforces user-set concurrency caps;
    ``feed``, ``prepare``: the pipeline's two functions, whose operators it holds back."""
    ctx.set_config(FLOW_CONFIG_KEY, {"budget_bytes": int(budget_bytes), "task_cpus": float(task_cpus),
                                     "feed": feed.__name__, "prepare": prepare.__name__})
    ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [ConcurrencyCapBackpressurePolicy, HoldPreparePolicy])


def remove_flow(ctx) -> None:
    """Back to Ray Data's own policies (``run.op_reservation: true``)."""
    for key in (FLOW_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY):
        if ctx.get_config(key) is not None:
            ctx.remove_config(key)
