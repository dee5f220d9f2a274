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


class ResourceError(NeurotrainError):
    """The input needs more memory (or disk) than the machine has; raised before the allocation."""


class NotAvailableError(NeurotrainError):
    """A command that the chosen task does not offer (yet)."""

    exit_code = 3


def file_error(cls: type[NeurotrainError], path: str | Path, message: str) -> NeurotrainError:
    """Build ``cls`` with the conventional ``<file>: <message>`` one-liner."""
    return cls(f"{path}: {message}")


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the path first, then what went wrong and what to do.

    Covers the ways a user's paths fail (missing, not writable, a file where a folder is needed, a folder
    where a file is needed, a full or read-only disk); any other ``OSError`` keeps its own text.
    """
    import errno

    hints = {
        errno.ENOENT: "not found",
        errno.EACCES: "permission denied (choose a folder you can write to, or fix the permissions)",
        errno.EPERM: "operation not permitted (choose another path)",
        errno.EEXIST: "exists already (a file where a folder is needed? choose a new name)",
        errno.EISDIR: "is a folder, expected a file",
        errno.ENOTDIR: "a part of this path is a file, not a folder",
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "read-only file system (choose a writable folder)",
        errno.ENAMETOOLONG: "file name too long",
    }
    what = hints.get(exc.errno or -1) or exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    name = exc.filename
    if name is None:
        return f"{type(exc).__name__}: {what}"
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{name}{target}: {what}"
