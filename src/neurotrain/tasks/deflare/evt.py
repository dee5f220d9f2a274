"""Prophesee raw event files (EVT 2.0 and EVT 3.0), decoded with vectorised NumPy.

Formats as documented by Prophesee (Metavision SDK docs, "Event Streaming Formats"):

* header: text lines starting with ``%`` (``% evt 3.0``, ``% format EVT3;height=720;width=1280``,
  ``% geometry 1280x720``, ``% plugin_name hal_plugin_gen41_evk3``, ...), then binary words.
* EVT 2.0: little-endian 32-bit words, type in bits 31..28.
  ``CD_OFF`` 0x0 / ``CD_ON`` 0x1: bits 27..22 timestamp LSBs (6 bits), 21..11 x, 10..0 y;
  ``EVT_TIME_HIGH`` 0x8: bits 27..0 timestamp MSBs (t = high << 6 | lsb, µs);
  ``EXT_TRIGGER`` 0xA, ``OTHERS`` 0xE, ``CONTINUED`` 0xF are skipped.
* EVT 3.0: little-endian 16-bit words, type in bits 15..12, a stateful stream:
  ``EVT_ADDR_Y`` 0x0 (y in 10..0), ``EVT_ADDR_X`` 0x2 (one event: x in 10..0, polarity bit 11),
  ``VECT_BASE_X`` 0x3 (base x in 10..0, polarity bit 11), ``VECT_12`` 0x4 / ``VECT_8`` 0x5
  (a bit mask of events at base x + i, then base x += 12 / 8), ``EVT_TIME_LOW`` 0x6 and
  ``EVT_TIME_HIGH`` 0x8 (bits 11..0 of a 24-bit µs timestamp: t = high << 12 | low; the
  high part wraps every 2**24 µs, unwrapped here), ``EXT_TRIGGER`` 0xA, ``OTHERS`` 0xE,
  ``CONTINUED`` 0x7/0xF skipped.

Every state variable (y, time, base x, polarity) is a forward fill over word indices
(``np.maximum.accumulate`` of the indices where it was last set), so a file decodes with
no Python loop over words or events.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.io import EventChunk

# sensor sizes (height, width) of Prophesee sensor generations, by plugin name
_PLUGIN_SIZES = {"gen3": (480, 640), "gen31": (480, 640), "gen4": (720, 1280), "gen41": (720, 1280), "imx636": (720, 1280), "imx646": (720, 1280)}


def read_header(path: str | Path) -> tuple[dict[str, str], int]:
    """The ``%`` header as ``{key: value}`` and the byte offset where the binary data starts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    head: dict[str, str] = {}
    with path.open("rb") as f:
        off = 0
        while True:
            line = f.readline()
            if not line.startswith(b"%"):
                break
            off += len(line)
            text = line[1:].decode("ascii", "replace").strip()
            if text == "end":
                break
            key, _, val = text.partition(" ")
            head[key] = val.strip()
    return head, off


def sensor_size_from_header(head: dict[str, str]) -> tuple[int, int] | None:
    """(height, width) from ``format``/``geometry``/``plugin_name`` header lines, else ``None``."""
    fmt = head.get("format", "")
    kv = dict(p.split("=", 1) for p in fmt.split(";") if "=" in p)
    if "height" in kv and "width" in kv:
        return int(kv["height"]), int(kv["width"])
    if "geometry" in head and "x" in head["geometry"]:
        w, h = head["geometry"].split("x")[:2]
        return int(h), int(w)
    plugin = head.get("plugin_name", "")
    for gen in sorted(_PLUGIN_SIZES, key=len, reverse=True):
        if f"_{gen}" in plugin:
            return _PLUGIN_SIZES[gen]
    return None


def evt_version(head: dict[str, str]) -> str:
    if "evt" in head:
        return head["evt"].strip()
    fmt = head.get("format", "").split(";")[0].upper()
    return {"EVT2": "2.0", "EVT3": "3.0", "EVT21": "2.1"}.get(fmt, "")


def _ffill_index(mask: np.ndarray) -> np.ndarray:
    """For every position, the index of the last ``True`` at or before it (-1 if none)."""
    idx = np.where(mask, np.arange(mask.size), -1)
    return np.maximum.accumulate(idx) if idx.size else idx


def decode_evt2(words: np.ndarray) -> EventChunk:
    """Decode EVT 2.0 32-bit words."""
    w = words.astype(np.uint32, copy=False)
    typ = w >> 28
    is_high = typ == 0x8
    last_high = _ffill_index(is_high)
    high = np.where(last_high >= 0, w[np.maximum(last_high, 0)] & 0x0FFFFFFF, 0).astype(np.int64)
    cd = (typ == 0x0) | (typ == 0x1)
    cw = w[cd]
    t = (high[cd] << 6) | ((cw >> 22) & 0x3F).astype(np.int64)
    x = ((cw >> 11) & 0x7FF).astype(np.int64)
    y = (cw & 0x7FF).astype(np.int64)
    p = np.where(typ[cd] == 0x1, 1, -1).astype(np.int8)
    return EventChunk(t, x, y, p)


def decode_evt3(words: np.ndarray) -> EventChunk:
    """Decode EVT 3.0 16-bit words (vector events expanded, time unwrapped past 2**24 µs)."""
    w = words.astype(np.int64)
    n = w.size
    typ = w >> 12
    low12 = w & 0xFFF
    # time: high and low parts forward-filled; the high part wraps at 2**12 (2**24 µs)
    is_high = typ == 0x8
    hi_idx = np.flatnonzero(is_high)
    hi_val = low12[hi_idx]
    wraps = np.concatenate([[0], np.cumsum(np.diff(hi_val) < 0)]) if hi_idx.size else np.zeros(0, np.int64)
    hi_unwrapped = hi_val + (wraps << 12)
    last_hi = _ffill_index(is_high)
    pos_in_hi = np.searchsorted(hi_idx, np.arange(n), side="right") - 1
    high = np.where(last_hi >= 0, hi_unwrapped[np.maximum(pos_in_hi, 0)] if hi_idx.size else 0, 0)
    is_low = typ == 0x6
    last_lo = _ffill_index(is_low)
    low = np.where(last_lo >= 0, low12[np.maximum(last_lo, 0)], 0)
    t_all = (high << 12) | low
    # y
    is_y = typ == 0x0
    last_y = _ffill_index(is_y)
    y_all = np.where(last_y >= 0, w[np.maximum(last_y, 0)] & 0x7FF, 0)
    # single events
    is_x = typ == 0x2
    ix = np.flatnonzero(is_x)
    # vectors: base x and polarity from the last VECT_BASE_X, advanced by earlier vectors
    is_base = typ == 0x3
    inc = np.where(typ == 0x4, 12, np.where(typ == 0x5, 8, 0))
    cum = np.cumsum(inc)
    last_base = _ffill_index(is_base)
    lb = np.maximum(last_base, 0)
    base_x = (w[lb] & 0x7FF) + (cum - inc) - cum[lb]
    base_p = (w[lb] >> 11) & 1
    iv = np.flatnonzero(((typ == 0x4) | (typ == 0x5)) & (last_base >= 0))
    nbits = np.where(typ[iv] == 0x4, 12, 8)
    bits = np.arange(12)
    mask = ((w[iv, None] >> bits[None, :]) & 1).astype(bool) & (bits[None, :] < nbits[:, None])
    vw, vb = np.nonzero(mask)
    v_idx = iv[vw]
    # merge single and vector events in stream order (word index, then bit)
    key = np.concatenate([ix * 16, v_idx * 16 + vb])
    order = np.argsort(key, kind="stable")
    t = np.concatenate([t_all[ix], t_all[v_idx]])[order]
    x = np.concatenate([w[ix] & 0x7FF, base_x[v_idx] + vb])[order]
    y = np.concatenate([y_all[ix], y_all[v_idx]])[order]
    p = np.concatenate([(w[ix] >> 11) & 1, base_p[v_idx]])[order]
    return EventChunk(t.astype(np.int64), x.astype(np.int64), y.astype(np.int64), np.where(p == 1, 1, -1).astype(np.int8))


def read_raw(path: str | Path) -> tuple[EventChunk, tuple[int, int] | None]:
    """Decode a whole Prophesee ``.raw`` file (EVT 2.0 or 3.0); returns events and (H, W) if known."""
    path = Path(path)
    head, off = read_header(path)
    ver = evt_version(head)
    data = np.fromfile(path, dtype=np.uint8, offset=off)
    if ver.startswith("2.0"):
        words = data[: data.size // 4 * 4].view("<u4")
        ev = decode_evt2(words)
    elif ver.startswith("3"):
        words = data[: data.size // 2 * 2].view("<u2")
        ev = decode_evt3(words)
    else:
        raise DataError(f"{path}: header: expected '% evt 2.0' or '% evt 3.0' (got {ver or 'no evt line'})")
    return ev, sensor_size_from_header(head)


def raw_to_h5(src: str | Path, dst: str | Path, sensor_size: tuple[int, int] | None = None) -> Path:
    """Convert a Prophesee ``.raw`` file into the seed's HDF5 layout (``events/t,x,y,p``, p in {0, 1})."""
    from neurotrain.tasks.deflare.io import EventWriter

    ev, size = read_raw(src)
    size = sensor_size or size
    attrs = {"source": str(Path(src).name)}
    if size is not None:
        attrs["sensor_size"] = list(size)
    order = np.argsort(ev.t, kind="stable")  # EVT streams are time-ordered up to µs jitter of vectors
    with EventWriter(dst, attrs=attrs) as w:
        w.append(ev.t[order], ev.x[order], ev.y[order], ev.p[order])
    return Path(dst)
