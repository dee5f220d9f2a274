"""Atomic file writes: write to a temporary name in the same folder, then rename.

A crash or an exception while writing never leaves a half-written file under the final
name, and never damages a good file that was there before: the final name is only ever
replaced by :func:`os.replace`, which is atomic on POSIX and Windows when source and
target lie on the same file system (hence the temporary file lives in the same folder).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name_for(path: str | Path) -> Path:
    """A fresh hidden temporary path next to ``path`` that keeps its suffix.

    ``out/spectra.h5`` -> ``out/.spectra.tmp-<pid>-<random>.h5``. Keeping the suffix lets
    writers that choose a format from the extension (h5py, tifffile, onnx) work on it.
    """
    path = Path(path)
    suffix = path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it onto ``path``.

    Parent folders of ``path`` are created. If the block raises, the temporary file is
    removed (if it was created) and ``path`` is left exactly as it was. If the block
    finishes without creating the temporary file, nothing is renamed.

    Example::

        with atomic_path("out/model.onnx") as tmp:
            torch.onnx.export(model, args, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name_for(path)
    try:
        yield tmp
    except BaseException:
        _remove_quietly(tmp)
        raise
    if tmp.exists():
        os.replace(tmp, path)


def _remove_quietly(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def missing_dirs(dirs: Iterable[Path]) -> list[Path]:
    """Every folder on the way to each of ``dirs`` that does not exist yet, deepest first: what a run is
    about to create, so that a failed run can remove what it made (:func:`remove_empty_dirs`)."""
    out: set[Path] = set()
    for d in dirs:
        d = Path(d).absolute()
        while not d.exists() and d != d.parent:
            out.add(d)
            d = d.parent
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove those of ``dirs`` (deepest first) that are still empty; others (an earlier input's finished
    output) stay."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            pass
