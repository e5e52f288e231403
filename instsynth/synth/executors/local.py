"""The plain single-process loop over the stage functions (debugging; the benchmarks' baseline)."""

from __future__ import annotations

import socket

from instsynth.output.commits import commit_unit
from instsynth.synth.executors.progress import Progress
from instsynth.synth.stages import Unit, compose, generate, prepare, setup_generator


def run_local(units, root, out, cfg, log, writer: str | None = None, on_commit=None) -> dict:
    gen, batch_size, scorer = setup_generator(cfg.generator, cfg.quality)
    progress = Progress(len(units), log, bool(cfg.run.progress))
    host = socket.gethostname()
    for name, rows in units:
        u = prepare(Unit(name, rows), root, cfg.compose)
        u = compose(generate(u, gen, batch_size, cfg.quality, scorer), cfg.compose)
        marker = commit_unit(out, u.name, u.out, u.failures, writer=writer)
        if on_commit is not None:
            on_commit(marker, {s: {"host": host, "node": ""} for s in ("prepare", "generate", "commit")})
        progress(marker)
    return {"executor": "local", "hosts": {s: [host] for s in ("prepare", "generate", "compose", "commit")}}
