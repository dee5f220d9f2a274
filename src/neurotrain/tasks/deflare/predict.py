"""``neurotrain predict`` for deflare: a user's event files -> deflared event files on disk.

Inputs are HDF5 event files (seed or DSEC layout), Prophesee ``.raw`` recordings (EVT 2.0 /
3.0, decoded to a temporary HDF5 first) or folders of HDF5 files. Every input passes its
header-level checks (:func:`io.inspect_events`, :func:`evt.inspect_raw`) before anything is
written; then each is streamed through :func:`postprocess.process_file`, whose output appears
only when complete. A failure removes the output folders this call created if they are still
empty, and an error about a decoded ``.raw`` file names the ``.raw`` file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.io.atomic import missing_dirs, remove_empty_dirs
from neurotrain.tasks.deflare.evt import inspect_raw, raw_to_h5
from neurotrain.tasks.deflare.h5read import inspect_events, list_h5
from neurotrain.tasks.deflare.postprocess import DebugHook, VoxelFn, process_file


def plan_jobs(cfg: Any, inputs: list[Path] | None, output: Path | None) -> list[tuple[Path, Path]]:
    """``(input, output)`` file pairs of a predict call, after every input's header-level
    checks (nothing is read past the headers, nothing is written): a bad file in a folder
    fails in a second, before the network is built and before the good files are done.

    ``output``: a file (one input file), a directory (same file names, ``.raw`` -> ``.h5``),
    or ``None`` (``<input_dir>output/`` for a directory, ``<stem>_deflared.h5`` beside a
    file); ``paths.input`` / ``paths.output`` of the config when not given.
    """
    from neurotrain.tasks.deflare.task import sibling_dir

    jobs: list[tuple[Path, Path]] = []
    inputs = [Path(p) for p in (inputs or ([cfg.paths.input] if cfg.paths.input else []))]
    if not inputs:
        raise ConfigError("config error: predict needs an input file or directory (or paths.input)")
    output = Path(output) if output is not None else (Path(cfg.paths.output) if cfg.paths.output else None)
    for src in inputs:
        if src.is_dir():
            dst = output if output is not None else sibling_dir(src, "output")
            found = list_h5(src)
            if not found:
                raise DataError(f"{src}: expected a folder of .h5 event files (it has no .h5 file)")
            jobs += [(f, dst / f.name) for f in found]
        elif src.is_file():
            suffix = ".h5" if src.suffix.lower() == ".raw" else src.suffix
            if output is None:
                dst = src.with_name(f"{src.stem}_deflared{suffix}")
            elif output.suffix.lower() in (".h5", ".hdf5") and len(inputs) == 1:
                dst = output
            else:
                dst = output / f"{src.stem}{suffix}"
            jobs.append((src, dst))
        else:
            raise DataError(f"{src}: input file or directory not found")
    for src, dst in jobs:
        if src.resolve() == dst.resolve():
            raise DataError(f"{src}: output would overwrite the input; choose another --output")
        if src.suffix.lower() == ".raw":
            inspect_raw(src)
        elif inspect_events(src).num_events == 0:
            raise DataError(f"{src}: events: expected at least one event (the file holds none; nothing to deflare)")
    return jobs


def predict_files(
    cfg: Any, fn: VoxelFn, inputs: list[Path] | None, output: Path | None, device: torch.device, hook: DebugHook | None = None
) -> list[Path]:
    """Deflare ``inputs`` (see :func:`plan_jobs`) with the voxel function ``fn``; returns the output paths."""
    jobs = plan_jobs(cfg, inputs, output)
    outs: list[Path] = []
    # folders this call creates; a failed input must not leave an empty one behind
    created = missing_dirs(dst.parent for _, dst in jobs)
    try:
        for src, dst in jobs:
            if src.suffix.lower() == ".raw":  # Prophesee EVT 2.0 / 3.0: decode to HDF5 first
                with tempfile.TemporaryDirectory() as tmp:
                    h5 = raw_to_h5(src, Path(tmp) / f"{src.stem}.h5")
                    try:
                        process_file(h5, dst, fn, cfg, device, hook)
                    except DataError as exc:  # name the user's file, not the decoded copy
                        raise DataError(str(exc).replace(str(h5), str(src))) from None
            else:
                process_file(src, dst, fn, cfg, device, hook)
            outs.append(dst)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return outs


