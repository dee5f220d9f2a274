"""Prophesee raw event files (EVT 2.0 and EVT 3.0), decoded with vectorised NumPy.

Formats as documented by Prophesee (Metavision docs, "EVT 2.0 Format" and "EVT 3.0 Format",
docs.prophesee.ai/stable/data/encoding_formats/), with the time handling of Prophesee's own
decoders (OpenEB ``hal/cpp/include/metavision/hal/decoders/evt2/evt2_decoder.h`` and
``evt3/evt3_decoder.h``):

* header: text lines starting with ``%`` (``% evt 3.0``, ``% format EVT3;height=720;width=1280``,
  ``% geometry 1280x720``, ``% plugin_name hal_plugin_gen41_evk3``, ...), then binary words.
* EVT 2.0: little-endian 32-bit words, type in bits 31..28.
  ``CD_OFF`` 0x0 / ``CD_ON`` 0x1: bits 27..22 timestamp LSBs (6 bits), 21..11 x, 10..0 y;
  ``EVT_TIME_HIGH`` 0x8: bits 27..0 timestamp MSBs, t = high << 6 | lsb (34-bit µs counter,
  rolls over every 2**34 µs = 4 h 46 min; unwrapped here). ``EXT_TRIGGER`` 0xA, ``OTHERS`` 0xE,
  ``CONTINUED`` 0xF are skipped.
* EVT 3.0: little-endian 16-bit words, type in bits 15..12, a stateful stream:
  ``EVT_ADDR_Y`` 0x0 (y in 10..0; bit 11 is the master/slave system type),
  ``EVT_ADDR_X`` 0x2 (one event: x in 10..0, polarity bit 11), ``VECT_BASE_X`` 0x3 (base x in
  10..0, polarity bit 11), ``VECT_12`` 0x4 / ``VECT_8`` 0x5 (a valid mask in bits 11..0 /
  7..0: one event at base x + i per set bit i, then base x += 12 / 8), ``EVT_TIME_LOW`` 0x6 /
  ``EVT_TIME_HIGH`` 0x8 (bits 11..0 of a 24-bit µs time base, t = high << 12 | low; it rolls
  over every 2**24 µs = 16.8 s and is unwrapped here), ``CONTINUED_4`` 0x7, ``EXT_TRIGGER``
  0xA, ``OTHERS`` 0xE, ``CONTINUED_12`` 0xF are skipped.

Time rules (as OpenEB): events before the first ``EVT_TIME_HIGH`` have no known time and are
dropped; a time-high counter steps back by at least half its range only when it rolls over
(a smaller backward step is jitter, kept as is); in EVT 3.0 the low part is the last
``EVT_TIME_LOW`` word, and a ``EVT_TIME_HIGH`` that changes the high part resets it to 0 until
the next ``EVT_TIME_LOW``. ``EVT_TIME_LOW`` words themselves never carry into the high part:
the sensor sends the new ``EVT_TIME_HIGH`` when the low part wraps from 4095 to 0.

Reference decodings differ here: expelliarmus (``src/evt3.c``) adds 4096 µs to the high part
on every backward step of ``EVT_TIME_LOW``. The sensor emits such steps as jitter (every
1000 µs the gen4.1 recording in ``realdata/events`` carries an ``EVT_TIME_HIGH`` +
``EVT_TIME_LOW`` pair stamped 4-12 µs ahead of the events around it, after which the stream
goes on at the earlier time, with no event in between), and at a real wrap the carry is then
counted twice (once by the low word, once by the new ``EVT_TIME_HIGH``).
Its ``evt3_sample.npy`` therefore spans 53.9 ms with eleven 4097 µs holes where the words
encode a gap-free 8.8 ms (two of the eleven steps are real wraps, counted twice); x, y and
polarity agree event for event.

Every state variable (time, y, base x, polarity) is a forward fill over word indices
(``np.maximum.accumulate`` of the indices where it was last set, or a running count of the
words that set it), so a file decodes with no Python loop over words or events.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurotrain.errors import DataError
from neurotrain.tasks.deflare.events import EventChunk, check_sensor_size

# sensor sizes (height, width) of Prophesee sensor generations, by plugin name
_PLUGIN_SIZES = {"gen3": (480, 640), "gen31": (480, 640), "gen4": (720, 1280), "gen41": (720, 1280), "imx636": (720, 1280), "imx646": (720, 1280)}

# EVT 2.0 word types and field widths
EVT2_CD_OFF, EVT2_CD_ON, EVT2_TIME_HIGH = 0x0, 0x1, 0x8
EVT2_HIGH_BITS, EVT2_LSB_BITS = 28, 6
# EVT 3.0 word types and field widths
EVT3_ADDR_Y, EVT3_ADDR_X, EVT3_VECT_BASE_X, EVT3_VECT_12, EVT3_VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
EVT3_TIME_LOW, EVT3_TIME_HIGH = 0x6, 0x8
EVT3_TIME_BITS = 12  # both halves of the 24-bit time base
EVT3_VECT_12_BITS, EVT3_VECT_8_BITS = 12, 8
_ADDR_MASK, _POL_SHIFT = 0x7FF, 11  # 11-bit x/y address, polarity in bit 11


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


def sensor_size_from_header(head: dict[str, str], path: str | Path = "<header>") -> tuple[int, int] | None:
    """(height, width) from ``format``/``geometry``/``plugin_name`` header lines, else ``None``.

    A size that is not two whole numbers in ``1..MAX_SENSOR_SIDE`` raises :class:`DataError`
    naming ``path`` and the header line."""
    fmt = head.get("format", "")
    kv = dict(p.split("=", 1) for p in fmt.split(";") if "=" in p)
    if "height" in kv and "width" in kv:
        return _header_size(kv["height"], kv["width"], f"{path}: header 'format' height/width")
    if "geometry" in head:
        w, _, h = head["geometry"].partition("x")
        return _header_size(h, w, f"{path}: header 'geometry'")
    plugin = head.get("plugin_name", "")
    for gen in sorted(_PLUGIN_SIZES, key=len, reverse=True):
        if f"_{gen}" in plugin:
            return _PLUGIN_SIZES[gen]
    return None


def _header_size(h: str, w: str, where: str) -> tuple[int, int]:
    try:
        hw = [int(h.strip()), int(w.strip())]
    except ValueError:
        raise DataError(f"{where}: expected whole numbers of pixels (got height {h.strip()[:20]!r}, width {w.strip()[:20]!r})") from None
    return check_sensor_size(hw, where)


def evt_version(head: dict[str, str]) -> str:
    if "evt" in head:
        return head["evt"].strip()
    fmt = head.get("format", "").split(";")[0].upper()
    return {"EVT2": "2.0", "EVT3": "3.0", "EVT21": "2.1"}.get(fmt, "")


def _ffill_index(mask: np.ndarray) -> np.ndarray:
    """For every position, the index of the last ``True`` at or before it (-1 if none)."""
    idx = np.where(mask, np.arange(mask.size), -1)
    return np.maximum.accumulate(idx) if idx.size else idx


def _unwrap_counter(values: np.ndarray, bits: int) -> np.ndarray:
    """A ``bits``-wide counter (int64) made monotonic across roll-overs: a backward step of at
    least half the range is one roll-over (OpenEB's rule); smaller steps are jitter, kept."""
    v = values.astype(np.int64)
    if v.size < 2:
        return v
    wraps = np.cumsum(np.diff(v) <= -(1 << (bits - 1)))
    return v + (np.concatenate([[0], wraps]) << bits)


def decode_evt2(words: np.ndarray) -> EventChunk:
    """Decode EVT 2.0 32-bit words into events (t in µs on the sensor's 34-bit clock, unwrapped)."""
    w = words.astype(np.uint32, copy=False)
    typ = w >> 28
    is_high = typ == EVT2_TIME_HIGH
    n_high = np.cumsum(is_high)  # TIME_HIGH words at or before each word
    high = _unwrap_counter(w[is_high] & ((1 << EVT2_HIGH_BITS) - 1), EVT2_HIGH_BITS)
    cd = ((typ == EVT2_CD_OFF) | (typ == EVT2_CD_ON)) & (n_high > 0)
    cw = w[cd]
    lsb = ((cw >> 22) & ((1 << EVT2_LSB_BITS) - 1)).astype(np.int64)
    t = (high[n_high[cd] - 1] << EVT2_LSB_BITS) | lsb
    x = ((cw >> 11) & _ADDR_MASK).astype(np.int64)
    y = (cw & _ADDR_MASK).astype(np.int64)
    p = np.where(typ[cd] == EVT2_CD_ON, 1, -1).astype(np.int8)
    return EventChunk(t, x, y, p)


def _evt3_time(typ: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per word: the time base in µs (unwrapped) and whether it is known (a TIME_HIGH seen)."""
    is_high = typ == EVT3_TIME_HIGH
    n_high = np.cumsum(is_high)
    hv = payload[is_high]
    high = _unwrap_counter(hv, EVT3_TIME_BITS)
    # a TIME_HIGH that changes the high part opens a new 4096 µs page starting at low = 0
    changes = np.ones(hv.size, bool)
    changes[1:] = hv[1:] != hv[:-1]
    page_start = np.zeros(typ.size, bool)
    page_start[np.flatnonzero(is_high)[changes]] = True
    last_page = _ffill_index(page_start)
    last_low = _ffill_index(typ == EVT3_TIME_LOW)
    low = np.where(last_low > last_page, payload[np.maximum(last_low, 0)], 0)
    known = n_high > 0
    t = np.where(known, high[np.maximum(n_high - 1, 0)] if hv.size else 0, 0) << EVT3_TIME_BITS
    return t | low, known


def decode_evt3(words: np.ndarray) -> EventChunk:
    """Decode EVT 3.0 16-bit words into events in stream order (vectors expanded with x
    ascending; t in µs on the sensor's 24-bit clock, unwrapped past 2**24 µs)."""
    w = words.astype(np.int64)
    typ = w >> 12
    payload = w & 0xFFF
    t_word, time_known = _evt3_time(typ, payload)
    last_y = _ffill_index(typ == EVT3_ADDR_Y)
    # vectors: base x and polarity from the last VECT_BASE_X, advanced by the vectors since
    is_v12, is_v8 = typ == EVT3_VECT_12, typ == EVT3_VECT_8
    width = np.where(is_v12, EVT3_VECT_12_BITS, np.where(is_v8, EVT3_VECT_8_BITS, 0))
    before = np.cumsum(width) - width  # x advance of all vector words before each word
    last_base = _ffill_index(typ == EVT3_VECT_BASE_X)
    lb = np.maximum(last_base, 0)
    is_x = typ == EVT3_ADDR_X
    emits = (is_x | ((is_v12 | is_v8) & (last_base >= 0))) & time_known & (last_y >= 0)
    iw = np.flatnonzero(emits)
    # one row of valid bits per emitting word: a single event is bit 0 at its own x
    valid = np.where(is_v12[iw], payload[iw], np.where(is_v8[iw], payload[iw] & ((1 << EVT3_VECT_8_BITS) - 1), 1))
    x0 = np.where(is_x[iw], payload[iw] & _ADDR_MASK, (w[lb[iw]] & _ADDR_MASK) + before[iw] - before[lb[iw]])
    pol = (np.where(is_x[iw], w[iw], w[lb[iw]]) >> _POL_SHIFT) & 1
    bits = np.unpackbits(valid.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
    row, bit = np.nonzero(bits[:, :EVT3_VECT_12_BITS])  # row-major: stream order, then x
    wi = iw[row]
    return EventChunk(
        t_word[wi].astype(np.int64),
        (x0[row] + bit).astype(np.int64),
        (w[last_y[wi]] & _ADDR_MASK).astype(np.int64),
        np.where(pol[row] == 1, 1, -1).astype(np.int8),
    )


def inspect_raw(path: str | Path) -> tuple[str, tuple[int, int] | None, int]:
    """Header-level checks of a Prophesee ``.raw`` file, without decoding it.

    Returns the EVT version, the sensor (H, W) if the header gives it, and the byte offset of
    the event words. Refused with a :class:`DataError` naming the file: no ``%`` header or an
    unknown EVT version, a bad sensor size, a header-only file (no event words), and a stream
    cut inside a word (a truncated recording: a copy interrupted, a disk full).
    """
    path = Path(path)
    head, off = read_header(path)
    ver = evt_version(head)
    if not (ver.startswith("2.0") or ver.startswith("3")):
        raise DataError(f"{path}: header: expected '% evt 2.0' or '% evt 3.0' (got {ver or 'no evt line'})")
    size = sensor_size_from_header(head, path)
    nbytes = path.stat().st_size - off
    word = 4 if ver.startswith("2.0") else 2
    if nbytes <= 0:
        raise DataError(f"{path}: EVT {ver} data: expected event words after the header (the file holds only its header)")
    if nbytes % word:
        raise DataError(
            f"{path}: EVT {ver} data: expected whole {word}-byte words (got {nbytes % word} trailing byte(s): "
            "the recording is truncated)"
        )
    return ver, size, off


def read_raw(path: str | Path) -> tuple[EventChunk, tuple[int, int] | None]:
    """Decode a whole Prophesee ``.raw`` file (EVT 2.0 or 3.0); returns events and (H, W) if known.

    Besides :func:`inspect_raw`'s checks, a file that decodes to no event and events outside
    the sensor the header declares are refused with a :class:`DataError` naming the file.
    """
    path = Path(path)
    ver, size, off = inspect_raw(path)
    data = np.fromfile(path, dtype=np.uint8, offset=off)
    ev = decode_evt2(data.view("<u4")) if ver.startswith("2.0") else decode_evt3(data.view("<u2"))
    if len(ev) == 0:
        raise DataError(f"{path}: EVT {ver} data: expected at least one CD event after a time-high word (decoded none)")
    if size is not None:
        h, w = size
        for k, lim in (("x", w), ("y", h)):
            a = getattr(ev, k)
            if int(a.max()) >= lim:
                raise DataError(f"{path}: EVT {ver} {k}: expected 0 <= {k} < {lim} (header sensor size), got up to {int(a.max())}")
    return ev, size


def raw_to_h5(src: str | Path, dst: str | Path, sensor_size: tuple[int, int] | None = None) -> Path:
    """Convert a Prophesee ``.raw`` file into the seed's HDF5 layout (``events/t,x,y,p``, p in {0, 1})."""
    from neurotrain.tasks.deflare.h5write import EventWriter

    ev, size = read_raw(src)
    size = sensor_size or size
    attrs = {"source": str(Path(src).name)}
    if size is not None:
        attrs["sensor_size"] = list(size)
    order = np.argsort(ev.t, kind="stable")  # EVT streams are time-ordered up to µs jitter of vectors
    with EventWriter(dst, attrs=attrs) as w:
        w.append(ev.t[order], ev.x[order], ev.y[order], ev.p[order])
    return Path(dst)
