"""The Ray Data executor: the stages composed into one streaming pipeline.

    plan (Arrow blocks of many units) -> feed (one block per unit) -> prepare (CPU tasks)
        -> generator (actor pool, GPU) -> compose + commit (CPU tasks: Parquet, then marker)
        -> tiny summaries to the driver

How much may be in flight, and which stage goes first, is ``flow.py``'s job (Ray Data backpressure).

Why this shape (measured with Ray 2.60, see issue #3): ``read_parquet`` over a small manifest
arrives as one block, so one task would hold all the work and nothing would reach a writer until
it ended; Ray Data's beta checkpointing kept no rows after a driver kill.  One block per unit, with
a Parquet-then-marker commit per unit, keeps everything committed before a kill and lets a re-run
do exactly the rest.  A unit travels as one row holding its pickled ``stages.Unit``; images never
pass through the driver and nothing collects the dataset.

Stages never import Ray; the adapters here add placement records (host, node id) and pass
settings through ``fn_kwargs``/``fn_constructor_kwargs`` - workers do not see the driver's argv.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time

import numpy as np

from instsynth.config import ComposeConfig, Config, GeneratorConfig
from instsynth.generators import GeneratorError
from instsynth.output.commits import commit_unit
from instsynth.ray_runtime import init_ray
from instsynth.synth.executors.progress import Progress
from instsynth.synth.stages import PendingUnits, Unit, compose, generate, prepare, setup_generator


def _where(stage: str, unit, started: float) -> None:
    """Record where (host, node, pid), how long (seconds, incl. (de)serialisation) and when (wall-clock
    ``end``) a stage ran: the run record keeps each unit's stage intervals, from which the time each
    unit waited between stages - the queue depths - follows without any sampling of Ray's internals."""
    import ray

    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        node = ""
    unit.placement = getattr(unit, "placement", {})
    unit.placement[stage] = {"host": socket.gethostname(), "node": node, "pid": os.getpid(),
                             "seconds": time.perf_counter() - started, "end": time.time()}


def fit_threads() -> int:
    """Size this Ray worker's thread pools to its CPU share (OpenCV's and torch's default to every core
    of the node: 16 workers x 16 threads on a 16-core node fight over the cores).  Ray itself sets
    ``OMP_NUM_THREADS`` (OpenMP/BLAS) for a worker; OpenCV and torch need telling."""
    import sys

    import cv2
    import ray

    n = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0) + 0.5))
    if cv2.getNumThreads() != n:
        cv2.setNumThreads(n)
    if "torch" in sys.modules and sys.modules["torch"].get_num_threads() != n:
        sys.modules["torch"].set_num_threads(n)
    return n


def feed_unit(row: dict) -> dict:
    """Pass a unit on unchanged: this stage turns the plan's blocks of many units into one block per unit,
    so that prepare runs one unit per task and can be held back unit by unit (flow.py)."""
    return row


def prepare_unit(row: dict, root: str, compose_cfg: ComposeConfig) -> dict:
    fit_threads()
    t0 = time.perf_counter()
    unit = pickle.loads(row["payload"]) if "payload" in row else Unit(row["unit"], list(row["rows"]))
    unit = prepare(unit, root, compose_cfg)
    _where("prepare", unit, t0)
    return {"unit": row["unit"], "payload": pickle.dumps(unit, protocol=5)}


class GeneratorActor:
    """Holds one generator (one model) per actor; runs it over whole units."""

    def __init__(self, gen_cfg: GeneratorConfig, quality_cfg=None):
        import threading

        fit_threads()
        self.lock = threading.Lock()  # one batch on the model at a time; host work of another unit overlaps
        self.cfg = gen_cfg
        self.quality = quality_cfg
        self.gen, self.batch_size, self.scorer = setup_generator(gen_cfg, quality_cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for p in batch["payload"]:
            t0 = time.perf_counter()
            unit = generate(pickle.loads(p), self.gen, self.batch_size, self.quality, self.scorer, self.lock)
            _where("generate", unit, t0)
            payloads.append(pickle.dumps(unit, protocol=5))
        return {"unit": batch["unit"], "payload": np.array(payloads, dtype=object)}


def _compose_commit(row: dict, out: str, compose_cfg: ComposeConfig, writer: str | None = None) -> dict:
    fit_threads()
    t0 = time.perf_counter()
    unit = compose(pickle.loads(row["payload"]), compose_cfg)
    marker = commit_unit(out, unit.name, unit.out, unit.failures, writer=writer)
    _where("commit", unit, t0)  # compose + the writes + the marker
    # the whole marker travels back: the driver's ledger learns the commit without reading it
    return {"unit": unit.name, "marker": json.dumps(marker), "placement": pickle.dumps(unit.placement)}


#: the feed stage's CPU share (flow.py holds it back; it only re-blocks rows)
FEED_CPUS = 0.01

#: most units per input block: the driver ships the plan in a few Arrow blocks (not one Python
#: object per unit, ~34 KB of driver memory per block), and the feed re-emits each unit as its own
#: block (``target_max_block_size``) so prepare runs one unit per task
UNITS_PER_BLOCK = 64


def input_dataset(units, parallelism: int = 8):
    """The job's input: ``PendingUnits`` as Arrow blocks of up to UNITS_PER_BLOCK units (at least
    ``parallelism`` blocks while there are units enough), or a list of (name, rows) as one pickled
    unit per block (small jobs, tests)."""
    import ray.data

    if isinstance(units, PendingUnits):
        per = max(1, min(UNITS_PER_BLOCK, -(-len(units) // parallelism)))
        return ray.data.from_arrow(list(units.blocks(per)))
    items = [{"unit": name, "payload": pickle.dumps(Unit(name, rows), protocol=5)} for name, rows in units]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items)))


def build_dataset(units, root: str, out: str, cfg: Config, writer: str | None = None):
    """The lazy Ray Dataset for ``units``; iterating it runs the job and yields one summary per unit."""
    from ray.data import ActorPoolStrategy

    g = cfg.generator
    ds = input_dataset(units)
    # a tiny CPU share: the feed never holds a core, and differs from prepare's resources so the two stay apart
    ds = ds.map(feed_unit, num_cpus=FEED_CPUS)
    # prepare stays in CPU tasks whatever the resources: Ray Data fuses a task map into the next actor
    # map when their remote args are equal, and then the GPU actor would decode and crop between batches;
    # ``max_calls`` applies to task workers only (0: Ray's default, unlimited), so an actor never has it
    # and the two operators' args never match
    ds = ds.map(prepare_unit, fn_kwargs={"root": root, "compose_cfg": cfg.compose}, num_cpus=cfg.run.num_cpus,
                max_calls=0)
    ds = ds.map_batches(
        GeneratorActor, fn_constructor_kwargs={"gen_cfg": g, "quality_cfg": cfg.quality}, batch_size=1, batch_format="numpy",
        # a GPU actor takes two units at once, in two threads: while one unit's batch holds the model
        # (the actor's lock), the other's host work runs, so the GPU does not wait between batches
        compute=ActorPoolStrategy(min_size=g.min_actors, max_size=max(g.min_actors, g.max_actors),
                                  **({"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True}
                                     if g.num_gpus else {})),
        num_gpus=g.num_gpus or None, num_cpus=g.num_cpus, resources=g.resources or None)
    ds = ds.map(_compose_commit, fn_kwargs={"out": out, "compose_cfg": cfg.compose, "writer": writer},
                num_cpus=cfg.run.num_cpus)
    return ds


def _iter_rows(ds):
    """Iterate the dataset; an actor that failed to build its generator becomes one GeneratorError line."""
    import re

    try:
        yield from ds.iter_rows()
    except Exception as e:  # noqa: BLE001 - Ray wraps the actor's exception in its own types
        m = re.search(r"GeneratorError: (.+)", str(e))
        if m:
            raise GeneratorError(m.group(1).strip()) from None
        raise


def configure_context(cfg: Config) -> None:
    """Ray Data settings of this job (the benchmark applies the same ones)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(cfg.run.progress)
    ctx.print_on_execution_start = False
    # every operator's output block holds one unit: a block of prepared units would wait for its
    # last unit before the generator sees its first (units arrive in blocks of many: input_dataset)
    ctx.target_max_block_size = 1
    # Ray Data reserves half of the resources per operator by default; on small machines that
    # idles cores between our three short stages (measured: scripts/bench_pipeline.py).
    ctx.op_resource_reservation_enabled = bool(cfg.run.op_reservation)
    # bound the data in flight (object store), so memory stays flat however large the plan is: Ray's
    # reservation enforces it when on; otherwise our policy does, holding prepare back (flow.py)
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=cfg.run.inflight_mb * 2**20)
    from instsynth.synth.executors.flow import configure_flow, remove_flow  # deferred: Ray Data internals

    if cfg.run.op_reservation:
        remove_flow(ctx)
    else:
        configure_flow(ctx, cfg.run.inflight_mb * 2**20, cfg.run.num_cpus, feed_unit, prepare_unit)


def run_ray(units, root, out, cfg: Config, log=print, writer: str | None = None, on_commit=None) -> dict:
    """Run ``units`` on Ray Data; commits happen in the workers, the driver sees only their markers.
    Nothing to run: no Ray is started at all."""
    if not units:
        return {"executor": "ray", "address": cfg.run.address or "local", "hosts": {}, "nodes": {}}
    import ray

    started_here = init_ray(cfg.run.address, cfg.run.log_level)
    try:
        configure_context(cfg)
        hosts: dict = {}
        progress = Progress(len(units), log, bool(cfg.run.progress))
        ds = build_dataset(units, root, out, cfg, writer)
        for r in _iter_rows(ds):
            placement = pickle.loads(r["placement"])
            for stage, where in placement.items():
                hosts.setdefault(stage, set()).add((where["host"], where["node"]))
            marker = json.loads(r["marker"])
            if on_commit is not None:
                on_commit(marker, placement)
            progress(marker)
        return {"executor": "ray", "address": cfg.run.address or "local",
                "hosts": {s: sorted(f"{h} {nid}" for h, nid in v) for s, v in hosts.items()},
                "nodes": {n["NodeID"]: {"host": n.get("NodeManagerHostname", ""),
                                        "resources": sorted(n.get("Resources", {}))}
                          for n in ray.nodes() if n.get("Alive")}}
    finally:
        if started_here:
            ray.shutdown()
