"""Batched, parallel reading for the streaming ``predict`` pipeline: files -> stacked batches, in input order.

Reading millions of small FITS files is limited by the process that collects them, not by the readers: with
one ``Spectrum`` object per file, the parent unpickles ~67 kB and a dict per file and then stacks the rows again
(~150 us per file on one core, which capped "reading alone" at ~6,500 files/s on 16 cores). Here every
reader task reads ``files_per_task`` files and returns them already stacked (:class:`SpectraBatch`): three
(b, N) arrays (wavelength as float32 when that is exact, which LAMOST's float32 columns are; the mask is not
sent, since after :func:`~neurotrain.tasks.stellar.io.read_spectrum` ``mask == (ivar == 0)`` exactly), so the
parent pays one large copy per task instead of per-file object traffic.

:func:`iter_batches` keeps a bounded number of tasks in flight (memory stays flat however many files there
are) and yields one batch per ``batch_size`` consecutive input paths, so that the rows of the labels table
come out in input order whatever order the readers finish in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.tasks.stellar.config import ReadSection
from neurotrain.tasks.stellar.io import Spectrum, _process_pool, _try_read

#: files one reader task reads at most: large enough that a task's result is one big copy, small enough
#: that 16 readers share a 1,024-file batch evenly
FILES_PER_TASK_MAX = 64


@dataclass
class SpectraBatch:
    """Spectra of consecutive input files, stacked (the rows of files that could not be read are absent).

    ``wave`` (B, N) observed vacuum Angstrom, float32 when every value is exactly a float32, else float64;
    ``flux`` (B, N) float32; ``ivar`` (B, N) float32, 0 where masked or padded (the mask is ``ivar == 0``);
    ``z`` (B,) float64, NaN where the file has no redshift; ``meta`` the header values per spectrum;
    ``skipped`` ``(path, one-line reason)`` of the files of this stretch that could not be used.
    Shorter spectra are padded as in :func:`~neurotrain.tasks.stellar.io.stack_spectra`."""

    ids: list[str]
    files: list[str]
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    z: np.ndarray
    meta: list[dict[str, Any]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to_raw(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The raw batch dict of the stellar contract (as ``io.stack_spectra``) on ``device``: ``wave`` float64,
        ``flux``/``ivar`` float32, ``mask`` bool, ``z`` float64 (0 where the file has none)."""
        dev = torch.device(device)
        wave = torch.from_numpy(self.wave).to(dev, non_blocking=True).double()
        ivar = torch.from_numpy(self.ivar).to(dev, non_blocking=True)
        z = torch.from_numpy(np.nan_to_num(self.z, nan=0.0)).to(dev)
        return {"wave": wave, "flux": torch.from_numpy(self.flux).to(dev, non_blocking=True), "ivar": ivar,
                "mask": ivar == 0, "z": z}

    def without_arrays(self) -> SpectraBatch:
        """The same batch without its pixel arrays (what a table row needs; frees the memory early)."""
        e = np.zeros((len(self), 0), np.float32)
        return SpectraBatch(self.ids, self.files, e, e, e, self.z, self.meta, self.skipped)

    @classmethod
    def concat(cls, parts: Sequence[SpectraBatch]) -> SpectraBatch:
        """One batch of ``parts`` in order (arrays padded to the longest, wavelength dtype widened if needed)."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        skipped = [s for p in parts for s in p.skipped]
        full = [p for p in parts if len(p)]
        if not full:
            return cls.empty(skipped)
        n = max(p.flux.shape[1] for p in full)
        wdt = np.result_type(*[p.wave.dtype for p in full])
        if any(p.flux.shape[1] != n for p in full):
            full = [p if p.flux.shape[1] == n else _pad_to(p, n) for p in full]
            wdt = np.dtype(np.float64)
        return cls(
            ids=[i for p in full for i in p.ids], files=[f for p in full for f in p.files],
            wave=np.concatenate([p.wave for p in full]).astype(wdt, copy=False),
            flux=np.concatenate([p.flux for p in full]), ivar=np.concatenate([p.ivar for p in full]),
            z=np.concatenate([p.z for p in full]), meta=[m for p in full for m in p.meta], skipped=skipped,
        )

    @classmethod
    def empty(cls, skipped: list[tuple[Path, str]] | None = None) -> SpectraBatch:
        return cls([], [], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32),
                   np.zeros((0, 0), np.float32), np.zeros(0), [], list(skipped or []))


def _extend_wave(wave: np.ndarray, k: int, n: int) -> np.ndarray:
    """``wave[:k]`` continued to ``n`` pixels with its last log step (so that it stays increasing)."""
    ratio = wave[k - 1] / wave[k - 2]
    return wave[k - 1] * ratio ** np.arange(1, n - k + 1)


def _pad_to(p: SpectraBatch, n: int) -> SpectraBatch:
    b, k = p.flux.shape
    wave = np.empty((b, n), np.float64)
    wave[:, :k] = p.wave
    for i in range(b):  # one row per spectrum, only in the rare mixed-length case
        wave[i, k:] = _extend_wave(wave[i], k, n)
    flux = np.full((b, n), np.nan, np.float32)
    flux[:, :k] = p.flux
    ivar = np.zeros((b, n), np.float32)
    ivar[:, :k] = p.ivar
    return SpectraBatch(p.ids, p.files, wave, flux, ivar, p.z, p.meta, p.skipped)


def stack(spectra: Sequence[Spectrum], skipped: list[tuple[Path, str]] | None = None) -> SpectraBatch:
    """Spectra -> a :class:`SpectraBatch` (one row copy per spectrum; no per-pixel work)."""
    if not spectra:
        return SpectraBatch.empty(skipped)
    n = max(len(s) for s in spectra)
    b = len(spectra)
    wave = np.empty((b, n), np.float64)
    flux = np.full((b, n), np.nan, np.float32)
    ivar = np.zeros((b, n), np.float32)
    for i, s in enumerate(spectra):
        k = len(s)
        wave[i, :k] = s.wavelength
        if k < n:
            wave[i, k:] = _extend_wave(s.wavelength, k, n)
        flux[i, :k] = s.flux
        ivar[i, :k] = s.ivar  # already 0 wherever s.mask is set
    w32 = wave.astype(np.float32)
    # LAMOST stores WAVELENGTH as float32: sending it as such halves the wavelength bytes and loses nothing
    wave_out = w32 if np.array_equal(w32, wave) else wave
    z = np.array([np.nan if s.z is None else s.z for s in spectra], np.float64)
    return SpectraBatch([s.id for s in spectra], [str(s.path) for s in spectra], wave_out, flux, ivar, z,
                        [s.meta for s in spectra], list(skipped or []))


def read_batch(paths: Sequence[str | Path], cfg: ReadSection) -> SpectraBatch:
    """Read ``paths`` (one reader task) and stack the good ones; unreadable files become counted skips."""
    good: list[Spectrum] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        r = _try_read(Path(p), cfg)
        if isinstance(r, Spectrum):
            good.append(r)
        else:
            skipped.append((Path(p), r))
    return stack(good, skipped)


def files_per_task(batch_size: int, workers: int) -> int:
    """Files per reader task: a batch split evenly over the readers, at most :data:`FILES_PER_TASK_MAX`."""
    return max(1, min(FILES_PER_TASK_MAX, -(-batch_size // max(1, workers))))


def iter_batches(
    paths: Sequence[str | Path], cfg: ReadSection, workers: int, batch_size: int, *,
    per_task: int | None = None, prefetch_batches: int = 2,
) -> Iterator[SpectraBatch]:
    """Read ``paths`` with ``workers`` readers (processes when ``cfg.processes``, else threads) and yield one
    :class:`SpectraBatch` per ``batch_size`` consecutive paths, in input order, while the readers already work
    on the next ``prefetch_batches`` batches (tasks in flight are bounded, so memory stays flat)."""
    paths = [Path(p) for p in paths]
    per = per_task or files_per_task(batch_size, workers)
    # tasks never straddle two output batches: batch k is paths[k*B:(k+1)*B] cut into tasks of ``per``
    tasks: list[tuple[int, list[Path]]] = []
    for k, s in enumerate(range(0, len(paths), batch_size)):
        chunk = paths[s:s + batch_size]
        tasks += [(k, chunk[i:i + per]) for i in range(0, len(chunk), per)]
    tasks_per_batch = -(-batch_size // per)
    limit = max(2 * workers, (prefetch_batches + 1) * tasks_per_batch)
    with ExitStack() as stack_:
        ex: Executor
        if cfg.processes and workers > 1 and len(paths) > 1:
            ex = _process_pool(workers)
        else:
            ex = stack_.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        pending: deque[tuple[int, Future[SpectraBatch]]] = deque()
        nxt = 0
        try:
            parts: list[SpectraBatch] = []
            current = 0
            while nxt < len(tasks) or pending:
                while nxt < len(tasks) and len(pending) < limit:
                    k, chunk = tasks[nxt]
                    pending.append((k, ex.submit(read_batch, chunk, cfg)))
                    nxt += 1
                k, fut = pending.popleft()
                if k != current:
                    yield SpectraBatch.concat(parts)
                    parts, current = [], k
                parts.append(fut.result())
            if parts:
                yield SpectraBatch.concat(parts)
        finally:
            for _, fut in pending:  # the consumer stopped early (an error): drop what was not started
                fut.cancel()
