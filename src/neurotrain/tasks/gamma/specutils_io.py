"""Gamma spectrum files through SandiaSpecUtils (PyPI ``sandiaspecutils``, the reader/writer behind InterSpec):
read N42-2006 / N42-2012, GADRAS PCF, Canberra CNF, ORTEC SPC and CHN, Amptek MCA, TKA, PHD, LZS, RadiaCode XML and SpecUtils JSON;
write N42-2012.

Checks added here (SpecUtils accepts what it can): an XML file must end with its root element's closing tag (a
truncated N42 otherwise reads as a shorter spectrum); a calibration SpecUtils had to invent
(``UnspecifiedUsingDefaultPolynomial``) counts as missing. SpecUtils reports parse failures on the C++
standard error stream too; that stream is silenced during a read, the error comes back as one
:class:`DataError` line.

Energy convention: SpecUtils' lower channel energies (N+1 values, the last the upper edge of the last
channel) are the bin edges; a polynomial calibration is evaluated at the channel's lower edge, as becquerel
and ORTEC do. SpecUtils stores counts and coefficients as float32: integer counts up to 2^24 = 16,777,216 per
channel and coefficients to 7 significant digits survive a round trip exactly.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurotrain.errors import DataError

#: suffix -> (SpecUtils parser names tried in order, format name for messages)
SPECUTILS_SUFFIXES: dict[str, tuple[tuple[str, ...], str]] = {
    ".n42": (("N42_2012",), "N42"),
    ".xml": (("N42_2012", "RadiaCode", "ScanDataXml"), "N42 / RadiaCode XML"),
    ".pcf": (("Pcf",), "GADRAS PCF"),
    ".cnf": (("Cnf",), "Canberra CNF"),
    ".spc": (("Spc",), "ORTEC SPC"),
    ".chn": (("Chn",), "ORTEC CHN"),
    ".mca": (("AmptekMca",), "Amptek MCA"),
    ".tka": (("Tka",), "TKA"),
    ".phd": (("Phd",), "PHD"),
    ".lzs": (("Lzs",), "LZS"),
    ".json": (("Json",), "SpecUtils JSON"),
}

#: detector kinds as named by N42's RadDetectorKindCode and SpecUtils' DetectorType, to the crystal they mean
#: (SpecUtils DetectorType enumeration; N42-2012 schema, ANSI N42.42-2012, RadDetectorKindCode)
_KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"hpge|falcon|detective|fulcrum|germanium|(?<![a-z])ge(?![a-z])", "HPGe"),
    (r"labr", "LaBr3"),
    (r"cebr", "CeBr3"),
    (r"(?<![a-z])csi|csi(?![a-z])|kromekd3s|kromekd5", "CsI"),
    (r"(?<![a-z])nai|nai(?![a-z])", "NaI"),
    (r"gagg", "GAGG"),
    (r"lyso", "LYSO"),
    (r"czt|interceptor|kromekgr1", "CZT"),
)


@dataclass
class SpecUtilsSpectrum:
    """One spectrum as SpecUtils read it (edges None when the file has no usable calibration)."""

    counts: np.ndarray
    edges_kev: np.ndarray | None
    livetime_s: float | None
    realtime_s: float | None
    detector_kind: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (SpecUtils' C++ diagnostics) for the block; Python's errors still raise."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _check_xml_complete(path: Path) -> None:
    """A truncated XML file lacks its root's closing tag; SpecUtils would read what is there."""
    with open(path, "rb") as f:
        head = f.read(4096)
        f.seek(max(0, path.stat().st_size - 4096))
        tail = f.read()
    text = head.decode("latin-1")
    m = re.search(r"<(?![?!])([A-Za-z_][\w.:-]*)", re.sub(r"<!--.*?-->", "", text, flags=re.S))
    if m is None:
        raise DataError(f"{path}: XML: no root element found (expected an N42 / XML spectrum file)")
    if f"</{m.group(1)}>".encode() not in tail:
        raise DataError(f"{path}: XML: root element <{m.group(1)}> is not closed (truncated file?)")


_CHANNEL_DATA = re.compile(rb"<(?:\w+:)?ChannelData\b([^>]*)>(.*?)</(?:\w+:)?ChannelData>", re.S)


def _check_channel_data(path: Path) -> None:
    """Every N42 ``ChannelData`` block holds finite numbers only: SpecUtils stops at the first token it cannot
    read (``NaN``, text) and returns the channels before it as the whole spectrum."""
    raw = path.read_bytes()
    for m in _CHANNEL_DATA.finditer(raw):  # one block per spectrum record
        toks = m.group(2).split()
        try:
            vals = np.array(toks, dtype=np.float64)
        except ValueError:
            bad = next(t for t in toks if not re.fullmatch(rb"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", t))
            raise DataError(f"{path}: ChannelData: expected numeric counts (got {bad[:20].decode('latin-1')!r})") from None
        if not np.all(np.isfinite(vals)):
            raise DataError(f"{path}: ChannelData: non-finite counts (NaN or inf) in {int((~np.isfinite(vals)).sum())} channel(s)")


def _check_binary_size(path: Path) -> None:
    """Truncations SpecUtils reads without a word: an ORTEC SPC file is whole 128-byte records (a cut inside the
    last record loses its last counts); an ORTEC CHN file is a 32-byte header, 4 bytes per channel and, when
    present, a 512-byte trailer holding the calibration (ORTEC "Software File Structure Manual")."""
    size = path.stat().st_size
    suffix = path.suffix.lower()
    if suffix == ".spc" and size % 128:
        raise DataError(f"{path}: file size: expected whole 128-byte SPC records (got {size} bytes; truncated file?)")
    if suffix == ".chn" and size >= 32:
        with open(path, "rb") as f:
            head = f.read(32)
        n = int.from_bytes(head[30:32], "little")
        data_end = 32 + 4 * n
        if data_end < size < data_end + 512:
            raise DataError(f"{path}: trailer: expected a 512-byte calibration trailer after the {n} channels "
                            f"(got {size - data_end} bytes; truncated file?)")


def detector_kind(*names: str) -> str | None:
    """The crystal a detector description names ('HPGe', 'NaI', 'CsI', 'LaBr3', ...), or None."""
    text = " ".join(n for n in names if n).lower()
    for pattern, kind in _KIND_PATTERNS:  # a handful of patterns
        if re.search(pattern, text):
            return kind
    return None


def _text(getter: Any) -> str:
    """A text field of the file; a field that is not UTF-8 (a corrupted or foreign header) reads as ''."""
    try:
        return str(getter() or "")
    except UnicodeDecodeError:
        return ""


def read_specutils(path: Path) -> SpecUtilsSpectrum:
    """Read one spectrum with SpecUtils. A file of several records (detectors or samples) gives the sum of its
    foreground gamma records (SpecUtils rebins them to a common binning); background and calibration records
    are left out unless they are all there is."""
    import SpecUtils as su

    parsers, label = SPECUTILS_SUFFIXES[path.suffix.lower()]
    if path.suffix.lower() in (".n42", ".xml"):
        _check_xml_complete(path)
        _check_channel_data(path)
    _check_binary_size(path)
    sf = su.SpecFile()
    first_error = ""
    for name in parsers:  # one to three parsers
        try:
            with _quiet_stderr():
                sf.loadFile(str(path), getattr(su.ParserType, name), "")
            break
        except Exception as exc:  # noqa: BLE001 - SpecUtils raises RuntimeError on any parse failure
            first_error = first_error or (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(str(path), "file")
    else:
        raise DataError(f"{path}: cannot parse as {label}: {first_error}")
    gamma = [m for m in sf.measurements() if m.numGammaChannels() > 0]
    if not gamma:
        raise DataError(f"{path}: counts: no gamma spectrum in the file")
    fore = [m for m in gamma if m.sourceType() not in (su.SourceType.Background, su.SourceType.Calibration,
                                                       su.SourceType.IntrinsicActivity)] or gamma
    if len(fore) == 1:
        m = fore[0]
    else:
        try:
            m = sf.sumMeasurements(sorted({x.sampleNumber() for x in fore}), sorted({x.detectorName() for x in fore}))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: counts: cannot sum the file's {len(fore)} spectra ({exc})") from None
    counts = np.asarray(m.gammaCounts(), dtype=np.float64)
    edges = None
    model = m.energyCalibrationModel()
    if model not in (su.EnergyCalType.UnspecifiedUsingDefaultPolynomial, su.EnergyCalType.InvalidEquationType):
        e = np.asarray(m.channelEnergies(), dtype=np.float64)
        edges = e if e.size == counts.size + 1 else None
    live, real = float(m.liveTime()), float(m.realTime())
    kind = detector_kind(str(sf.detectorType()).split(".")[-1], _text(m.detectorType), _text(sf.instrumentType),
                         _text(sf.instrumentModel), _text(m.detectorName))
    meta = {"description": _text(m.title), "calibration_model": str(model).split(".")[-1],
            "calibration": [float(c) for c in m.calibrationCoeffs()] if edges is not None else [],
            "records": len(fore), "instrument": " ".join(x for x in (_text(sf.manufacturer), _text(sf.instrumentModel)) if x)}
    return SpecUtilsSpectrum(counts, edges, live if live > 0 else None, real if real > 0 else None, kind, meta)


def write_n42(path: Path, counts: np.ndarray, calibration: list[float], livetime_s: float | None = None,
              realtime_s: float | None = None, title: str = "", remarks: list[str] | None = None,
              start_time: _dt.datetime | None = None) -> Path:
    """Write one spectrum as N42-2012 (atomically) with its polynomial energy calibration (keV at the lower edge
    of channel i = c0 + c1 i + c2 i^2 ...), live and real time (s), a title and remarks: InterSpec and every
    SpecUtils-based tool open it. (SpecUtils' Python binding cannot take lower channel energies, so a
    non-polynomial axis has to be fitted by the caller.)"""
    import SpecUtils as su

    from neurotrain.io.atomic import atomic_path

    c = np.asarray(counts, dtype=np.float64)
    m = su.Measurement.new()
    m.setGammaCounts(c.tolist(), float(livetime_s or 0.0), float(realtime_s or livetime_s or 0.0))
    try:
        m.setEnergyCalibration(su.EnergyCalibration.fromPolynomial(int(c.size), [float(v) for v in calibration]))
    except Exception as exc:  # noqa: BLE001 - SpecUtils refuses unreasonable coefficients with RuntimeError
        raise DataError(f"{path}: calibration: SpecUtils refuses {list(calibration)} for {c.size} channels ({exc})") from None
    m.setTitle(title)
    m.setRemarks(list(remarks or []))
    m.setSourceType(su.SourceType.Foreground)
    if start_time is not None:
        m.setStartTime(start_time)
    sf = su.SpecFile()
    sf.addMeasurement(m, True)
    with atomic_path(path) as tmp:
        try:
            with _quiet_stderr():
                sf.writeToFile(str(tmp), sf.sampleNumbers(), sf.detectorNames(), su.SaveSpectrumAsType.N42_2012)
        except Exception as exc:  # noqa: BLE001 - SpecUtils raises RuntimeError on any write failure
            raise DataError(f"{path}: cannot write N42-2012: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    return path
