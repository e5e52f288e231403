"""The errors a user can cause, in one place: each message is one line naming the file or key and the problem.

Why one module: the CLI prints these as one line (no traceback), the trainer ends a run on them instead of
retrying (``train/failures.py``), and a stage records them as a drop with a reason; every module raises
these rather than its own look-alikes.  The classes stay importable where they were first defined
(``config.ConfigError``, ``datasets.DataError``, ``io.storage.StorageError`` ...).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value (or a command-line flag) that cannot work."""


class DataError(ValueError):
    """Input data that cannot be read or does not fit: a dataset, an output dir, a plan."""


class StorageError(OSError):
    """A path or object that is missing or cannot be written (local disk or object store)."""


class WeightsError(ValueError):
    """A backbone weights file that is missing or does not fit."""


class GeneratorError(ValueError):
    """A generator name, parameter or weights path that cannot work (checked before any model loads)."""


class SynthError(RuntimeError):
    """A synthesis run refused before it writes anything (e.g. its output inside its input)."""


def why(e: BaseException) -> str:
    """The reason an OS or library error gives, in a few words (the part after the path in a one-line error)."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return str(e).splitlines()[0] if str(e) else e.__class__.__name__
