"""SMLM TIFF movies: a checked, lazy reader (:class:`TiffStack`) and a chunked atomic writer.

A movie is a stack of grayscale frames ``[n_frames, H, W]``. Before any pixel is read, the reader checks
what the file declares against what is there: the pixel data of every frame must lie inside the file
(a truncated file stops with one line, not "failed to read 102400 bytes" mid-run), one frame as float32
must fit the memory the machine has free (a 210-byte file declaring 200000 x 200000 px stops before a
149 GiB allocation), frames are grayscale (no RGB samples) of a real-number type, and the first frame is
finite. Later chunks are checked for NaN/inf as they are read.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from neurotrain.errors import DataError, ResourceError
from neurotrain.io.atomic import atomic_path

FLOAT_BYTES = 4
"""Frames are handed on as float32: the memory a frame needs is H x W x 4 bytes whatever its file type."""
CORRUPT_SIGNS = ("invalid page offset", "failed to reshape", "corrupted", "truncated", "invalid tag", "out of range")
"""Phrases of tifffile's log warnings that mean pages are missing or damaged (it logs them, then goes on
with fewer pages)."""
GiB = float(2**30)
COLOUR_PHOTOMETRIC = (2, 3, 5, 6, 8)
"""TIFF PhotometricInterpretation codes of colour images: RGB, palette, CMYK, YCbCr, CIELab (TIFF 6.0 spec,
tag 262). Planar extra samples of a grayscale page (axes ``SYX``) are read as frames, as cameras write them."""


def available_memory_bytes() -> int | None:
    """Memory the machine can give now (Linux ``MemAvailable``, else free pages); ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect what tifffile logs while it parses a file (it logs damage instead of raising)."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("tifffile")
    handler, propagate = Catch(level=logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield seen
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _data_end(series: Any) -> int:
    """The last byte the series' pixel data needs (contiguous data, else the last parsed page's strips)."""
    if series.dataoffset is not None:
        return int(series.dataoffset) + int(series.nbytes)
    end = 0
    pages = series.pages
    for page in (pages[0], pages[len(pages) - 1]) if len(pages) else ():
        if page is None:
            continue
        offs, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
        if len(offs):
            end = max(end, int(np.max(np.asarray(offs, np.int64) + np.asarray(counts, np.int64))))
    return end


class TiffStack:
    """A TIFF movie as ``[n_frames, H, W]`` float32, read lazily, checked before reading (see module doc).

    Uncompressed contiguous files are memory-mapped (``tifffile.memmap``); others are read page by
    page for the requested frames only, so a movie of any length is processed with flat memory.
    Supports ``len()`` and ``stack[a:b]`` (returns a NumPy array); a chunk with NaN or inf is a
    :class:`DataError` naming the frame.
    """

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"{self.path}: is a folder, expected a TIFF movie")
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        size = self.path.stat().st_size
        if size == 0:
            raise DataError(f"{self.path}: empty file (0 bytes), expected a TIFF movie")
        with _tifffile_warnings() as warnings:
            try:
                self._tif = tifffile.TiffFile(self.path)
                series = self._tif.series[0]
                shape, axes, dtype = tuple(int(d) for d in series.shape), str(series.axes), np.dtype(series.dtype)
            except Exception as exc:  # tifffile raises many types for damaged files
                self._close_quietly()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise DataError(f"{self.path}: not a readable TIFF ({first})") from None
        damage = [w for w in warnings if any(s in w.lower() for s in CORRUPT_SIGNS)]
        try:
            self._check(series, shape, axes, dtype, size, damage)
        except BaseException:
            self._close_quietly()
            raise
        self.height, self.width = int(shape[-2]), int(shape[-1])
        self.n_frames = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        self._float = dtype.kind == "f"
        self._mm: np.ndarray | None = None
        self._pages: Any = None
        try:
            mm = tifffile.memmap(self.path, mode="r")
            self._mm = mm.reshape(self.n_frames, self.height, self.width)
        except Exception:
            self._pages = series.pages if len(series.pages) == self.n_frames else None
            if self._pages is None:
                self._check_memory(self.n_frames * self.height * self.width * FLOAT_BYTES, "the whole movie")
                try:
                    self._all = series.asarray().reshape(self.n_frames, self.height, self.width)
                except Exception as exc:  # damaged strips: tifffile and its codecs raise many types
                    self._close_quietly()
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                    raise DataError(f"{self.path}: cannot read the frames ({first})") from None
        try:
            self[0]  # the first frame: NaN/inf, unreadable strips, before any network is built
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ checks
    def _check(self, series: Any, shape: tuple[int, ...], axes: str, dtype: np.dtype, size: int,
               damage: list[str]) -> None:
        p = self.path
        photometric = int(getattr(self._tif.pages[0], "photometric", 1) or 1)
        if photometric in COLOUR_PHOTOMETRIC or axes.endswith("S"):
            raise DataError(f"{p}: expected a grayscale movie (got colour: photometric {photometric}, axes {axes}, "
                            f"shape {list(shape)}); save the camera frames as single-channel images")
        if len(shape) < 2:
            raise DataError(f"{p}: expected frames of 2D images (got shape {list(shape)})")
        if dtype.kind not in "uif":
            raise DataError(f"{p}: pixel type: expected integers or floats (got {dtype})")
        if any(d == 0 for d in shape):
            raise DataError(f"{p}: no frames (shape {list(shape)})")
        h, w = shape[-2], shape[-1]
        self._check_memory(h * w * FLOAT_BYTES, f"one {h}x{w}-px frame")
        end = _data_end(series)
        compressed = getattr(self._tif.pages[0], "compression", 1) not in (1, None)
        if end > size:
            raise DataError(f"{p}: truncated: the pixel data runs to byte {end} but the file has {size} bytes")
        if damage:
            raise DataError(f"{p}: truncated or damaged: {damage[0]} ({size} bytes)")
        n_frames = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        if not compressed and n_frames * h * w * dtype.itemsize > size:
            raise DataError(f"{p}: truncated: {n_frames} frames of {h}x{w} {dtype} need "
                            f"{n_frames * h * w * dtype.itemsize} bytes but the file has {size}")

    def _check_memory(self, need: int, what: str) -> None:
        free = available_memory_bytes()
        if free is not None and need > free:
            raise ResourceError(f"{self.path}: {what} needs {need / GiB:.1f} GiB as float32, more than the "
                                f"{free / GiB:.1f} GiB of memory free (is the header's size right?)")

    def _finite(self, arr: np.ndarray, start: int) -> np.ndarray:
        if self._float and arr.size and not np.isfinite(arr).all():
            bad = int(np.nonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))[0][0])
            raise DataError(f"{self.path}: frame {start + bad}: NaN or infinite pixel values; expected finite "
                            "camera counts")
        return arr

    # ------------------------------------------------------------------ access
    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frames, self.height, self.width)

    @property
    def memory_mapped(self) -> bool:
        return self._mm is not None

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, idx: slice | int) -> np.ndarray:
        if isinstance(idx, int):
            return self[idx:idx + 1][0]
        start, stop, step = idx.indices(self.n_frames)
        try:
            if self._mm is not None:
                arr = np.asarray(self._mm[start:stop:step], dtype=np.float32)
            elif self._pages is None:
                arr = np.asarray(self._all[start:stop:step], dtype=np.float32)
            else:
                frames = [self._pages[i].asarray() for i in range(start, stop, step)]
                if not frames:
                    return np.zeros((0, self.height, self.width), np.float32)
                arr = np.stack(frames).astype(np.float32)
        except DataError:
            raise
        except Exception as exc:  # damaged strips: tifffile and its codecs raise many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(f"{self.path}: frames {start}-{stop - 1}: cannot read ({first})") from None
        return self._finite(arr, start)

    def _close_quietly(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            try:
                tif.close()
            except Exception:
                pass

    def close(self) -> None:
        self._mm = None
        self._close_quietly()


class TiffMovieWriter:
    """Write a movie chunk by chunk to one contiguous (memory-mappable) TIFF, atomically."""

    def __init__(self, path: str | Path, dtype: str = "uint16") -> None:
        self.path = Path(path)
        self.dtype = dtype
        self._stack = ExitStack()
        self._tw: Any = None

    def __enter__(self) -> TiffMovieWriter:
        import tifffile

        tmp = self._stack.enter_context(atomic_path(self.path))
        self._tw = self._stack.enter_context(tifffile.TiffWriter(tmp, bigtiff=True))
        return self

    def write(self, frames: np.ndarray) -> None:
        arr = np.asarray(frames)
        if self.dtype == "uint16":
            arr = np.clip(np.round(arr), 0, 65535).astype(np.uint16)
        else:
            arr = arr.astype(self.dtype)
        for f in arr:
            self._tw.write(f, contiguous=True, photometric="minisblack")

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)
