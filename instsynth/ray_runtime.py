"""Ray start-up shared by the synthesis job and training: join a cluster or start a quiet local Ray.

Why its own module: the executors and the trainer both start Ray the same way (same auth and usage-stats
defaults, the same worker hook that silences Ray's shutdown noise); neither should import the other.
"""

from __future__ import annotations

import os


def init_ray(address: str | None, log_level: str = "WARNING") -> bool:
    """Join ``address`` or start a local Ray; returns True when this call started/joined it.

    A local start disables Ray 2.60's token auth (it would write ``~/.ray/auth_token``) unless the
    user set ``RAY_AUTH_MODE`` themselves, and skips the dashboard.
    """
    import logging

    import ray

    if ray.is_initialized():
        return False
    kw = {"logging_level": getattr(logging, log_level.upper(), logging.WARNING), "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS")  # set for drivers started by `ray job submit`
    if address:
        ray.init(address=address, **kw)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": QUIET_HOOK}, **kw)
    return True


QUIET_HOOK = "instsynth.ray_runtime.quiet_worker_logs"
#: Ray's own loggers whose warnings are noise to a user: Ray Train V2's placement-group cleaner warns
#: "Failed to query Ray Train Controller actor state" 10-27 times per command while the controller it
#: watches shuts down normally at the end of every fit.
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


#: Ray-internal threads whose dying traceback at shutdown is noise: the cleaner's monitor thread raises
#: when the controller it polls is already gone (every local fit ends that way, racily).
NOISY_THREADS = ("PlacementGroupCleanerMonitor",)


def quiet_worker_logs() -> None:
    """Ray worker set-up hook of a local Ray started here: silence ``NOISY_LOGGERS`` below ERROR and the
    tracebacks of ``NOISY_THREADS`` (a cluster's workers log as its operator configured them)."""
    import logging
    import threading

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    previous = threading.excepthook

    def hook(args):
        if args.thread is not None and args.thread.name in NOISY_THREADS:
            return
        previous(args)
    threading.excepthook = hook
