"""Events in memory: the column set, the seed's polarity rule, the :class:`EventChunk` batch, the file's
:class:`EventFileInfo`, the sensor-size check, and the regrouping of time-ordered chunks into fixed-duration
segments (:func:`iter_segments`). No file is opened here: HDF5 reading is in ``h5read.py``, writing in
``h5write.py``, Prophesee EVT 2.0/3.0 in ``evt.py``.

Polarity rule of the seed: a stored value of 1 is a positive event (+1), anything else is a negative
event (-1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from neurotrain.errors import DataError

EVENT_KEYS = ("t", "x", "y", "p")
# Largest sensor side accepted from a file's attributes or header: twice the 2048 px that the
# 11-bit addresses of Prophesee EVT 2.0/3.0 can hold (today's largest event sensors are
# 1280x720 and 1280x960). One 8-bin fp32 voxel of 4096x4096 is already 512 MiB, so a corrupt
# attribute must not size the grid.
MAX_SENSOR_SIDE = 4096
SEED_DTYPES = {"t": np.dtype("int64"), "x": np.dtype("uint16"), "y": np.dtype("uint16"), "p": np.dtype("int8")}


@dataclass
class EventFileInfo:
    """What a reader learned about an event file without reading its events."""

    path: Path
    layout: Literal["seed", "dsec"]
    num_events: int
    dtypes: dict[str, np.dtype]
    sensor_size: tuple[int, int] | None = None  # (height, width) from the file's attributes
    t_offset: int = 0
    neg_value: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)
    t_first: int = 0  # µs, first event (file axis, without t_offset)
    t_last: int = 0  # µs, last event


def check_sensor_size(hw: Any, where: str) -> tuple[int, int]:
    """``(height, width)`` as two ints in ``[1, MAX_SENSOR_SIDE]``, else :class:`DataError`
    naming ``where`` (``"<file>: <field>"``)."""
    try:
        a = np.asarray(hw).ravel()
        ok = a.size == 2 and a.dtype.kind in "iuf" and bool(np.all(np.isfinite(a))) and bool(np.all(a == np.round(a)))
    except (TypeError, ValueError):
        ok = False
    if not ok or not (1 <= a.min() and a.max() <= MAX_SENSOR_SIDE):
        shown = repr(hw)[:60]
        raise DataError(f"{where}: expected (height, width), two whole numbers in 1..{MAX_SENSOR_SIDE} px (got {shown})")
    return int(a[0]), int(a[1])


@dataclass
class EventChunk:
    """Events as NumPy arrays: ``t`` int64 µs (file time axis, without ``t_offset``), ``x``/``y`` int32
    pixels, ``p`` int8 in {-1, +1}."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    praw: np.ndarray | None = None  # the polarity exactly as stored in the file (exact-output path)

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def slice(self, a: int, b: int) -> EventChunk:
        return EventChunk(self.t[a:b], self.x[a:b], self.y[a:b], self.p[a:b], None if self.praw is None else self.praw[a:b])

    @staticmethod
    def concat(chunks: list[EventChunk]) -> EventChunk:
        if not chunks:
            return EventChunk.empty()
        if len(chunks) == 1:
            return chunks[0]
        praw = None
        if all(c.praw is not None for c in chunks):
            praw = np.concatenate([c.praw for c in chunks])  # type: ignore[misc]
        return EventChunk(*(np.concatenate([getattr(c, k) for c in chunks]) for k in EVENT_KEYS), praw=praw)

    @staticmethod
    def empty() -> EventChunk:
        return EventChunk(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8))

    def to_torch(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))).to(device) for k in EVENT_KEYS}


def polarity_to_sign(p: np.ndarray) -> np.ndarray:
    """The seed's polarity rule: 1 -> +1, anything else -> -1 (int8)."""
    return (p == 1).view(np.int8) * np.int8(2) - np.int8(1)


@dataclass
class Segment:
    """The events of one fixed-duration segment ``[t_start, t_start + duration_us)`` (µs)."""

    index: int
    t_start: int
    events: EventChunk


def segment_grid_start(t_first: int, duration_us: int) -> int:
    """Segments lie on the absolute grid ``k * duration_us``; the start of the one holding ``t_first``."""
    return (int(t_first) // duration_us) * duration_us


def iter_segments(chunks: Iterator[EventChunk], duration_us: int) -> Iterator[Segment]:
    """Regroup time-ordered chunks into non-empty segments of ``duration_us`` on the absolute grid.

    Segment ``k`` covers ``[k * duration_us, (k + 1) * duration_us)``; empty segments are
    skipped, the last partial one is yielded like any other. Memory holds one segment plus
    one chunk.
    """
    pending: list[EventChunk] = []
    current: int | None = None
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        # segment boundaries by binary search on the sorted timestamps: O(segments log n), not a
        # pass over every event
        k0, k1 = int(chunk.t[0]) // duration_us, int(chunk.t[-1]) // duration_us
        if k1 - k0 < len(chunk):
            ks = np.arange(k0, k1 + 1, dtype=np.int64)
            edges = np.searchsorted(chunk.t, ks[1:] * duration_us, side="left")
        else:
            # long gaps (more segments than events, e.g. a jump of hours): only the occupied
            # segments, so a corrupt timestamp cannot make an array of billions of empty ones
            k = chunk.t // duration_us
            edges = np.flatnonzero(k[1:] != k[:-1]) + 1
            ks = np.concatenate([[k0], k[edges]])
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [len(chunk)]])
        for k, a, b in zip(ks.tolist(), starts.tolist(), ends.tolist()):
            if a == b:
                continue
            if current is not None and k != current:
                yield Segment(current, current * duration_us, EventChunk.concat(pending))
                pending = []
            current = k
            pending.append(chunk.slice(a, b))
    if current is not None and pending:
        yield Segment(current, current * duration_us, EventChunk.concat(pending))
