"""Gamma-spectrum files: read every format a gamma spectroscopist meets, with its energy calibration;
resample onto a model grid; write CSV, HDF5, IEC 1455 and N42-2012 results.

Which reader handles which extension:

| extension | format | reader |
| --- | --- | --- |
| ``.spe`` | ORTEC / IAEA SPE text | own (:mod:`.text_formats`): becquerel refuses files without ``$DATE_MEA``, SpecUtils reads truncated ones |
| ``.iec`` | IEC 1455 | own (:mod:`.text_formats`; SpecUtils has no IEC 1455 parser) |
| ``.cnf`` ``.spc`` | Canberra CNF, ORTEC SPC | SandiaSpecUtils (:mod:`.specutils_io`) |
| ``.n42`` ``.xml`` ``.pcf`` ``.chn`` ``.mca`` ``.tka`` ``.phd`` ``.lzs`` ``.json`` | N42-2006/2012, RadiaCode XML, GADRAS PCF, ORTEC CHN, Amptek MCA, TKA, PHD, LZS, SpecUtils JSON | SandiaSpecUtils (:mod:`.specutils_io`, InterSpec's reader) |

becquerel (a dependency still) is no longer used here: importing it compiles its numba kernels, ~25 s on
a 2-core machine before the first file is read; SpecUtils reads CNF and SPC in milliseconds and gives the same
counts and calibration on the sample files (tests/tasks/gamma/test_formats.py).
| ``.csv`` | energy/channel + counts columns | own |
| ``.h5`` ``.hdf5`` | ``counts`` + ``bin_edges_kev`` / ``energy_kev`` / ``calibration`` attribute | own (h5py) |

Every problem (missing, empty or oversized file, unknown suffix, unparsable or truncated content, zero,
missing, non-increasing or implausible calibration, too few or too many channels, negative or non-finite
counts, non-numeric datasets) is one :class:`~neurotrain.errors.DataError` line naming the file and the
field, with what was expected and what was found.

Energy convention (becquerel's, SpecUtils' and ORTEC's): channel ``i`` spans raw positions [i, i+1); bin
edges in keV are the calibration polynomial evaluated at 0, 1, ..., N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurotrain.errors import DataError
from neurotrain.tasks.gamma.specutils_io import SPECUTILS_SUFFIXES, write_n42

__all__ = ["GammaSpectrum", "SUFFIXES", "read_spectrum", "resample", "covered_channels", "polynomial_edges",
           "write_csv", "write_h5", "write_iec1455", "write_n42"]

SUFFIXES = {".spe": "spe", ".iec": "iec1455", ".csv": "csv", ".h5": "h5", ".hdf5": "h5",
            **{k: "specutils" for k in SPECUTILS_SUFFIXES}}
#: fewest channels a spectrum may have (a 64-channel MCA is already coarser than any scintillator peak)
MIN_CHANNELS = 64
#: most channels: twice the largest MCA in use (65,536 channels, e.g. ORTEC DSPEC, Canberra Lynx), so a
#: header declaring millions of channels is refused before anything is allocated
MAX_CHANNELS = 131_072
#: largest file read (bytes): a 131,072-channel text spectrum is ~1.5 MB, N42 with many records tens of MB
MAX_FILE_BYTES = 256 * 1024 * 1024
#: plausible energy axis (keV): gamma spectroscopy spans ~1 keV x-rays to ~10 MeV capture lines; a mean
#: gain outside 1e-4 - 1e3 keV/channel (65,536 channels over 6 keV .. 1,024 channels over 1 GeV) is a wrong
#: calibration, e.g. 1e30 keV/channel
GAIN_RANGE_KEV = (1e-4, 1e3)
ENERGY_RANGE_KEV = (-1000.0, 1e6)
#: CSV files written here carry their row count and an end line (:func:`write_csv`)
CSV_ROWS_MARK = "[rows: "
CSV_END = "# end"


@dataclass
class GammaSpectrum:
    """A measured spectrum: counts per channel, bin edges in keV, live / real time in s, and the detector
    kind the file declares ('HPGe', 'NaI', ...; None when the format does not say)."""

    path: Path
    counts: np.ndarray  # (N,) float64
    edges_kev: np.ndarray  # (N+1,)
    livetime_s: float | None = None
    realtime_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    detector_kind: str | None = None

    @property
    def centers_kev(self) -> np.ndarray:
        return 0.5 * (self.edges_kev[1:] + self.edges_kev[:-1])


def _err(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: {msg}")


def polynomial_edges(coeffs: list[float] | np.ndarray, n: int) -> np.ndarray:
    """Bin edges (keV) of ``n`` channels for E = c0 + c1 x + c2 x^2 + ... at x = 0..n."""
    x = np.arange(n + 1, dtype=np.float64)
    return np.polynomial.polynomial.polyval(x, np.asarray(coeffs, dtype=np.float64))


def _check_edges(path: Path, edges: np.ndarray, field_name: str) -> None:
    if not np.all(np.isfinite(edges)):
        raise _err(path, f"{field_name}: energy calibration gives non-finite energies")
    if np.allclose(edges, edges[0]):
        raise _err(path, f"{field_name}: energy calibration is zero (expected a gain > 0 keV/channel)")
    if np.any(np.diff(edges) <= 0):
        raise _err(path, f"{field_name}: energy calibration is not increasing over the {len(edges) - 1} channels")
    gain = (edges[-1] - edges[0]) / (len(edges) - 1)
    lo, hi = ENERGY_RANGE_KEV
    if not (GAIN_RANGE_KEV[0] <= gain <= GAIN_RANGE_KEV[1]) or edges[0] < lo or edges[-1] > hi:
        raise _err(path, f"{field_name}: expected a gain of {GAIN_RANGE_KEV[0]:g}-{GAIN_RANGE_KEV[1]:g} keV/channel and "
                         f"energies within {lo:g}..{hi:g} keV (got {gain:.3g} keV/channel, {edges[0]:.4g}..{edges[-1]:.4g} keV)")


def _check_counts(path: Path, counts: np.ndarray, expected_channels: int | None) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64).ravel()
    if counts.size < MIN_CHANNELS:
        raise _err(path, f"counts: expected at least {MIN_CHANNELS} channels, got {counts.size}")
    if counts.size > MAX_CHANNELS:
        raise _err(path, f"counts: expected at most {MAX_CHANNELS} channels, got {counts.size}")
    if expected_channels is not None and counts.size != expected_channels:
        raise _err(path, f"counts: expected {expected_channels} channels, got {counts.size}")
    if not np.all(np.isfinite(counts)):
        raise _err(path, f"counts: non-finite values (NaN or inf) in {int((~np.isfinite(counts)).sum())} channel(s)")
    if np.any(counts < 0):
        raise _err(path, f"counts: negative values (minimum {counts.min():g})")
    if counts.sum() <= 0:
        raise _err(path, "counts: the spectrum is empty (all channels zero)")
    return counts


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """CSV: one column of counts, or (energy_kev, counts), or (channel, counts); '#' comments, optional header."""
    rows: list[list[float]] = []
    header: list[str] | None = None
    text = path.read_text(errors="replace")
    if "\x00" in text[:65536]:
        raise _err(path, "not a CSV text file (binary content)")
    if text.count("\n") > MAX_CHANNELS + 1000:
        raise _err(path, f"counts: expected at most {MAX_CHANNELS} rows, got {text.count(chr(10))} lines")
    lines = text.splitlines()
    declared = None
    if lines and lines[0].startswith("#") and CSV_ROWS_MARK in lines[0]:
        tail = lines[0].rsplit(CSV_ROWS_MARK, 1)[1].rstrip().rstrip("]")
        declared = int(tail) if tail.isdigit() else None
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = [p.strip() for p in s.replace(";", ",").split(",")]
        try:
            rows.append([float(p) for p in parts])
        except ValueError:  # a header line, or text where a number belongs
            if header is None and not rows:
                header = [p.lower() for p in parts]
                continue
            raise _err(path, f"line {i + 1}: expected numbers, got {s[:40]!r}") from None
    if declared is not None and (len(rows) != declared or lines[-1].strip() != CSV_END):
        raise _err(path, f"rows: expected {declared} data rows and the closing '{CSV_END}' line "
                         f"(found {len(rows)} rows{'' if lines[-1].strip() == CSV_END else ', no end line'}; truncated file?)")
    if not rows:
        raise _err(path, "no data rows")
    width = {len(r) for r in rows}
    if len(width) != 1:
        raise _err(path, f"rows have different numbers of columns {sorted(width)}")
    arr = np.asarray(rows)
    if arr.shape[1] == 1:
        return arr[:, 0], None
    names = header or []
    ci = names.index("counts") if "counts" in names else arr.shape[1] - 1
    ei = next((names.index(n) for n in ("energy_kev", "energy", "kev") if n in names), None)
    if ei is None and "channel" not in names:
        ei = 0
    counts = arr[:, ci]
    if ei is None:
        return counts, None
    centers = arr[:, ei]
    if centers.size < 2 or not np.all(np.isfinite(centers)):
        raise _err(path, f"energy_kev: expected at least 2 finite energies (got {centers.size} rows)")
    if np.any(np.diff(centers) <= 0):
        raise _err(path, "energy_kev: column is not increasing")
    mids = 0.5 * (centers[1:] + centers[:-1])
    edges = np.concatenate([[centers[0] - (mids[0] - centers[0])], mids, [centers[-1] + (centers[-1] - mids[-1])]])
    return counts, edges


def _h5_numeric(path: Path, f: Any, key: str, max_size: int) -> np.ndarray:
    """A numeric dataset as float64, refused when it holds strings / compounds or more than ``max_size`` values
    (checked on the declared shape, before reading)."""
    import h5py

    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise _err(path, f"{key}: expected a dataset (got a {type(ds).__name__})")
    if ds.dtype.kind not in "iuf":
        raise _err(path, f"{key}: expected numbers (got dtype {ds.dtype})")
    if ds.size > max_size:
        raise _err(path, f"{key}: expected at most {max_size} values (got shape {ds.shape})")
    return np.asarray(ds[...], dtype=np.float64)


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _err(path, f"cannot open as HDF5: {str(exc).splitlines()[0]}") from None
    try:
        with f:
            key = next((k for k in ("counts", "spectrum", "input") if k in f), None)
            if key is None:
                raise _err(path, f"no 'counts' dataset (found: {', '.join(sorted(f.keys())) or 'nothing'})")
            counts = _h5_numeric(path, f, key, MAX_CHANNELS)
            if counts.ndim == 2 and counts.shape[0] == 1:
                counts = counts[0]
            if counts.ndim != 1:
                raise _err(path, f"{key}: expected one spectrum (1-D), got shape {counts.shape}")
            edges = None
            if "bin_edges_kev" in f:
                edges = _h5_numeric(path, f, "bin_edges_kev", MAX_CHANNELS + 1).ravel()
            elif "energy_kev" in f:
                c = _h5_numeric(path, f, "energy_kev", MAX_CHANNELS).ravel()
                if c.size < 2:
                    raise _err(path, f"energy_kev: expected one energy per channel (got {c.size})")
                w = np.diff(c)
                edges = np.concatenate([[c[0] - w[0] / 2], c[:-1] + w / 2, [c[-1] + w[-1] / 2]])
            elif "energy_cal" in f.attrs or "calibration" in f.attrs:
                name = "calibration" if "calibration" in f.attrs else "energy_cal"
                try:
                    coeffs = np.atleast_1d(np.asarray(f.attrs[name], dtype=np.float64)).ravel()
                except (TypeError, ValueError):
                    raise _err(path, f"{name}: expected polynomial coefficients (numbers), got {f.attrs[name]!r:.40}") from None
                if coeffs.size < 2 or coeffs.size > 8:
                    raise _err(path, f"{name}: expected 2-8 polynomial coefficients, got {coeffs.size}")
                edges = polynomial_edges(coeffs, counts.size)
            live = None
            if "livetime" in f.attrs:
                try:
                    live = float(f.attrs["livetime"])
                except (TypeError, ValueError):
                    raise _err(path, f"livetime: expected seconds (a number), got {f.attrs['livetime']!r:.40}") from None
            return counts, edges, {"livetime": live if live and np.isfinite(live) and live > 0 else None}
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # corrupt inside a readable header
        raise _err(path, f"cannot read HDF5 content: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _missing_calibration(path: Path, state: str = "missing") -> DataError:
    what = "is zero" if state == "zero" else "is missing"
    return _err(path, f"energy calibration {what} (pass one: --opt calibration=c0,c1[,c2] for keV = c0 + c1*ch + c2*ch^2)")


def read_spectrum(path: str | Path, calibration: list[float] | None = None, expected_channels: int | None = None) -> GammaSpectrum:
    """Read one spectrum file (formats: see the module table). ``calibration`` (polynomial keV coefficients c0,
    c1, ...) overrides or supplies the file's energy calibration; without one in the file or here the read fails
    with one line. ``expected_channels`` refuses any other channel count."""
    path = Path(path)
    if not path.is_file():
        raise _err(path, "file not found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise _err(path, f"unknown spectrum format {path.suffix!r} (expected one of {', '.join(sorted(SUFFIXES))})")
    size = path.stat().st_size
    if size == 0:
        raise _err(path, f"file is empty (0 bytes; expected a {kind.upper()} spectrum)")
    if size > MAX_FILE_BYTES:
        raise _err(path, f"file size: expected at most {MAX_FILE_BYTES // 2**20} MiB for one spectrum (got {size / 2**20:.0f} MiB)")
    live = real = None
    detector: str | None = None
    meta: dict[str, Any] = {"format": kind}
    edges: np.ndarray | None = None
    if kind in ("spe", "iec1455"):
        from neurotrain.tasks.gamma.text_formats import read_iec1455, read_spe

        sp = (read_spe if kind == "spe" else read_iec1455)(path, MAX_CHANNELS)
        counts, live, real = sp.counts, sp.livetime_s, sp.realtime_s
        meta.update(sp.meta)
        if sp.calibration is not None:
            n = counts.size
            edges = polynomial_edges(sp.calibration, n + sp.first_channel)[sp.first_channel:]
            meta["calibration"] = sp.calibration
        elif calibration is None:
            raise _missing_calibration(path, sp.calibration_state)
    elif kind == "specutils":
        from neurotrain.tasks.gamma.specutils_io import read_specutils

        su = read_specutils(path)
        counts, edges, live, real, detector = su.counts, su.edges_kev, su.livetime_s, su.realtime_s, su.detector_kind
        meta.update(su.meta)
        if edges is None and calibration is None:
            if counts.size > MAX_CHANNELS:  # the channel count is the first thing wrong
                _check_counts(path, counts, expected_channels)
            raise _missing_calibration(path)
    elif kind == "csv":
        counts, edges = _read_csv(path)
    else:
        counts, edges, m = _read_h5(path)
        live = m.get("livetime")
    counts = _check_counts(path, counts, expected_channels)
    if calibration is not None:
        if len(calibration) < 2 or all(c == 0 for c in calibration):
            raise _err(path, f"calibration: expected at least offset and a non-zero gain, got {list(calibration)}")
        edges = polynomial_edges(calibration, counts.size)
        meta["calibration"] = list(calibration)
    if edges is None:
        raise _err(path, "energy calibration is missing (no energy column/dataset; pass --opt calibration=c0,c1[,c2])")
    if edges.size != counts.size + 1:
        raise _err(path, f"energy axis: expected {counts.size + 1} bin edges, got {edges.size}")
    _check_edges(path, edges, "calibration")
    for name, t in (("livetime", live), ("realtime", real)):
        if t is not None and not (np.isfinite(t) and t >= 0):
            raise _err(path, f"{name}: expected a time >= 0 s (got {t})")
    return GammaSpectrum(path, counts, edges, live, real, meta, detector)


def resample(counts: np.ndarray, edges_src: np.ndarray, edges_dst: np.ndarray) -> np.ndarray:
    """Rebin counts onto new bin edges, conserving counts (linear interpolation of the cumulative sum).
    Counts outside the destination range are dropped; destination bins outside the source are zero."""
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    at = np.interp(edges_dst, edges_src, cum, left=0.0, right=cum[-1])
    return np.diff(at)


def covered_channels(edges_src: np.ndarray, edges_dst: np.ndarray) -> np.ndarray:
    """Which destination bins (N,) the source spectrum measures: their centres lie inside the source's
    calibrated range. :func:`resample` leaves the others at zero counts, which means "not measured", not
    "no counts": predict sets its output there to zero and lists no peak there."""
    centres = 0.5 * (edges_dst[1:] + edges_dst[:-1])
    return (centres >= edges_src[0]) & (centres <= edges_src[-1])


def write_csv(path: Path, columns: dict[str, np.ndarray], header_comment: str = "") -> Path:
    """Write equal-length columns as CSV (atomically), ``header_comment`` as '#' lines above the column names;
    the first comment line ends with ``[rows: N]`` and the file with ``# end``, so :func:`read_spectrum` refuses
    a truncated copy (numpy.loadtxt and pandas skip both as comments)."""
    from neurotrain.io.atomic import atomic_path

    names = list(columns)
    arr = np.stack([np.asarray(columns[k], dtype=np.float64) for k in names], 1)
    # the row count on the first comment line and an end line let the reader tell a truncated file
    head = (header_comment.splitlines() or [""]) if header_comment else [""]
    head[0] = f"{head[0]} {CSV_ROWS_MARK}{len(arr)}]".strip()
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in head:
                f.write(f"# {line}\n")
            f.write(",".join(names) + "\n")
            np.savetxt(f, arr, delimiter=",", fmt="%.6g")
            f.write(f"{CSV_END}\n")
    return path


def write_h5(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> Path:
    """Write named arrays (and scalar attributes) to one HDF5 file (atomically)."""
    import h5py

    from neurotrain.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=np.asarray(v), compression="gzip")
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
    return path


def write_iec1455(path: Path, counts: np.ndarray, calibration: list[float], livetime: float, realtime: float) -> Path:
    """Write a minimal IEC 1455 (A004 records) file that becquerel and MCA software read."""
    from neurotrain.io.atomic import atomic_path

    n = len(counts)
    cal = (list(calibration) + [0.0] * 4)[:4]
    recs = [
        "A004neurotrain   sim   1   1   0",
        f"A004{livetime:14.6f}{realtime:14.6f}{n:8d}",
        "A00401/01/20 00:00:00",
        "A004" + "".join(f"{c:16.8E}" for c in cal),
        "A004" + "".join(f"{0.0:16.8E}" for _ in range(4)),
    ]
    recs += ["A004"] * 53
    c = np.asarray(counts).astype(np.int64)
    for i in range(0, n, 5):
        recs.append(f"A004{i:6d}" + "".join(f"{v:10d}" for v in c[i : i + 5]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(recs) + "\n", encoding="utf-8")
    return path
