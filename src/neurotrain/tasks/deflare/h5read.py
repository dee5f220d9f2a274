"""Reading HDF5 event files in the seed's layout and in the DSEC layout, in chunks.

Layouts (both have one group ``events`` with 1-D datasets of equal length):

* seed layout: ``events/t`` (µs), ``events/x``, ``events/y``, ``events/p``.
* DSEC layout (Gehrig et al. 2021, "DSEC: A stereo event camera dataset for driving
  scenarios"): the same four datasets with ``t`` in µs relative to the scalar
  ``t_offset`` (µs), plus ``ms_to_idx`` where ``ms_to_idx[m]`` is the index of the first
  event with ``t >= 1000 * m``.

Readers never load a whole file: :func:`iter_chunks` yields fixed-size slices (regroup them into
segments with :func:`neurotrain.tasks.deflare.events.iter_segments`), so memory stays flat for a
file of 1e9 events. Every problem is one :class:`DataError` line naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.events import EVENT_KEYS, EventChunk, EventFileInfo, check_sensor_size, polarity_to_sign
from neurotrain.tasks.deflare.h5chunks import read_rows

DEFAULT_CHUNK_EVENTS = 1 << 20
"""Events per chunk read (2^20: about 13 MiB of seed-layout columns, t int64 + x, y uint16 + p int8)."""


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def _sensor_from_attrs(attrs: dict[str, Any], path: Path | None = None) -> tuple[int, int] | None:
    if "sensor_size" in attrs:
        return check_sensor_size(attrs["sensor_size"], f"{path}: sensor_size attribute")
    if "height" in attrs and "width" in attrs:
        return check_sensor_size([attrs["height"], attrs["width"]], f"{path}: height/width attributes")
    return None


def open_h5(path: Path) -> h5py.File:
    """``path`` opened read-only; a missing file or one that is not HDF5 is a one-line :class:`DataError`."""
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
    with open_h5(path) as f:
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
    with open_h5(path) as f:
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


def list_h5(directory: str | Path) -> list[Path]:
    """The ``.h5``/``.hdf5`` files of a directory, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: expected a directory of .h5 event files (not found)")
    return sorted(p for p in d.iterdir() if p.suffix.lower() in (".h5", ".hdf5") and not p.name.startswith("."))


def read_column(path: str | Path, name: str) -> np.ndarray | None:
    """A whole extra per-event column (e.g. the simulator's ``events/label``), or ``None``."""
    with open_h5(Path(path)) as f:
        if "events" not in f or name not in f["events"]:
            return None
        return np.asarray(f["events"][name][:])
