"""Writing HDF5 event files, atomically: :class:`EventWriter` (streamed appends), :func:`write_events`
(one batch) and :func:`sort_events_file` (the repair for out-of-order timestamps).

Writers store +1 as 1 and -1 as the negative value the input file used (0 or -1), in the input's
dtypes, gzip-compressed, under a temporary name that is renamed onto the target only when the file
is complete. The layouts are described in ``h5read.py``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from neurotrain.tasks.deflare.events import EVENT_KEYS, SEED_DTYPES, EventChunk, EventFileInfo
from neurotrain.tasks.deflare.h5chunks import write_rows
from neurotrain.tasks.deflare.h5read import inspect_events, open_h5

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


def sort_events_file(src: str | Path, dst: str | Path) -> Path:
    """The documented repair for a file whose timestamps are out of order: a stable sort by
    ``t`` of the whole file (it must fit in memory), written atomically to ``dst`` in the
    same layout and dtypes, with a warning that says how many events moved."""
    import warnings

    src = Path(src)
    info = inspect_events(src)
    with open_h5(src) as f:
        g = f["events"]
        cols = {k: np.asarray(g[k][:]) for k in EVENT_KEYS}
    order = np.argsort(cols["t"], kind="stable")
    moved = int(np.count_nonzero(order != np.arange(order.size)))
    if moved:
        warnings.warn(f"{src}: events/t: {moved} of {order.size} events out of time order; sorted by t (stable)", stacklevel=2)
    with EventWriter(dst, like=info) as w:
        w.append(*(cols[k][order] for k in EVENT_KEYS), raw_p=True)
    return Path(dst)
