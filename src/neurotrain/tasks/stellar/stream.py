"""Batched, parallel reading for the streaming ``predict`` pipeline: files -> stacked batches, in input order.

Reading millions of small FITS files is limited by the process that collects them, not by the readers: with
one ``Spectrum`` object per file, the parent unpickles ~67 kB and a dict per file from a pipe and then stacks
the rows again (~90-150 us per file of the parent's time on the shared CPU here, which capped "reading alone"
at ~6,500 files/s on the H200's 16 cores). Here the work moves to the readers:

* with processes (``read.processes``), the readers are forked with an anonymous shared buffer
  (``mmap``, :data:`SHARED_WIDTH` pixels x ``batch_size`` rows x ``prefetch_batches + 1`` slots). A reader
  task reads ``files_per_task`` files and writes each spectrum straight into its rows, already padded
  (wavelength float64, flux, ivar; no mask is sent, since after
  :func:`~neurotrain.tasks.stellar.io.read_spectrum` ``mask == (ivar == 0)`` exactly); only names and
  header values travel through the pipe, so the parent's share is ~15-40 us per file and a batch's arrays
  are views of the buffer (no copy) until they are moved to the device;
* with threads, or where ``fork`` is missing, a task returns its spectra already stacked
  (:class:`SpectraBatch`, wavelength as float32 when that is exact, as LAMOST's float32 column is).

:func:`iter_batches` keeps at most ``prefetch_batches`` batches in flight (memory stays flat however many
files there are) and yields one batch per ``batch_size`` consecutive input paths, so that the rows of the
labels table come out in input order whatever order the readers finish in. Every batch equals
:func:`~neurotrain.tasks.stellar.io.stack_spectra` of its spectra bit for bit (the tests check it).
"""

from __future__ import annotations

import atexit
import mmap
import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
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
    #: (wave, flux, ivar), each (B, SHARED_WIDTH) contiguous rows of the shared buffer that the arrays are
    #: column views of (None: the batch owns its arrays)
    full: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    #: set by a reader process that wrote its arrays into the shared buffer: (first row, pixels)
    shared_at: tuple[int, int] | None = None
    #: (B,) pixels of each spectrum before padding (None: every row is full)
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def to_raw(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The raw batch dict of the stellar contract (as ``io.stack_spectra``) on ``device``: ``wave`` float64,
        ``flux``/``ivar`` float32, ``mask`` bool, ``z`` float64 (0 where the file has none)."""
        dev = torch.device(device)
        z = torch.from_numpy(np.nan_to_num(self.z, nan=0.0)).to(dev)
        if self.full is not None:
            # contiguous copies of the shared rows (a view cannot outlive the next batch), columns cut after
            n = self.flux.shape[1]
            wave, flux, ivar = ((torch.from_numpy(a).clone() if dev.type == "cpu" else torch.from_numpy(a).to(dev))
                                [:, :n].contiguous() for a in self.full)
            return {"wave": wave, "flux": flux, "ivar": ivar, "mask": ivar == 0, "z": z}
        wave = torch.from_numpy(self.wave).to(dev).double()
        ivar = torch.from_numpy(self.ivar).to(dev)
        return {"wave": wave, "flux": torch.from_numpy(self.flux).to(dev), "ivar": ivar, "mask": ivar == 0, "z": z}

    def copy(self) -> SpectraBatch:
        """The batch with arrays of its own (a batch from shared reading is only valid until the next one)."""
        return SpectraBatch(self.ids, self.files, self.wave.copy(), self.flux.copy(), self.ivar.copy(),
                            self.z.copy(), self.meta, self.skipped, lengths=self.row_lengths())

    def row_lengths(self) -> np.ndarray:
        """(B,) pixels of each spectrum before padding."""
        return self.lengths if self.lengths is not None else np.full(len(self), self.flux.shape[1], np.int64)

    def without_arrays(self) -> SpectraBatch:
        """The same batch without its pixel arrays (what a table row needs; frees the memory early)."""
        e = np.zeros((len(self), 0), np.float32)
        return SpectraBatch(self.ids, self.files, e, e, e, self.z, self.meta, self.skipped, lengths=self.lengths)

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
            lengths=np.concatenate([p.row_lengths() for p in full]),
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
    """``p`` widened to ``n`` pixels, every row's wavelength continued from its own last real pixel (so that the
    values equal ``stack_spectra``'s padding of the whole batch)."""
    b, k = p.flux.shape
    lengths = p.row_lengths()
    wave = np.empty((b, n), np.float64)
    wave[:, :k] = p.wave
    for i in range(b):  # one row per spectrum, only when tasks of one batch differ in width
        wave[i, lengths[i]:] = _extend_wave(wave[i], int(lengths[i]), n)
    flux = np.full((b, n), np.nan, np.float32)
    flux[:, :k] = p.flux
    ivar = np.zeros((b, n), np.float32)
    ivar[:, :k] = p.ivar
    return SpectraBatch(p.ids, p.files, wave, flux, ivar, p.z, p.meta, p.skipped, lengths=lengths)


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
                        [s.meta for s in spectra], list(skipped or []),
                        lengths=np.array([len(s) for s in spectra], np.int64))


def _read_each(paths: Sequence[str | Path], cfg: ReadSection) -> tuple[list[Spectrum], list[tuple[Path, str]]]:
    """Read each file: the spectra read, and (file, reason) for each unreadable one (a counted skip)."""
    good: list[Spectrum] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        r = _try_read(Path(p), cfg)
        if isinstance(r, Spectrum):
            good.append(r)
        else:
            skipped.append((Path(p), r))
    return good, skipped


def read_batch(paths: Sequence[str | Path], cfg: ReadSection) -> SpectraBatch:
    """Read ``paths`` (one reader task) and stack the good ones; unreadable files become counted skips."""
    good, skipped = _read_each(paths, cfg)
    return stack(good, skipped)


def files_per_task(batch_size: int, workers: int) -> int:
    """Files per reader task: a batch split evenly over the readers, at most :data:`FILES_PER_TASK_MAX`."""
    return max(1, min(FILES_PER_TASK_MAX, -(-batch_size // max(1, workers))))


# ---------------------------------------------------------------- shared buffer between reader processes
#: pixels per row of the shared buffer: LAMOST low-resolution spectra have 3,902-3,909; a task with a longer
#: spectrum sends its arrays through the pipe instead
SHARED_WIDTH = 4096
#: bytes per pixel in the shared buffer: wavelength float64 (padding continues it exactly), flux, ivar float32
_PIXEL_BYTES = 8 + 4 + 4
#: the largest shared buffer (all batch slots) that is allocated; a larger batch reads through the pipe
SHARED_MAX_BYTES = 2 << 30
_ARENA: mmap.mmap | None = None  # anonymous MAP_SHARED memory, inherited by the forked readers
_SHARED: dict[str, Any] = {}


def _slot_views(arena: mmap.mmap, slot: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """wavelength (float64), flux, ivar (float32) views, each (rows, SHARED_WIDTH), of one batch slot."""
    px = rows * SHARED_WIDTH
    base = slot * px * _PIXEL_BYTES
    wave = np.frombuffer(arena, np.float64, count=px, offset=base).reshape(rows, SHARED_WIDTH)
    flux = np.frombuffer(arena, np.float32, count=px, offset=base + 8 * px).reshape(rows, SHARED_WIDTH)
    ivar = np.frombuffer(arena, np.float32, count=px, offset=base + 12 * px).reshape(rows, SHARED_WIDTH)
    return wave, flux, ivar


def read_batch_shared(paths: Sequence[str | Path], cfg: ReadSection, slot: int, rows: int, row0: int) -> SpectraBatch:
    """Read ``paths`` in a reader process and write each spectrum into rows ``row0...`` of batch slot ``slot``
    of the shared buffer, padded to the full row as :func:`stack` pads (flux NaN, ivar 0, the wavelength
    continued with its last log step, so that any first ``n`` columns equal ``stack``'s padding to ``n``).
    Returns only names, header values and skips, with ``shared_at = (row0, longest spectrum)``; a task with a
    spectrum longer than :data:`SHARED_WIDTH` returns its stacked arrays instead."""
    good, skipped = _read_each(paths, cfg)
    if _ARENA is None or not good or max(len(s) for s in good) > SHARED_WIDTH:
        return stack(good, skipped)
    wave, flux, ivar = _slot_views(_ARENA, slot, rows)
    for i, sp in enumerate(good, start=row0):  # one row copy per spectrum, no per-pixel work
        k = len(sp)
        wave[i, :k] = sp.wavelength
        wave[i, k:] = _extend_wave(sp.wavelength, k, SHARED_WIDTH)
        flux[i, :k] = sp.flux
        flux[i, k:] = np.nan
        ivar[i, :k] = sp.ivar
        ivar[i, k:] = 0
    out = stack([], skipped)
    out.ids, out.files, out.meta = [s.id for s in good], [str(s.path) for s in good], [s.meta for s in good]
    out.z = np.array([np.nan if s.z is None else s.z for s in good], np.float64)
    out.lengths = np.array([len(s) for s in good], np.int64)
    out.shared_at = (row0, int(out.lengths.max()))
    return out


def _shared_pool(workers: int, nbytes: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` forked reader processes that share a buffer of at least ``nbytes`` with this one
    (kept between calls; replaced when a call needs more). None where ``fork`` is not available."""
    global _ARENA
    if "fork" not in multiprocessing.get_all_start_methods() or nbytes > SHARED_MAX_BYTES:
        return None
    if _SHARED.get("workers") == workers and _SHARED.get("nbytes", 0) >= nbytes:
        return _SHARED["pool"]
    if "pool" in _SHARED:
        _SHARED.pop("pool").shutdown(wait=True, cancel_futures=True)
    _ARENA = mmap.mmap(-1, nbytes)  # before the fork, so that every reader maps the same pages
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    list(pool.map(_noop, range(workers)))  # fork the readers now, while _ARENA is this buffer
    _SHARED.update(workers=workers, nbytes=nbytes, pool=pool)
    atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


def _noop(_: int) -> None:
    return None


def _assemble(parts: list[SpectraBatch], slot: int, rows: int) -> SpectraBatch:
    """One batch from its tasks' results: column views of the shared slot when every task wrote there (the
    common case; rows gathered when a task skipped files), else the tasks' arrays concatenated."""
    full = [p for p in parts if len(p)]
    skipped = [s for p in parts for s in p.skipped]
    if not full:
        return SpectraBatch.empty(skipped)
    assert _ARENA is not None
    views = _slot_views(_ARENA, slot, rows)
    if any(p.shared_at is None for p in full):  # a very long spectrum came by pipe: copy the others out
        for p in full:
            if p.shared_at is not None:
                r0, n = p.shared_at
                p.wave, p.flux, p.ivar = (v[r0:r0 + len(p), :n].copy() for v in views)
        return SpectraBatch.concat(parts)
    n = max(p.shared_at[1] for p in full)  # type: ignore[index]
    starts = [p.shared_at[0] for p in full]  # type: ignore[index]
    total = sum(len(p) for p in full)
    if starts == list(np.cumsum([0] + [len(p) for p in full[:-1]])):
        block = tuple(v[:total] for v in views)  # contiguous rows: no copy
    else:  # a task had unreadable files: its rows end early; gather the written rows
        idx = np.concatenate([np.arange(s, s + len(p)) for s, p in zip(starts, full)])
        block = tuple(v[idx] for v in views)
    return SpectraBatch(
        ids=[i for p in full for i in p.ids], files=[f for p in full for f in p.files],
        wave=block[0][:, :n], flux=block[1][:, :n], ivar=block[2][:, :n], z=np.concatenate([p.z for p in full]),
        meta=[m for p in full for m in p.meta], skipped=skipped, full=block,  # type: ignore[arg-type]
        lengths=np.concatenate([p.row_lengths() for p in full]),
    )


def iter_batches(
    paths: Sequence[str | Path], cfg: ReadSection, workers: int, batch_size: int, *,
    per_task: int | None = None, prefetch_batches: int = 2,
) -> Iterator[SpectraBatch]:
    """Read ``paths`` with ``workers`` readers (processes when ``cfg.processes``, else threads) and yield one
    :class:`SpectraBatch` per ``batch_size`` consecutive paths, in input order, while the readers already work
    on the next ``prefetch_batches`` batches (memory stays flat).

    With processes the readers write the pixels into a buffer shared with this process, and a yielded batch's
    arrays are views into it: they stay valid until the next batch is asked for (``to_raw`` copies them; keep a
    batch with :meth:`SpectraBatch.copy`)."""
    paths = [Path(p) for p in paths]
    per = per_task or files_per_task(batch_size, workers)
    # tasks never straddle two output batches: batch k is paths[k*B:(k+1)*B] cut into tasks of ``per``
    tasks: list[tuple[int, int, list[Path]]] = []
    for k, s in enumerate(range(0, len(paths), batch_size)):
        chunk = paths[s:s + batch_size]
        tasks += [(k, i, chunk[i:i + per]) for i in range(0, len(chunk), per)]
    slots = prefetch_batches + 1  # batch k is held by the caller while k+1 ... k+prefetch are being read
    with ExitStack() as stack_:
        ex: Executor
        shared = None
        if cfg.processes and workers > 1 and len(paths) > 1:
            shared = _shared_pool(workers, slots * batch_size * SHARED_WIDTH * _PIXEL_BYTES)
            ex = shared or _process_pool(workers)
        else:
            ex = stack_.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        pending: deque[tuple[int, Future[SpectraBatch]]] = deque()
        nxt = 0
        try:
            parts: list[SpectraBatch] = []
            current = 0
            while nxt < len(tasks) or pending:
                while nxt < len(tasks) and tasks[nxt][0] < current + slots:
                    k, row0, chunk = tasks[nxt]
                    fut = (ex.submit(read_batch_shared, chunk, cfg, k % slots, batch_size, row0) if shared
                           else ex.submit(read_batch, chunk, cfg))
                    pending.append((k, fut))
                    nxt += 1
                k, fut = pending[0]
                if k != current:
                    yield _assemble(parts, current % slots, batch_size) if shared else SpectraBatch.concat(parts)
                    parts, current = [], k
                    continue  # the caller is done with the previous batch: its slot may be refilled
                pending.popleft()
                parts.append(fut.result())
            if parts:
                yield _assemble(parts, current % slots, batch_size) if shared else SpectraBatch.concat(parts)
        finally:
            for _, fut in pending:  # the consumer stopped early (an error): drop what was not started
                fut.cancel()
            if shared:  # and let the started ones finish, so that none writes into a slot the next call uses
                wait([f for _, f in pending if not f.cancelled()])
