"""neurotrain's exceptions.

Every error a user can cause (a bad config, a missing or corrupt file, a wrong
shape) is a :class:`NeurotrainError`. The CLI prints its message as one line and
exits non-zero, without a traceback. The message names the file, the field and
what was expected versus what was found.
"""

from __future__ import annotations

from pathlib import Path


class NeurotrainError(Exception):
    """Base class of all errors neurotrain raises on purpose."""

    exit_code: int = 1


class ConfigError(NeurotrainError):
    """A config file is missing, unreadable or fails validation."""

    exit_code = 2


class UnknownNameError(NeurotrainError):
    """A registry lookup for a name nobody registered."""

    exit_code = 2


class DataError(NeurotrainError):
    """An input data file is missing, corrupt or has the wrong layout."""


class CheckpointError(NeurotrainError):
    """A checkpoint is missing, corrupt, or was written by something else."""


class NotAvailableError(NeurotrainError):
    """A command that the chosen task does not offer (yet)."""

    exit_code = 3


def file_error(cls: type[NeurotrainError], path: str | Path, message: str) -> NeurotrainError:
    """Build ``cls`` with the conventional ``<file>: <message>`` one-liner."""
    return cls(f"{path}: {message}")
