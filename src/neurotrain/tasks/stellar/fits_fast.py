"""A NumPy-only reader of the two standard LAMOST FITS layouts, about 20x faster than astropy per file.

Reading millions of LAMOST spectra is limited by per-file overhead: ``astropy.io.fits.open`` builds
HDU objects, parses every card into a ``Header`` and wraps the table in a ``FITS_rec``, several
milliseconds per 110 kB file. Here the FITS standard (Pence et al. 2010, A&A 524, A42) is applied
directly: 2880-byte blocks, 80-character ``KEY     = value / comment`` cards up to ``END``, big-endian
data. Only what LAMOST writes is handled:

* newer layout (DR8+): a primary HDU without data, then a ``BINTABLE`` whose one row holds vector
  columns (``TFORMn`` = ``<n>E``/``D``/``J``/``I``/``K``/``B``, no ``TSCALn``/``TZEROn``, no heap);
* older layout (DR1-DR7): a 2-D primary image (BITPIX -32/-64/16/32, no ``BSCALE``/``BZERO``).

Anything else (scaled columns, variable-length arrays, tile compression, a malformed card) returns
``None`` and the caller falls back to astropy, so this path changes speed, never results: the test
suite compares both readers pixel by pixel on real LAMOST files.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 2880
CARD = 80
_TFORM = {"E": ">f4", "D": ">f8", "J": ">i4", "I": ">i2", "K": ">i8", "B": "u1"}
_BITPIX = {-32: ">f4", -64: ">f8", 16: ">i2", 32: ">i4", 8: "u1", 64: ">i8"}


class Unsupported(Exception):
    """The file is valid FITS perhaps, but not one of the two plain layouts: use astropy."""


def _value(raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith("'"):
        # a quoted string; '' inside is an escaped quote; trailing blanks are not significant
        parts, i = [], 1
        while True:
            j = raw.find("'", i)
            if j < 0:  # unterminated: take the rest
                parts.append(raw[i:])
                break
            if raw[j + 1 : j + 2] == "'":
                parts.append(raw[i : j + 1])
                i = j + 2
                continue
            parts.append(raw[i:j])
            break
        return "".join(parts).rstrip()
    raw = raw.split("/", 1)[0].strip()
    if raw == "T":
        return True
    if raw == "F":
        return False
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw.replace("D", "E"))
    except ValueError:
        raise Unsupported(f"card value {raw!r}") from None


#: keywords that describe the data layout: always parsed
_STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "XTENSION", "PCOUNT", "GCOUNT", "TFIELDS", "TFORM", "TTYPE",
               "TSCAL", "TZERO", "BSCALE", "BZERO", "EXTNAME")


def parse_header(buf: memoryview | bytes, start: int,
                 wanted: frozenset[str] | set[str] | None = None) -> tuple[dict[str, Any], int]:
    """Cards from ``start`` up to ``END`` -> (dict, offset of the data after the header's blocks).
    With ``wanted``, only those keywords and the structural ones are parsed (most of the time of a
    read goes into the ~120 other cards of a LAMOST header)."""
    out: dict[str, Any] = {}
    pos = start
    n = len(buf)
    while True:
        if pos + BLOCK > n:
            raise EOFError("header runs past the end of the file")
        block = bytes(buf[pos : pos + BLOCK]).decode("ascii", errors="replace")
        pos += BLOCK
        for i in range(0, BLOCK, CARD):
            card = block[i : i + CARD]
            key = card[:8].rstrip()
            if key == "END":
                return out, pos
            if card[8:10] == "= " and key and (wanted is None or key in wanted or key.startswith(_STRUCTURAL)):
                out[key] = _value(card[10:])


def _data_bytes(h: dict[str, Any]) -> int:
    naxis = int(h.get("NAXIS", 0))
    if naxis == 0:
        return 0
    size = abs(int(h["BITPIX"])) // 8
    for i in range(1, naxis + 1):
        size *= int(h[f"NAXIS{i}"])
    return size + int(h.get("PCOUNT", 0))


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def read_raw(path: Path, wanted: frozenset[str] | set[str] | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Primary header (only ``wanted`` keywords besides the structural ones, all when None), named
    arrays and the layout (``"table"``/``"image"``).

    Raises ``Unsupported`` (use astropy), ``EOFError`` (truncated) or ``OSError``.
    """
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if not data.startswith(b"SIMPLE  ="):
        raise Unsupported("no SIMPLE card")
    buf = memoryview(data)
    h0, pos = parse_header(buf, 0, wanted)
    n0 = _data_bytes(h0)
    if n0:
        if int(h0.get("NAXIS", 0)) != 2 or h0.get("BSCALE", 1) != 1 or h0.get("BZERO", 0) != 0:
            raise Unsupported("primary image is not a plain 2-D array")
        dt = _BITPIX.get(int(h0["BITPIX"]))
        if dt is None:
            raise Unsupported(f"BITPIX {h0['BITPIX']}")
        if pos + n0 > len(data):
            raise EOFError(f"primary data need {n0} bytes, the file ends after {len(data) - pos}")
        img = np.frombuffer(data, dtype=dt, count=n0 // np.dtype(dt).itemsize, offset=pos)
        img = img.reshape(int(h0["NAXIS2"]), int(h0["NAXIS1"]))
        return h0, {"image": img}, "image"
    # newer layout: the first BINTABLE extension
    while pos < len(data):
        h, dpos = parse_header(buf, pos, frozenset())
        nbytes = _data_bytes(h)
        if h.get("XTENSION") == "BINTABLE":
            if dpos + nbytes > len(data):
                raise EOFError(f"table data need {nbytes} bytes, the file ends after {len(data) - dpos}")
            return h0, _table_columns(h, data, dpos), "table"
        pos = dpos + _padded(nbytes)
    raise Unsupported("no binary table and no primary image")


def _table_columns(h: dict[str, Any], data: bytes, dpos: int) -> dict[str, np.ndarray]:
    if int(h.get("PCOUNT", 0)) or int(h.get("NAXIS2", 0)) < 1:
        raise Unsupported("heap or empty table")
    row_bytes = int(h["NAXIS1"])
    fields = []
    for i in range(1, int(h["TFIELDS"]) + 1):
        if f"TSCAL{i}" in h or f"TZERO{i}" in h:
            raise Unsupported("scaled column")
        form = str(h[f"TFORM{i}"]).strip()
        code = form[-1]
        rep = int(form[:-1]) if form[:-1] else 1
        if code not in _TFORM:
            raise Unsupported(f"TFORM {form}")
        fields.append((str(h.get(f"TTYPE{i}", f"COL{i}")).strip().upper(), _TFORM[code], rep))
    dt = np.dtype([(name, t, (rep,)) for name, t, rep in fields])
    if dt.itemsize != row_bytes:
        raise Unsupported("row size does not match the column formats")
    row = np.frombuffer(data, dtype=dt, count=1, offset=dpos)[0]
    return {name: row[name] for name, _, _ in fields}


def _card(key: str, value: Any) -> str:
    """One 80-character header card (FITS 4.0 section 4.2: fixed format, strings quoted from column 11,
    logical and numeric values right-justified to column 30)."""
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, np.integer)):
        text = f"{int(value):>20}"
    elif isinstance(value, (float, np.floating)):
        text = f"{float(value):>20.12G}"
    else:
        s = str(value).replace("'", "''")
        text = f"'{s:<8}'"
    card = f"{key:<8}= {text}"
    if len(card) > CARD:
        raise ValueError(f"header card {key} is longer than 80 characters")
    return f"{card:<80}"


def _header_bytes(cards: list[str]) -> bytes:
    text = "".join(cards) + f"{'END':<80}"
    return text.ljust(_padded(len(text))).encode("ascii")


def write_table_layout(path: Path, header: dict[str, Any], columns: dict[str, np.ndarray]) -> None:
    """Write the newer LAMOST layout: an empty primary HDU carrying ``header`` and a binary table ``COADD`` with
    one row of float32 vector columns (the layout :func:`read_raw` and astropy read back identically)."""
    cols = {k: np.ascontiguousarray(v, dtype=">f4").reshape(-1) for k, v in columns.items()}
    primary = [_card("SIMPLE", True), _card("BITPIX", 8), _card("NAXIS", 0), _card("EXTEND", True)]
    primary += [_card(k, v) for k, v in header.items()]
    row = sum(v.nbytes for v in cols.values())
    table = [_card("XTENSION", "BINTABLE"), _card("BITPIX", 8), _card("NAXIS", 2), _card("NAXIS1", row),
             _card("NAXIS2", 1), _card("PCOUNT", 0), _card("GCOUNT", 1), _card("TFIELDS", len(cols))]
    for i, (name, v) in enumerate(cols.items(), start=1):
        table += [_card(f"TTYPE{i}", name), _card(f"TFORM{i}", f"{v.size}E")]
    table.append(_card("EXTNAME", "COADD"))
    data = b"".join(v.tobytes() for v in cols.values())
    path.write_bytes(_header_bytes(primary) + _header_bytes(table) + data + b"\0" * (_padded(len(data)) - len(data)))
