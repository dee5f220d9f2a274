"""Event files: HDF5 in the seed's layout and in the DSEC layout, read in chunks, written atomically.

Layouts (both have one group ``events`` with 1-D datasets of equal length):

* seed layout: ``events/t`` (µs), ``events/x``, ``events/y``, ``events/p``.
* DSEC layout (Gehrig et al. 2021, "DSEC: A stereo event camera dataset for driving
  scenarios"): the same four datasets with ``t`` in µs relative to the scalar
  ``t_offset`` (µs), plus ``ms_to_idx`` where ``ms_to_idx[m]`` is the index of the first
  event with ``t >= 1000 * m``.

Polarity rule of the seed: a stored value of 1 is a positive event (+1), anything else is
a negative event (-1). Writers store +1 as 1 and -1 as the negative value the input file
used (0 or -1), in the input's dtypes, gzip-compressed, under a temporary name that is
renamed onto the target only when the file is complete.

Readers never load a whole file: :func:`iter_chunks` yields fixed-size slices, and
:func:`iter_segments` regroups them into fixed-duration segments, so memory stays flat
for a file of 1e9 events.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.h5chunks import read_rows, write_rows

EVENT_KEYS = ("t", "x", "y", "p")
# Largest sensor side accepted from a file's attributes or header: twice the 2048 px that the
# 11-bit addresses of Prophesee EVT 2.0/3.0 can hold (today's largest event sensors are
# 1280x720 and 1280x960). One 8-bin fp32 voxel of 4096x4096 is already 512 MiB, so a corrupt
# attribute must not size the grid.
MAX_SENSOR_SIDE = 4096
SEED_DTYPES = {"t": np.dtype("int64"), "x": np.dtype("uint16"), "y": np.dtype("uint16"), "p": np.dtype("int8")}
DEFAULT_CHUNK_EVENTS = 1 << 20


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


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


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


def _sensor_from_attrs(attrs: dict[str, Any], path: Path | None = None) -> tuple[int, int] | None:
    if "sensor_size" in attrs:
        return check_sensor_size(attrs["sensor_size"], f"{path}: sensor_size attribute")
    if "height" in attrs and "width" in attrs:
        return check_sensor_size([attrs["height"], attrs["width"]], f"{path}: height/width attributes")
    return None


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot open as HDF5 (truncated or not an HDF5 file: {str(exc).splitlines()[0]})") from None


def inspect_events(path: str | Path) -> EventFileInfo:
    """Open ``path``, check its layout and return an :class:`EventFileInfo`.

    Raises:
        DataError: missing file, not HDF5, missing ``events/<key>``, unequal lengths.
    """
    path = Path(path)
    with _open(path) as f:
        if "events" not in f or not isinstance(f["events"], h5py.Group):
            raise DataError(f"{path}: events: expected a group 'events' with datasets t, x, y, p (got keys {sorted(f.keys())})")
        g = f["events"]
        lengths = {}
        dtypes = {}
        for k in EVENT_KEYS:
            if k not in g or not isinstance(g[k], h5py.Dataset):
                raise DataError(f"{path}: events/{k}: expected a 1-D dataset (missing)")
            d = g[k]
            if d.ndim != 1:
                raise DataError(f"{path}: events/{k}: expected a 1-D dataset (got shape {d.shape})")
            if not (np.issubdtype(d.dtype, np.integer) or (k == "p" and d.dtype == np.bool_)):
                want = "an integer dtype (µs)" if k == "t" else ("an integer or bool dtype" if k == "p" else "an integer dtype (pixels)")
                raise DataError(f"{path}: events/{k}: expected {want} (got {d.dtype})")
            lengths[k] = d.shape[0]
            dtypes[k] = d.dtype
        if len(set(lengths.values())) != 1:
            raise DataError(f"{path}: events: expected t, x, y, p of equal length (got {lengths})")
        layout: Literal["seed", "dsec"] = "dsec" if "ms_to_idx" in f else "seed"
        t_offset = 0
        if "t_offset" in f:
            try:
                to = np.asarray(f["t_offset"][()]).ravel()
                if to.size != 1 or to.dtype.kind not in "iu":
                    raise ValueError
                t_offset = int(to[0])
            except (ValueError, TypeError, OSError):
                raise DataError(f"{path}: t_offset: expected one integer (µs)") from None
        attrs = {**_attrs(f), **{f"events.{k}": v for k, v in _attrs(g).items()}}
        n = lengths["t"]
        neg_value = 0
        if n and np.issubdtype(dtypes["p"], np.signedinteger):
            try:
                head = np.asarray(g["p"][: min(n, 65536)])
            except OSError as exc:
                raise DataError(f"{path}: events/p: unreadable (truncated file?): {str(exc).splitlines()[0]}") from None
            if np.any(head == -1):
                neg_value = -1
        sensor = _sensor_from_attrs(_attrs(f), path) or _sensor_from_attrs(_attrs(g), path)
        t_first = t_last = 0
        if n:
            try:
                t_first, t_last = int(g["t"][0]), int(g["t"][n - 1])
            except (OSError, RuntimeError) as exc:
                raise DataError(f"{path}: events/t: unreadable (truncated or corrupt file): {str(exc).splitlines()[0]}") from None
    return EventFileInfo(path, layout, int(n), dtypes, sensor, t_offset, neg_value, attrs, t_first, t_last)


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


def iter_chunks(
    path: str | Path,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    sensor_size: tuple[int, int] | None = None,
    info: EventFileInfo | None = None,
) -> Iterator[EventChunk]:
    """Yield the events of ``path`` in order, ``chunk_events`` at a time.

    Checks on the way: timestamps non-decreasing, and (when ``sensor_size`` = (H, W) is
    given) ``0 <= x < W`` and ``0 <= y < H``. A read error (truncated file) or a failed
    check raises :class:`DataError` naming the file and the field.
    """
    path = Path(path)
    info = info or inspect_events(path)
    last_t: int | None = None
    with _open(path) as f:
        g = f["events"]
        n = info.num_events
        for a in range(0, n, chunk_events):
            b = min(n, a + chunk_events)
            arrs = {}
            for k in EVENT_KEYS:
                try:
                    arrs[k] = read_rows(g[k], a, b)
                except (OSError, RuntimeError) as exc:
                    raise DataError(
                        f"{path}: events/{k}[{a}:{b}]: unreadable (truncated or corrupt file): {str(exc).splitlines()[0]}"
                    ) from None
            t = arrs["t"].astype(np.int64, copy=False)
            if t.size and ((last_t is not None and t[0] < last_t) or np.any(t[1:] < t[:-1])):
                raise DataError(
                    f"{path}: events/t: expected non-decreasing timestamps (found a decrease near index {a}; "
                    "sort the file by t first, e.g. with neurotrain.tasks.deflare.io.sort_events_file)"
                )
            if t.size and last_t is None and t[0] < 0:
                raise DataError(f"{path}: events/t: expected timestamps >= 0 µs (got {int(t[0])} at index {a})")
            x = arrs["x"].astype(np.int32, copy=False)
            y = arrs["y"].astype(np.int32, copy=False)
            if sensor_size is not None and t.size:
                h, w = sensor_size
                if x.min() < 0 or x.max() >= w:
                    raise DataError(f"{path}: events/x: expected 0 <= x < {w} (sensor width), got range [{x.min()}, {x.max()}]")
                if y.min() < 0 or y.max() >= h:
                    raise DataError(f"{path}: events/y: expected 0 <= y < {h} (sensor height), got range [{y.min()}, {y.max()}]")
            if t.size:
                last_t = int(t[-1])
            yield EventChunk(t, x, y, polarity_to_sign(arrs["p"]), arrs["p"])


def read_events(path: str | Path, sensor_size: tuple[int, int] | None = None) -> EventChunk:
    """All events of a (small) file at once; for big files use :func:`iter_chunks`."""
    return EventChunk.concat(list(iter_chunks(path, sensor_size=sensor_size)))


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


class EventWriter:
    """Append events to an HDF5 file in the seed or DSEC layout, atomically.

    Use as a context manager; the file appears under ``path`` only after a clean exit.
    ``like`` copies layout, dtypes, negative-polarity value, ``t_offset`` and attributes
    from an input file. Polarity given to :meth:`append` is the sign (+1/-1).

    Args:
        path: target file.
        like: input file info to mirror, or ``None`` for the seed layout with
            :data:`SEED_DTYPES`.
        compression: ``"gzip"`` (as in the seed) or ``None``.
        compression_opts: gzip level 0-9 (1: fastest; the files stay standard gzip).
        chunk_rows: HDF5 chunk length (rows); chunks are compressed in parallel threads.
        shuffle: add HDF5's byte-shuffle filter before gzip (smaller and faster files).
        attrs: extra root attributes (e.g. ``sensor_size``).
    """

    def __init__(
        self,
        path: str | Path,
        like: EventFileInfo | None = None,
        compression: str | None = "gzip",
        compression_opts: int | None = 1,
        chunk_rows: int = 1 << 16,
        attrs: dict[str, Any] | None = None,
        shuffle: bool = True,
        extra_columns: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.extra = {k: np.dtype(v) for k, v in (extra_columns or {}).items()}
        self.layout = like.layout if like else "seed"
        self.dtypes = dict(like.dtypes) if like else dict(SEED_DTYPES)
        self.neg_value = like.neg_value if like else 0
        if not np.issubdtype(self.dtypes["p"], np.signedinteger):
            self.neg_value = 0
        self.t_offset = like.t_offset if like else 0
        self.attrs = {k: v for k, v in (like.attrs if like else {}).items() if not k.startswith("events.")}
        self.attrs.update(attrs or {})
        self.compression = compression
        self.compression_opts = compression_opts if compression == "gzip" else None
        self.chunk_rows = chunk_rows
        self.shuffle = shuffle
        self.n = 0
        self._written = 0
        self.columns = EVENT_KEYS + tuple(self.extra)
        self.dtypes.update(self.extra)
        self._pending: dict[str, list[np.ndarray]] = {k: [] for k in self.columns}
        self._pending_n = 0
        self._next_ms = 0
        self._stack: ExitStack | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> EventWriter:
        from neurotrain.io.atomic import atomic_path

        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        g = self._file.create_group("events")
        for k in self.columns:
            g.create_dataset(
                k, shape=(0,), maxshape=(None,), dtype=self.dtypes[k], chunks=(self.chunk_rows,),
                compression=self.compression, compression_opts=self.compression_opts,
                shuffle=self.compression is not None and self.shuffle,
            )
        if self.layout == "dsec":
            self._file.create_dataset("ms_to_idx", shape=(0,), maxshape=(None,), dtype=np.uint64, chunks=(4096,))
            self._file.create_dataset("t_offset", data=np.int64(self.t_offset))
        for k, v in self.attrs.items():
            self._file.attrs[k] = v
        return self

    def append(self, t: Any, x: Any, y: Any, p: Any, raw_p: bool = False, extra: dict[str, Any] | None = None) -> None:
        """Append time-ordered events; ``t`` in µs on the file's axis, ``p`` the sign (+1/-1),
        or (``raw_p=True``) the polarity values exactly as the input file stored them."""
        assert self._file is not None, "EventWriter used outside its with-block"
        arrs = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in (t, x, y, p)]
        t_np, x_np, y_np, p_np = arrs
        m = t_np.shape[0]
        if m == 0:
            return
        stored_p = p_np if raw_p else np.where(p_np > 0, np.int8(1), np.int8(self.neg_value))
        if self.layout == "dsec":
            last_ms = int(t_np[-1]) // 1000
            if last_ms >= self._next_ms:
                ms = np.arange(self._next_ms, last_ms + 1, dtype=np.int64) * 1000
                idx = self.n + np.searchsorted(t_np, ms, side="left")
                d = self._file["ms_to_idx"]
                d.resize((d.shape[0] + idx.size,))
                d[-idx.size :] = idx.astype(np.uint64)
                self._next_ms = last_ms + 1
        cols = dict(zip(EVENT_KEYS, (t_np, x_np, y_np, stored_p)))
        for k in self.extra:
            if extra is None or k not in extra:
                raise ValueError(f"EventWriter.append: column {k!r} missing from extra")
            a = extra[k]
            cols[k] = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        for k, a in cols.items():
            self._pending[k].append(a.astype(self.dtypes[k], copy=False))
        self._pending_n += m
        self.n += m
        if self._pending_n >= self.chunk_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write the pending rows: whole chunks only, unless ``final``."""
        assert self._file is not None
        n = self._pending_n if final else (self._pending_n // self.chunk_rows) * self.chunk_rows
        if n == 0:
            return
        g = self._file["events"]
        for k in self.columns:
            buf = np.concatenate(self._pending[k]) if len(self._pending[k]) > 1 else self._pending[k][0]
            d = g[k]
            d.resize((self._written + n,))
            if self.compression == "gzip":
                write_rows(d, self._written, buf[:n], int(self.compression_opts or 0))
            else:
                d[self._written :] = buf[:n]
            self._pending[k] = [buf[n:]] if n < buf.shape[0] else []
        self._written += n
        self._pending_n -= n

    def __exit__(self, *exc: Any) -> bool:
        assert self._stack is not None
        if exc[0] is None and self._file is not None:
            self._flush(final=True)
            self._file.attrs["num_events"] = self.n
        self._file = None
        return bool(self._stack.__exit__(*exc))


def write_events(path: str | Path, events: EventChunk | dict[str, Any], like: EventFileInfo | None = None, **kwargs: Any) -> Path:
    """Write one batch of events (``EventChunk`` or dict with t, x, y, p-sign) to ``path``."""
    ev = events if isinstance(events, EventChunk) else EventChunk(*(events[k] for k in EVENT_KEYS))
    with EventWriter(path, like=like, **kwargs) as w:
        w.append(ev.t, ev.x, ev.y, ev.p)
    return Path(path)


def list_h5(directory: str | Path) -> list[Path]:
    """The ``.h5``/``.hdf5`` files of a directory, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: expected a directory of .h5 event files (not found)")
    return sorted(p for p in d.iterdir() if p.suffix.lower() in (".h5", ".hdf5") and not p.name.startswith("."))


def read_column(path: str | Path, name: str) -> np.ndarray | None:
    """A whole extra per-event column (e.g. the simulator's ``events/label``), or ``None``."""
    with _open(Path(path)) as f:
        if "events" not in f or name not in f["events"]:
            return None
        return np.asarray(f["events"][name][:])


def sort_events_file(src: str | Path, dst: str | Path) -> Path:
    """The documented repair for a file whose timestamps are out of order: a stable sort by
    ``t`` of the whole file (it must fit in memory), written atomically to ``dst`` in the
    same layout and dtypes, with a warning that says how many events moved."""
    import warnings

    src = Path(src)
    info = inspect_events(src)
    with _open(src) as f:
        g = f["events"]
        cols = {k: np.asarray(g[k][:]) for k in EVENT_KEYS}
    order = np.argsort(cols["t"], kind="stable")
    moved = int(np.count_nonzero(order != np.arange(order.size)))
    if moved:
        warnings.warn(f"{src}: events/t: {moved} of {order.size} events out of time order; sorted by t (stable)", stacklevel=2)
    with EventWriter(dst, like=info) as w:
        w.append(*(cols[k][order] for k in EVENT_KEYS), raw_p=True)
    return Path(dst)
