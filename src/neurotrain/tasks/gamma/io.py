"""Gamma-spectrum files: read ORTEC SPE / SPC, Canberra CNF, IEC 1455, CSV and HDF5 with their energy
calibration; resample onto a model grid; write CSV and HDF5 results.

The binary and vendor formats are parsed by becquerel (``becquerel.parsers``); this module adds the checks a
user needs: every problem (missing file, unknown suffix, unparsable content, zero or missing calibration,
non-increasing calibration, wrong channel count, negative or non-finite counts) is one
:class:`~neurotrain.errors.DataError` line naming the file, the field, what was expected and what was found.

Energy convention (becquerel's): channel ``i`` spans raw positions [i, i+1); bin edges in keV are the
calibration polynomial evaluated at 0, 1, ..., N.
"""

from __future__ import annotations

import contextlib
import io as _io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurotrain.errors import DataError

SUFFIXES = {".spe": "spe", ".spc": "spc", ".cnf": "cnf", ".iec": "iec1455", ".csv": "csv", ".h5": "h5", ".hdf5": "h5"}
MIN_CHANNELS = 64


@dataclass
class GammaSpectrum:
    """A measured spectrum: counts per channel and bin edges in keV."""

    path: Path
    counts: np.ndarray  # (N,) float64
    edges_kev: np.ndarray  # (N+1,)
    livetime_s: float | None = None
    realtime_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

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


def _check_counts(path: Path, counts: np.ndarray, expected_channels: int | None) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64).ravel()
    if counts.size < MIN_CHANNELS:
        raise _err(path, f"counts: expected at least {MIN_CHANNELS} channels, got {counts.size}")
    if expected_channels is not None and counts.size != expected_channels:
        raise _err(path, f"counts: expected {expected_channels} channels, got {counts.size}")
    if not np.all(np.isfinite(counts)):
        raise _err(path, "counts: non-finite values (NaN or inf)")
    if np.any(counts < 0):
        raise _err(path, f"counts: negative values (minimum {counts.min():g})")
    if counts.sum() <= 0:
        raise _err(path, "counts: the spectrum is empty (all channels zero)")
    return counts


def _spe_calibration_state(path: Path) -> str:
    """'present', 'zero' or 'missing' for an ORTEC SPE text file ($MCA_CAL / $ENER_FIT)."""
    text = path.read_text(errors="replace")
    for key in ("$MCA_CAL:", "$ENER_FIT:"):
        if key in text:
            after = text.split(key, 1)[1].strip().splitlines()
            nums: list[float] = []
            for line in after[:2]:
                for tok in line.split():
                    try:
                        nums.append(float(tok))
                    except ValueError:
                        pass
            if key == "$MCA_CAL:" and nums:
                nums = nums[1:]  # first number is the count of coefficients
            if nums and all(v == 0 for v in nums):
                return "zero"
            if nums:
                return "present"
    return "missing"


def _read_becquerel(path: Path, kind: str) -> tuple[dict[str, Any], Any]:
    import becquerel as bq

    parser = {"spe": bq.parsers.spe, "spc": bq.parsers.spc, "cnf": bq.parsers.cnf, "iec1455": bq.parsers.iec1455}[kind]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
            warnings.simplefilter("ignore")
            return parser.read(path, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a data error of this file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _err(path, f"cannot parse as {kind.upper()}: {first}") from None


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """CSV: one column of counts, or (energy_kev, counts), or (channel, counts); '#' comments, optional header."""
    rows: list[list[float]] = []
    header: list[str] | None = None
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = [p.strip() for p in s.replace(";", ",").split(",")]
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            if header is None and not rows:
                header = [p.lower() for p in parts]
                continue
            raise _err(path, f"line {i + 1}: expected numbers, got {s[:40]!r}") from None
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
    if np.any(np.diff(centers) <= 0):
        raise _err(path, "energy_kev: column is not increasing")
    mids = 0.5 * (centers[1:] + centers[:-1])
    edges = np.concatenate([[centers[0] - (mids[0] - centers[0])], mids, [centers[-1] + (centers[-1] - mids[-1])]])
    return counts, edges


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            key = next((k for k in ("counts", "spectrum", "input") if k in f), None)
            if key is None:
                raise _err(path, f"no 'counts' dataset (found: {', '.join(sorted(f.keys())) or 'nothing'})")
            counts = np.asarray(f[key][...], dtype=np.float64)
            if counts.ndim == 2 and counts.shape[0] == 1:
                counts = counts[0]
            if counts.ndim != 1:
                raise _err(path, f"{key}: expected one spectrum (1-D), got shape {counts.shape}")
            edges = None
            if "bin_edges_kev" in f:
                edges = np.asarray(f["bin_edges_kev"][...], dtype=np.float64)
            elif "energy_kev" in f:
                c = np.asarray(f["energy_kev"][...], dtype=np.float64)
                w = np.diff(c)
                edges = np.concatenate([[c[0] - w[0] / 2], c[:-1] + w / 2, [c[-1] + w[-1] / 2]])
            elif "energy_cal" in f.attrs or "calibration" in f.attrs:
                coeffs = f.attrs.get("calibration", f.attrs.get("energy_cal"))
                edges = polynomial_edges(np.atleast_1d(coeffs), counts.size)
            meta = {"livetime": float(f.attrs["livetime"]) if "livetime" in f.attrs else None}
            return counts, edges, meta
    except OSError as exc:
        raise _err(path, f"cannot open as HDF5: {str(exc).splitlines()[0]}") from None


def read_spectrum(path: str | Path, calibration: list[float] | None = None, expected_channels: int | None = None) -> GammaSpectrum:
    """Read one spectrum file. ``calibration`` (polynomial keV coefficients c0, c1, ...) overrides or supplies
    the file's energy calibration; without one in the file or here the read fails with one line."""
    path = Path(path)
    if not path.is_file():
        raise _err(path, "file not found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise _err(path, f"unknown spectrum format {path.suffix!r} (expected one of {', '.join(sorted(SUFFIXES))})")
    live = real = None
    meta: dict[str, Any] = {"format": kind}
    edges: np.ndarray | None = None
    if kind in ("spe", "spc", "cnf", "iec1455"):
        data, cal = _read_becquerel(path, kind)
        counts = np.asarray(data.get("counts", []), dtype=np.float64)
        live, real = data.get("livetime"), data.get("realtime")
        meta["description"] = str(data.get("sample_description") or data.get("SPEC_ID") or "")
        n = counts.size
        if calibration is None:
            if cal is None:
                state = _spe_calibration_state(path) if kind == "spe" else "missing"
                what = "is zero" if state == "zero" else "is missing"
                raise _err(path, f"energy calibration {what} (pass one: --opt calibration=c0,c1[,c2] for keV = c0 + c1*ch + c2*ch^2)")
            params = np.asarray(getattr(cal, "params", []), dtype=np.float64)
            edges = np.asarray(cal(np.arange(n + 1, dtype=np.float64)), dtype=np.float64)
            meta["calibration"] = params.tolist()
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
    return GammaSpectrum(path, counts, edges, live, real, meta)


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
    """Write equal-length columns as CSV (atomically)."""
    from neurotrain.io.atomic import atomic_path

    names = list(columns)
    arr = np.stack([np.asarray(columns[k], dtype=np.float64) for k in names], 1)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            if header_comment:
                for line in header_comment.splitlines():
                    f.write(f"# {line}\n")
            f.write(",".join(names) + "\n")
            np.savetxt(f, arr, delimiter=",", fmt="%.6g")
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
