"""Batched parallel reading (``stream.py``): input order, counted skips, the same arrays as ``read_many`` +
``stack_spectra`` with threads and with processes, bounded batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.tasks.stellar import io, stream
from neurotrain.tasks.stellar.config import ReadSection

from .conftest import make_arrays


@pytest.fixture
def files(tmp_path: Path, new_fits, old_fits) -> list[Path]:
    """Nine files in name order, three of them unusable (junk, truncated, no Z) and one older layout."""
    paths = [new_fits(f"f{i}.fits", seed=i, obsid=100 + i) for i in range(6)]
    paths.append(old_fits("f6.fits", seed=6))
    (tmp_path / "f2b.fits").write_text("junk")
    data = paths[0].read_bytes()
    (tmp_path / "f4b.fits").write_bytes(data[: len(data) // 3])
    new_fits("f5b.fits", z=None)
    return io.find_spectra([tmp_path], ["*.fits"])


@pytest.mark.parametrize("processes", [False, True])
def test_batches_keep_input_order_and_equal_read_many(files: list[Path], processes: bool) -> None:
    cfg = ReadSection(processes=processes)
    batches, shared = [], []
    for b in stream.iter_batches(files, cfg, workers=2, batch_size=4, per_task=3):
        shared.append(b.full is not None)
        batches.append(b.copy() if processes else b)  # a shared batch is only valid until the next one
    # one batch per 4 input paths, tasks of 3 never straddle two batches
    assert len(batches) == 3
    good, skipped = io.read_many(files, ReadSection(), workers=1)
    assert [i for b in batches for i in b.ids] == [s.id for s in good] == ["f0", "f1", "f2", "f3", "f4", "f5", "f6"]
    assert [p for b in batches for p, _ in b.skipped] == [p for p, _ in skipped]
    assert {p.name for p, _ in skipped} == {"f2b.fits", "f4b.fits", "f5b.fits"}
    assert any("Z:" in r for b in batches for _, r in b.skipped)
    whole = stream.SpectraBatch.concat(batches)
    want = io.stack_spectra(good)
    got = whole.to_raw()
    for k in ("wave", "flux", "ivar", "mask", "z"):
        assert got[k].dtype == want[k].dtype, k
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)
    # threads: the files' float32 WAVELENGTH travels as float32, exactly; processes: float64 rows of the shared
    # buffer, padded by the reader so that spectra of different lengths need no copy
    assert whole.wave.dtype == (np.float64 if processes else np.float32)
    assert shared == [processes] * 3
    assert [m["OBSID"] for m in whole.meta[:2]] == [100, 101]


def test_batch_is_compact_to_send(files: list[Path]) -> None:
    """A reader task returns stacked arrays: ~3 float32 values per pixel, not per-file objects."""
    b = stream.read_batch(files[:4], ReadSection())
    per_file = len(pickle.dumps(b, protocol=5)) / len(b)
    assert per_file < 3909 * 4 * 3 * 1.05
    assert len(b.skipped) == 1


def test_mixed_lengths_and_float64_wavelengths_are_padded(tmp_path: Path, new_fits) -> None:
    a = make_arrays(n=3000)
    short = new_fits("a.fits", arrays=a)
    full = new_fits("b.fits", with_wavelength=False)  # wavelength from COEFF0/1: float64
    parts = [stream.read_batch([short], ReadSection()), stream.read_batch([full], ReadSection())]
    assert parts[0].wave.dtype == np.float32 and parts[1].wave.dtype == np.float64
    both = stream.SpectraBatch.concat(parts)
    want = io.stack_spectra([io.read_spectrum(short), io.read_spectrum(full)])
    got = both.to_raw()
    for k in ("wave", "flux", "ivar", "mask", "z"):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)
    assert bool(got["mask"][0, 3000:].all()) and bool((got["wave"][0].diff() > 0).all())


def test_nothing_readable_gives_empty_batches_with_skips(tmp_path: Path) -> None:
    bad = [tmp_path / f"{i}.fits" for i in range(3)]
    for p in bad:
        p.write_text("junk")
    batches = list(stream.iter_batches(bad, ReadSection(), workers=2, batch_size=2))
    assert [len(b) for b in batches] == [0, 0]
    assert [p for b in batches for p, _ in b.skipped] == bad


def test_files_per_task() -> None:
    assert stream.files_per_task(1024, 16) == 64
    assert stream.files_per_task(100, 16) == 7
    assert stream.files_per_task(8192, 4) == stream.FILES_PER_TASK_MAX
    assert stream.files_per_task(1, 8) == 1


def test_processes_share_pixels_and_fall_back_for_odd_files(tmp_path: Path, files: list[Path], new_fits) -> None:
    """Reader processes write into a shared buffer (the batch's arrays are views of it until the next batch);
    a task with a spectrum wider than the buffer's rows sends its arrays instead; the result is the same."""
    cfg = ReadSection(processes=True)
    it = stream.iter_batches(files, cfg, workers=2, batch_size=2, per_task=2)  # 5 batches, 3 slots: reused
    first = next(it)
    assert first.full is not None  # shared rows, no per-file transfer
    kept = first.copy()
    rest = list(it)
    good, _ = io.read_many(files, ReadSection(), workers=1)
    torch.testing.assert_close(kept.to_raw()["flux"], io.stack_spectra(good[: len(kept)])["flux"], equal_nan=True)
    assert [i for b in [kept, *rest] for i in b.ids] == [s.id for s in good]

    # shorter and COEFF-wavelength spectra share the buffer; one wider than SHARED_WIDTH comes by pipe
    odd = [new_fits("o0.fits", seed=1), new_fits("o1.fits", arrays=make_arrays(n=3000)),
           new_fits("o2.fits", with_wavelength=False), new_fits("o3.fits", arrays=make_arrays(n=stream.SHARED_WIDTH + 9))]
    got = stream.SpectraBatch.concat([b.copy() for b in stream.iter_batches(odd, cfg, workers=2, batch_size=4,
                                                                          per_task=1)]).to_raw()
    want = io.stack_spectra([io.read_spectrum(p) for p in odd])
    for k in ("wave", "flux", "ivar", "mask", "z"):
        assert got[k].dtype == want[k].dtype, k
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)


def test_stopping_early_then_reading_again(files: list[Path]) -> None:
    """A consumer that stops after one batch (an error downstream) leaves the shared readers clean."""
    cfg = ReadSection(processes=True)
    it = stream.iter_batches(files, cfg, workers=2, batch_size=2, per_task=1)
    next(it)
    it.close()
    again = [b.copy() for b in stream.iter_batches(files, cfg, workers=2, batch_size=2, per_task=1)]
    good, _ = io.read_many(files, ReadSection(), workers=1)
    want = io.stack_spectra(good)
    got = stream.SpectraBatch.concat(again).to_raw()
    torch.testing.assert_close(got["flux"], want["flux"], rtol=0, atol=0, equal_nan=True)


def test_real_spectra_of_different_lengths_share_the_buffer(stellar_realdata: Path) -> None:
    """The 25 real LAMOST DR10 files have 3,902-3,909 pixels: readers pad them in the shared rows exactly as
    ``stack_spectra`` pads a batch."""
    files = sorted(stellar_realdata.glob("*.fits"))
    batches = []
    for b in stream.iter_batches(files, ReadSection(processes=True), workers=2, batch_size=16, per_task=4):
        assert b.full is not None
        batches.append(b.copy())
    first = [io.read_spectrum(f) for f in files[:16]]
    assert len({len(s) for s in first}) > 1
    want = io.stack_spectra(first)
    got = batches[0].to_raw()
    for k in ("wave", "flux", "ivar", "mask", "z"):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)


def test_threads_pad_tasks_of_different_widths_like_one_stack(stellar_realdata: Path) -> None:
    """Tasks whose longest spectra differ (3,909 vs 3,906 pixels) are widened row by row from each spectrum's
    own last pixel (a 3,902-pixel row in the 3,906-wide task too), so the batch equals ``stack_spectra`` of all
    its spectra bit for bit."""
    real = sorted(stellar_realdata.glob("*.fits"))
    files = [real[0], real[1], real[14], real[15]]  # 3909, 3909 | 3906, 3902 in two tasks
    batch = next(stream.iter_batches(files, ReadSection(), workers=2, batch_size=4, per_task=2))
    assert batch.full is None and batch.row_lengths().tolist() == [3909, 3909, 3906, 3902]
    want = io.stack_spectra([io.read_spectrum(f) for f in files])
    got = batch.to_raw()
    for k in ("wave", "flux", "ivar", "mask", "z"):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True)
