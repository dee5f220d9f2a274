"""Text spectrum formats parsed here: ORTEC / IAEA SPE (:func:`read_spe`) and IEC 1455 (:func:`read_iec1455`).

Why our own and not becquerel's parsers: importing becquerel compiles its numba kernels (~25 s on a 2-core
machine, before the first file is read), and its SPE parser refuses a valid file without ``$DATE_MEA`` ("Start time not found", also
its answer to a 0-byte file) and grows its counts array one channel at a time (quadratic in the channel
count); SpecUtils accepts a truncated ``$DATA`` block as a shorter spectrum and substitutes a default
calibration for a missing one. The SPE layout is simple and documented (ORTEC "Software File Structure
Manual", $-keyword sections): keyword lines ``$NAME:`` followed by their value lines.

Sections read: ``$DATA:`` (``first last`` channel numbers, then ``last - first + 1`` counts, one or more per
line), ``$MEAS_TIM:`` (live and real time in s, optional), ``$DATE_MEA:`` (optional, kept as text),
``$SPEC_ID:`` (description), ``$MCA_CAL:`` (number of coefficients, then c0 c1 [c2] [unit]) or ``$ENER_FIT:``
(c0 c1); energy of the lower edge of channel i = c0 + c1 i + c2 i^2 keV (becquerel's and SpecUtils'
convention).

IEC 1455 (IEC 61455, "MCA histogram data interchange format", 1995): 'A004'-prefixed records; record 2 holds
live time, real time (s) and the channel count, record 4 the energy calibration coefficients (keV), records
59 and on the channel number followed by five counts each.

Every problem is one :class:`DataError` line naming the file and the section or record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurotrain.errors import DataError

_KEY = re.compile(r"^\$([A-Za-z0-9_]+):?[ \t]*$", re.MULTILINE)


@dataclass
class SpeContent:
    """What an SPE file holds. ``calibration`` is None with ``calibration_state`` 'missing' or 'zero'."""

    counts: np.ndarray
    livetime_s: float | None
    realtime_s: float | None
    calibration: list[float] | None
    calibration_state: str  # 'present' | 'zero' | 'missing'
    first_channel: int = 0  # the calibration's channel number of counts[0]
    meta: dict[str, str] = field(default_factory=dict)


def _sections(text: str) -> dict[str, str]:
    """``{KEY: value text}`` for every ``$KEY:`` line (the first occurrence of a key wins)."""
    marks = list(_KEY.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):  # a dozen sections per file
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(m.group(1).upper(), text[m.end():end])
    return out


def _numbers(path: Path, section: str, text: str, what: str) -> list[float]:
    out = []
    for tok in text.split():
        try:
            out.append(float(tok))
        except ValueError:
            raise DataError(f"{path}: ${section}: expected {what} (got {tok[:20]!r})") from None
    return out


def _calibration(path: Path, sec: dict[str, str]) -> tuple[list[float] | None, str]:
    if "MCA_CAL" in sec:
        lines = sec["MCA_CAL"].strip().splitlines()
        if len(lines) < 2:
            raise DataError(f"{path}: $MCA_CAL: expected a coefficient count and a line of coefficients (got {len(lines)} line(s))")
        n = _numbers(path, "MCA_CAL", lines[0], "the number of coefficients")
        if len(n) != 1 or n[0] != int(n[0]) or not 1 <= n[0] <= 8:
            raise DataError(f"{path}: $MCA_CAL: expected a coefficient count 1-8 (got {lines[0].strip()[:20]!r})")
        toks = lines[1].split()[: int(n[0])]
        coeffs = _numbers(path, "MCA_CAL", " ".join(toks), "numeric coefficients")
        if len(coeffs) != int(n[0]):
            raise DataError(f"{path}: $MCA_CAL: expected {int(n[0])} coefficients (got {len(coeffs)})")
    elif "ENER_FIT" in sec:
        toks = sec["ENER_FIT"].split()[:2]
        coeffs = _numbers(path, "ENER_FIT", " ".join(toks), "offset and gain")
        if len(coeffs) != 2:
            raise DataError(f"{path}: $ENER_FIT: expected offset and gain (got {len(coeffs)} number(s))")
    else:
        return None, "missing"
    if all(c == 0 for c in coeffs):
        return None, "zero"
    return coeffs, "present"


def _text_lines_of(path: Path, fmt: str, expected: str) -> str:
    """The file as text with newlines normalised; empty or binary content is refused naming ``fmt``."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty ({len(raw)} bytes; expected {expected})")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: cannot parse as {fmt}: binary content (expected {expected})")
    return raw.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")


def read_spe(path: Path, max_channels: int) -> SpeContent:
    """Parse an ORTEC / IAEA SPE text file; the ``$DATA`` block must hold exactly the declared channels, at most
    ``max_channels`` (checked before the counts are parsed)."""
    text = _text_lines_of(path, "SPE", "an SPE text file with a $DATA: section")
    sec = _sections(text)
    if "DATA" not in sec:
        raise DataError(f"{path}: $DATA: section not found (expected an SPE text file with $DATA:)")
    head, _, body = sec["DATA"].lstrip("\r\n").partition("\n")
    rng = _numbers(path, "DATA", head, "the first and last channel numbers")
    if len(rng) != 2 or any(v != int(v) for v in rng) or rng[0] < 0 or rng[1] < rng[0]:
        raise DataError(f"{path}: $DATA: expected 'first last' channel numbers with 0 <= first <= last (got {head.strip()[:30]!r})")
    declared = int(rng[1] - rng[0] + 1)
    if declared > max_channels:
        raise DataError(f"{path}: $DATA: expected at most {max_channels} channels (declared {declared})")
    toks = body.split()
    if len(toks) != declared:
        raise DataError(f"{path}: $DATA: expected {declared} counts (channels {int(rng[0])}-{int(rng[1])}), "
                        f"found {len(toks)}{' (truncated file?)' if len(toks) < declared else ''}")
    try:
        counts = np.array(toks, dtype=np.float64)
    except ValueError:
        bad = next(t for t in toks if not _is_number(t))
        raise DataError(f"{path}: $DATA: expected numeric counts (got {bad[:20]!r})") from None
    live = real = None
    if "MEAS_TIM" in sec:
        t = _numbers(path, "MEAS_TIM", sec["MEAS_TIM"], "live and real time in s")
        if len(t) != 2 or not all(np.isfinite(t)) or t[0] < 0 or t[1] < 0:
            raise DataError(f"{path}: $MEAS_TIM: expected live and real time >= 0 s (got {sec['MEAS_TIM'].strip()[:40]!r})")
        live, real = (t[0] or None), (t[1] or None)
    cal, state = _calibration(path, sec)
    meta = {"description": sec.get("SPEC_ID", "").strip().splitlines()[0] if sec.get("SPEC_ID", "").strip() else "",
            "start_time": sec.get("DATE_MEA", "").strip()}
    return SpeContent(counts, live, real, cal, state, int(rng[0]), meta)


def read_iec1455(path: Path, max_channels: int) -> SpeContent:
    """Parse an IEC 1455 file: the spectral records must hold exactly the declared channels, at most
    ``max_channels`` (checked before the counts are parsed)."""
    text = _text_lines_of(path, "IEC 1455", "IEC 1455 'A004' text records")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines or not all(ln.startswith("A004") for ln in lines):
        bad = next((i for i, ln in enumerate(lines) if not ln.startswith("A004")), 0)
        raise DataError(f"{path}: record {bad + 1}: expected an 'A004' IEC 1455 record (got {lines[bad][:20]!r})")
    if len(lines) <= 58:
        raise DataError(f"{path}: records: expected 58 header records and the spectral data (got {len(lines)} records; truncated file?)")
    head = _numbers(path, "record 2", lines[1][4:], "live time, real time and channel count")
    if len(head) != 3 or head[2] != int(head[2]) or head[2] < 1:
        raise DataError(f"{path}: record 2: expected live time, real time and channel count (got {lines[1][4:].strip()[:40]!r})")
    declared = int(head[2])
    if declared > max_channels:
        raise DataError(f"{path}: record 2: expected at most {max_channels} channels (declared {declared})")
    data = " ".join(ln[4:] for ln in lines[58:]).split()
    # each data record: channel number, then up to five counts
    rec_tokens = np.array([len(ln[4:].split()) for ln in lines[58:]])
    if np.any(rec_tokens < 2) or np.any(rec_tokens > 6):
        bad = int(np.argmax((rec_tokens < 2) | (rec_tokens > 6)))
        raise DataError(f"{path}: record {59 + bad}: expected a channel number and 1-5 counts (got {rec_tokens[bad]} fields)")
    is_count = np.ones(len(data), dtype=bool)
    is_count[np.concatenate([[0], np.cumsum(rec_tokens)[:-1]])] = False
    vals = _numbers(path, "spectral data", " ".join(data), "numeric counts")
    counts = np.asarray(vals)[is_count]
    if counts.size < declared:
        raise DataError(f"{path}: spectral data: expected {declared} counts, found {counts.size} (truncated file?)")
    counts = counts[:declared]  # the last record is padded with zeros to five counts
    # a 6-character channel number and 10-character count fields (as this file's first data record shows): a
    # last record whose length breaks that was cut inside a field
    widths = [len(ln[4:].rstrip()) - 6 for ln in (lines[58], lines[-1])]
    if widths[0] % 10 == 0 and widths[1] % 10:
        raise DataError(f"{path}: record {len(lines)}: expected 10-character count fields (truncated file?)")
    cal = _numbers(path, "record 4", lines[3][4:], "energy calibration coefficients")
    cal = cal[:4]
    while cal and cal[-1] == 0:  # trailing zero coefficients are unused orders
        cal.pop()
    # IEC writers put zeros where they have no calibration: that is a missing one
    state = "present" if cal else "missing"
    live, real = head[0], head[1]
    if not (np.isfinite(live) and np.isfinite(real)) or live < 0 or real < 0:
        raise DataError(f"{path}: record 2: expected live and real time >= 0 s (got {live}, {real})")
    return SpeContent(counts, live or None, real or None, cal or None, state, 0, {"description": lines[5][4:].strip()})


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True
