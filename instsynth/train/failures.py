"""Which failed worker groups Ray Train retries: lost workers yes, bad input no.

Why: ``FailureConfig(max_failures)`` makes a lost worker or node cost one restart from the last
checkpoint instead of a run, but Ray Train 2.60's default policy retries *every* worker error, so a bad
config value or an unreadable dir met inside a worker would run ``max_failures + 1`` times, each time
loading the model and data, before the user saw its one line.  ``Trainer`` is ``TorchTrainer`` with a
policy that ends the run at once on an input error (``ConfigError``, ``DataError``, ``WeightsError``,
``StorageError``) and leaves every other failure - a killed process, a lost node, OOM, NCCL - to the
default policy and its count.  The policy is handed over through ``_initialize_and_run_controller``,
the one place Ray Train 2.60 builds its controller; a Ray upgrade that renames it only brings the
retries of input errors back.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

from instsynth.config import ConfigError
from instsynth.datasets import DataError
from instsynth.io import storage
from instsynth.train.models.backbones import WeightsError

INPUT_ERRORS = (ConfigError, DataError, WeightsError, storage.StorageError)


def input_error(error: BaseException) -> BaseException | None:
    """The first input error among a failed worker group's errors (None: a failure worth a retry)."""
    for e in (getattr(error, "worker_failures", None) or {}).values():
        if isinstance(e, INPUT_ERRORS):
            return e
    return None


class _NoInputTracebacks:
    """A logging filter for Ray Train's "Error in training function" record: an input error's traceback is
    no news (the driver prints its one line); every other error's stays."""

    names = tuple(f"{e.__module__}.{e.__qualname__}:" for e in INPUT_ERRORS)

    def filter(self, record) -> bool:
        lines = record.getMessage().rstrip().splitlines()
        return not (lines and lines[0].startswith("Error in training function") and lines[-1].startswith(self.names))


def quiet_input_errors() -> None:
    """In a worker: keep input errors' tracebacks off the console (Ray Train 2.60 logs every error of the
    training function at ERROR on this internal logger; a Ray upgrade that moves it only brings them back)."""
    import logging

    log = logging.getLogger("ray.train.v2._internal.util")
    if not any(isinstance(f, _NoInputTracebacks) for f in log.filters):
        log.addFilter(_NoInputTracebacks())


class InputErrorsEndTheRun(DefaultFailurePolicy):
    """The default policy (counts, limits, preemptions), except that input errors are never retried."""

    def _is_retryable_error(self, training_failed_error) -> bool:
        if input_error(training_failed_error) is not None:
            return False
        return super()._is_retryable_error(training_failed_error)


class Trainer(TorchTrainer):
    """``TorchTrainer`` whose controller gets ``InputErrorsEndTheRun``."""

    def _initialize_and_run_controller(self, **kwargs):
        kwargs["failure_policy"] = InputErrorsEndTheRun(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**kwargs)
