"""Reading LAMOST spectra (FITS, both layouts; CSV; HDF5) and label catalogues; writing label tables.

FITS layouts (LAMOST data releases, "LAMOST DR data model" documents):

* newer (DR8 and later): an empty primary HDU whose header carries the object (``OBSID``, ``DESIG``,
  ``RA``, ``DEC``, ``CLASS``, ``SUBCLASS``), the redshift ``Z`` (for stars v = cZ), the S/N per band
  (``SNRU`` ... ``SNRZ``) and the log-linear wavelength solution ``COEFF0``/``COEFF1``
  (log10 lambda = COEFF0 + COEFF1 i); then a binary table ``COADD`` with one row of vector columns
  ``FLUX``, ``IVAR``, ``WAVELENGTH`` (vacuum Angstrom), ``ANDMASK``, ``ORMASK``, ``NORMALIZATION``;
* older (DR1-DR7): a 5 x N primary image, rows flux, ivar, wavelength, andmask, ormask.

Wavelengths are vacuum Angstrom in the observed frame. ``ANDMASK`` bits (a bit set in every exposure)
mark bad pixels; :class:`~neurotrain.tasks.stellar.config.ReadSection` ``andmask_bits`` selects which
(0 = any). A masked pixel gets ``mask`` True and ``ivar`` 0.

CSV spectra: columns ``wavelength``, ``flux``, ``ivar`` [, ``mask`` (non-zero = bad), ``z``]. HDF5
spectra: datasets ``wavelength``, ``flux``, ``ivar`` [, ``mask``], the redshift as attribute or
dataset ``z``.
"""

from __future__ import annotations

import atexit
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError, NeurotrainError
from neurotrain.tasks.stellar import fits_fast
from neurotrain.tasks.stellar.config import ReadSection

#: header keywords copied into ``Spectrum.meta`` when present
META_KEYS: tuple[str, ...] = (
    "OBSID", "DESIG", "RA", "DEC", "CLASS", "SUBCLASS", "Z", "Z_ERR", "SNRU", "SNRG", "SNRR", "SNRI", "SNRZ",
    "MJD", "FIBERID", "OBJTYPE", "FILENAME",
)
#: header keywords the readers use: META_KEYS and the wavelength solution
_HEADER_KEYS = frozenset(META_KEYS) | {"COEFF0", "COEFF1", "CRVAL1", "CD1_1"}
#: LAMOST writes Z = -9999 when the redshift failed; anything at or below this is "no redshift"
Z_INVALID_BELOW = -0.99
_SUFFIXES = (".fits.gz", ".fit.gz", ".fits", ".fit", ".csv", ".hdf5", ".h5")
# re-exported for callers that build a catalogue next to the readers
from neurotrain.tasks.stellar.catalog import read_catalog, write_labels_csv, write_labels_h5  # noqa: E402,F401


@dataclass
class Spectrum:
    """One spectrum: observed-frame vacuum wavelength (Angstrom, float64), flux (float32, any flux unit),
    inverse variance (float32, 0 = no information), ``mask`` (True = bad; those pixels have ivar 0),
    redshift ``z`` (None when the file has none) and header values in ``meta``."""

    id: str
    path: Path
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    z: float | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.flux.size)


def spectrum_id(path: str | Path) -> str:
    """File name without its spectrum suffix: ``spec-55877-B7708_sp03-110.fits.gz`` -> ``spec-...-110``."""
    name = Path(path).name
    low = name.lower()
    for s in _SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def _wave_from_coeffs(h: dict[str, Any] | Any, n: int, path: Path, where: str) -> np.ndarray:
    c0 = h.get("COEFF0", h.get("CRVAL1"))
    c1 = h.get("COEFF1", h.get("CD1_1"))
    if c0 is None or c1 is None:
        raise DataError(f"{path}: WAVELENGTH: expected a wavelength {where} or COEFF0/COEFF1 in the header (got neither)")
    try:
        c0, c1 = float(c0), float(c1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: COEFF0/COEFF1: expected numbers (got {c0!r}, {c1!r})") from None
    return 10.0 ** (c0 + c1 * np.arange(n, dtype=np.float64))


def _z_from(h: Any) -> float | None:
    z = h.get("Z")
    try:
        z = float(z)
    except (TypeError, ValueError):
        return None
    return z if np.isfinite(z) and z > Z_INVALID_BELOW else None


def _from_layout(path: Path, h0: Any, cols: dict[str, np.ndarray] | None, img: np.ndarray | None) -> tuple:
    """(wave, flux, ivar, andmask) of either layout."""
    if cols is not None:
        missing = [c for c in ("FLUX", "IVAR") if c not in cols]
        if missing:
            raise DataError(f"{path}: COADD: expected columns FLUX and IVAR (missing {missing})")
        flux, ivar = cols["FLUX"], cols["IVAR"]
        wave = cols.get("WAVELENGTH")
        wave = _wave_from_coeffs(h0, flux.size, path, "column") if wave is None else wave
        return wave, flux, ivar, cols.get("ANDMASK")
    assert img is not None
    if img.ndim != 2 or img.shape[0] < 2:
        raise DataError(f"{path}: primary image: expected rows flux, ivar[, wavelength, andmask, ormask] (got shape {img.shape})")
    wave = img[2] if img.shape[0] >= 3 else _wave_from_coeffs(h0, img.shape[1], path, "row")
    return wave, img[0], img[1], img[3] if img.shape[0] >= 4 else None


def _read_fits_astropy(path: Path) -> tuple[Any, tuple]:
    from astropy.io import fits

    try:
        hdul = fits.open(path, memmap=False)
    except Exception as exc:  # astropy raises OSError, ValueError, ... for non-FITS input
        raise DataError(f"{path}: not a readable FITS file ({_one_line(exc)})") from None
    with hdul:
        try:
            size = path.stat().st_size
            h0 = hdul[0].header
            for i in range(len(hdul)):
                info = hdul.fileinfo(i)
                h = hdul[i].header
                need = abs(int(h.get("BITPIX", 8))) // 8 * int(np.prod([h.get(f"NAXIS{k}", 0) for k in range(1, int(h.get("NAXIS", 0)) + 1)] or [0]))
                if not path.name.endswith(".gz") and info["datLoc"] + need > size:
                    raise DataError(f"{path}: HDU {i}: expected {need} data bytes (the file is truncated at {size})")
            tab = next((hdu for hdu in hdul[1:] if isinstance(hdu, fits.BinTableHDU)
                        and "FLUX" in [n.upper() for n in hdu.columns.names]), None)
            if tab is not None:
                if len(tab.data) == 0:
                    raise DataError(f"{path}: {tab.name}: expected a row holding the spectrum (got 0 rows)")
                row = tab.data[0]
                cols = {n.upper(): np.asarray(row[n]) for n in tab.columns.names}
                return h0, _from_layout(path, h0, cols, None)
            img = hdul[0].data
            if img is not None and img.ndim == 2:
                return h0, _from_layout(path, h0, None, np.asarray(img))
        except NeurotrainError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: not a readable FITS file ({_one_line(exc)})") from None
    raise DataError(f"{path}: layout: expected a COADD-like table with FLUX/IVAR or a 2-D primary image "
                    f"(got {len(hdul)} HDUs, neither)")


def _read_fits(path: Path, fast: bool) -> tuple[Any, tuple]:
    if fast:
        try:
            h0, arrays, layout = fits_fast.read_raw(path, _HEADER_KEYS)
        except fits_fast.Unsupported:
            return _read_fits_astropy(path)
        except (EOFError, OSError, ValueError, KeyError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: not a readable FITS file ({_one_line(exc)})") from None
        if layout == "table":
            if "FLUX" not in arrays:
                return _read_fits_astropy(path)
            return h0, _from_layout(path, h0, arrays, None)
        return h0, _from_layout(path, h0, None, arrays["image"])
    return _read_fits_astropy(path)


def _read_table_csv(path: Path) -> tuple[dict, tuple]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV spectrum ({_one_line(exc)})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("wavelength", "flux", "ivar") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: columns: expected wavelength, flux, ivar (missing {missing})")
    num = {}
    for c in ("wavelength", "flux", "ivar", "mask", "z"):
        if c not in df.columns:
            continue
        raw = df[c]
        num[c] = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        # text where a number belongs (not an empty field or NaN, which mean "no value") is a damaged file
        text = np.isnan(num[c]) & raw.notna().to_numpy() & (raw.astype(str).str.strip() != "").to_numpy()
        if text.any():
            k = int(np.argmax(text))
            raise DataError(f"{path}: {c}: expected numbers (got {int(text.sum())} non-numeric, first on line {k + 2}: "
                            f"{raw.iloc[k]!r})")
    h = {"Z": float(num["z"][0]) if "z" in num and len(num["z"]) else None}
    bad = None if "mask" not in num else np.nan_to_num(num["mask"], nan=1.0)
    return h, (num["wavelength"], num["flux"], num["ivar"], bad)


def _read_table_h5(path: Path) -> tuple[dict, tuple]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 spectrum ({_one_line(exc)})") from None
    with f:
        missing = [k for k in ("wavelength", "flux", "ivar") if k not in f]
        if missing:
            raise DataError(f"{path}: datasets: expected wavelength, flux, ivar (missing {missing})")
        arr = {k: _h5_numbers(f, k, path) for k in ("wavelength", "flux", "ivar")}
        bad = _h5_numbers(f, "mask", path) if "mask" in f else None
        z = f.attrs.get("z", f.attrs.get("Z"))
        if z is None and "z" in f:
            z = float(np.asarray(f["z"][()]).reshape(-1)[0])
        h = {"Z": z, **{k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items() if k.upper() in META_KEYS}}
    return h, (arr["wavelength"], arr["flux"], arr["ivar"], bad)


def _h5_numbers(f: Any, key: str, path: Path) -> np.ndarray:
    """Dataset ``key`` as a flat float64 array; a group or a dataset of text is one DataError naming it."""
    import h5py

    obj = f[key]
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biuf":
        got = "a group" if not isinstance(obj, h5py.Dataset) else f"a dataset of dtype {obj.dtype}"
        raise DataError(f"{path}: {key}: expected a numeric dataset (got {got})")
    return np.asarray(obj[()], dtype=np.float64).reshape(-1)


def read_spectrum(path: str | Path, cfg: ReadSection | None = None) -> Spectrum:
    """Read one spectrum (FITS of either LAMOST layout, CSV or HDF5) and validate it.

    Raises :class:`DataError` naming the file and the field for: a missing, truncated or non-FITS file,
    a FITS of neither layout, a missing ``Z`` (when ``cfg.require_z``), all-NaN flux, no pixel with
    ivar > 0, a wavelength that does not increase, or columns of unequal length.
    """
    cfg = cfg or ReadSection()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    low = path.name.lower()
    if low.endswith(".csv"):
        h0, (wave, flux, ivar, andmask) = _read_table_csv(path)
        fits_like = False
    elif low.endswith((".h5", ".hdf5")):
        h0, (wave, flux, ivar, andmask) = _read_table_h5(path)
        fits_like = False
    else:
        h0, (wave, flux, ivar, andmask) = _read_fits(path, cfg.fast_fits)
        fits_like = True
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    flux = np.asarray(flux, dtype=np.float32).reshape(-1)
    ivar = np.asarray(ivar, dtype=np.float32).reshape(-1)
    n = flux.size
    if wave.size != n or ivar.size != n or (andmask is not None and np.size(andmask) != n):
        raise DataError(f"{path}: arrays: expected equal lengths (wavelength {wave.size}, flux {n}, ivar {ivar.size})")
    if n < 2:
        raise DataError(f"{path}: FLUX: expected at least 2 pixels (got {n})")
    if not np.isfinite(flux).any():
        raise DataError(f"{path}: FLUX: expected finite values (all {n} are NaN/inf)")
    dw = np.diff(wave)
    if not np.all(dw > 0):  # also catches NaN wavelengths
        i = int(np.argmin(np.nan_to_num(dw, nan=-1.0) > 0))
        raise DataError(f"{path}: WAVELENGTH: expected strictly increasing values (not at pixel {i + 1}: "
                        f"{wave[i]:.3f} -> {wave[i + 1]:.3f})")
    mask = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar <= 0)
    if andmask is not None and cfg.andmask_bits:
        am = np.nan_to_num(np.asarray(andmask, dtype=np.float64), nan=1.0).astype(np.int64)
        mask |= (am & cfg.andmask_bits) != 0
    elif andmask is not None:  # any bit: the integer part is non-zero, or NaN (a third of the read's checks)
        mask |= ~(np.abs(np.asarray(andmask)) < 1)
    if mask.all():
        raise DataError(f"{path}: IVAR: expected some unmasked pixels with ivar > 0 (all {n} are 0 or masked)")
    ivar = np.where(mask, np.float32(0), ivar)
    z = _z_from(h0)
    if z is None and cfg.require_z:
        raise DataError(f"{path}: Z: expected a redshift {'in the header' if fits_like else 'column/attribute z'} "
                        f"(missing or invalid: {h0.get('Z')!r}); set read.require_z=false to treat spectra as rest frame")
    meta = {k: h0[k] for k in META_KEYS if k in h0}
    return Spectrum(spectrum_id(path), path, wave, flux, ivar, mask, z, meta)


def find_spectra(inputs: Iterable[str | Path], patterns: Sequence[str] | None = None,
                 recursive: bool = True) -> list[Path]:
    """Spectrum files among ``inputs`` (files are taken as given, folders searched with ``patterns``),
    sorted and deduplicated. A path that does not exist is a :class:`DataError`."""
    patterns = list(patterns or ReadSection().patterns)
    seen: dict[Path, Path] = {}
    for p in inputs:
        p = Path(p)
        if p.is_file():
            seen.setdefault(p.resolve(), p)
        elif p.is_dir():
            for pat in patterns:
                for q in (p.rglob(pat) if recursive else p.glob(pat)):
                    if q.is_file():
                        seen.setdefault(q.resolve(), q)
        else:
            raise DataError(f"{p}: input: expected a spectrum file or a folder (not found)")
    return sorted(seen.values())


def _try_read(path: Path, cfg: ReadSection) -> Spectrum | str:
    try:
        return read_spectrum(path, cfg)
    except NeurotrainError as exc:
        return _one_line(exc)
    except Exception as exc:  # never crash a batch: any unexpected failure is a counted skip
        return f"{path}: unexpected {type(exc).__name__}: {_one_line(exc)}"


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """One long-lived pool per worker count (starting processes costs more than reading a chunk)."""
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers)
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


def read_many(paths: Sequence[str | Path], cfg: ReadSection | None = None,
              workers: int = 4) -> tuple[list[Spectrum], list[tuple[Path, str]]]:
    """Read many files with ``workers`` threads (or processes, ``cfg.processes``: header parsing holds
    the GIL, so only processes scale with cores). Returns the good spectra (input order) and
    ``(path, one-line reason)`` for every file that could not be used."""
    cfg = cfg or ReadSection()
    paths = [Path(p) for p in paths]
    if cfg.processes and workers > 1 and len(paths) > 1:
        chunk = max(1, len(paths) // (4 * workers))
        results = list(_process_pool(workers).map(_try_read, paths, [cfg] * len(paths), chunksize=chunk))
    elif workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(lambda p: _try_read(p, cfg), paths))
    else:
        results = [_try_read(p, cfg) for p in paths]
    good = [r for r in results if isinstance(r, Spectrum)]
    skipped = [(p, r) for p, r in zip(paths, results) if isinstance(r, str)]
    return good, skipped


def stack_spectra(spectra: Sequence[Spectrum], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The raw batch dict of the stellar contract: ``wave`` (B,N) float64, ``flux`` (B,N) float32,
    ``ivar`` (B,N) float32, ``mask`` (B,N) bool, ``z`` (B,) float64 (0 where the file has none).

    Shorter spectra are padded to the longest: flux NaN, ivar 0, mask True, the wavelength continued
    with the spectrum's last log step so that it stays increasing."""
    if not spectra:
        raise DataError("stack_spectra: expected at least one spectrum (got none)")
    n = max(len(s) for s in spectra)
    b = len(spectra)
    wave = np.empty((b, n), np.float64)
    flux = np.full((b, n), np.nan, np.float32)
    ivar = np.zeros((b, n), np.float32)
    mask = np.ones((b, n), bool)
    for i, s in enumerate(spectra):  # one row copy per spectrum, no per-pixel work
        k = len(s)
        wave[i, :k] = s.wavelength
        if k < n:
            ratio = s.wavelength[-1] / s.wavelength[-2]
            wave[i, k:] = s.wavelength[-1] * ratio ** np.arange(1, n - k + 1)
        flux[i, :k] = s.flux
        ivar[i, :k] = s.ivar
        mask[i, :k] = s.mask
    z = np.array([0.0 if s.z is None else s.z for s in spectra], np.float64)
    dev = torch.device(device)
    return {
        "wave": torch.from_numpy(wave).to(dev),
        "flux": torch.from_numpy(flux).to(dev),
        "ivar": torch.from_numpy(ivar).to(dev),
        "mask": torch.from_numpy(mask).to(dev),
        "z": torch.from_numpy(z).to(dev),
    }


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__ if isinstance(exc, BaseException) else ""



def write_simulated_fits(cfg: Any, out_dir: str | Path, n: int, seed: int = 0, chunk: int = 512,
                         device: str | torch.device = "cpu") -> list[Path]:
    """``n`` generator spectra as LAMOST files of the newer layout (``sim-<i>.fits``: ``FLUX``, ``IVAR``,
    ``WAVELENGTH``, ``ANDMASK``, ``ORMASK`` on LAMOST's observed grid; ``OBSID``, ``Z``, ``SNRG``, ``COEFF0``,
    ``COEFF1`` in the header) and ``catalog.csv`` with every generator label by spectrum id (the seed's
    ``X_FE.csv`` with a ``spec`` column), so that prepare / train / predict run on files as on LAMOST's.
    ``cfg`` is a ``StellarConfig``. The folder is filled under a temporary name, then renamed into place.
    ``device``: where the generator runs (a GPU draws other random numbers than the CPU for the same seed)."""
    import shutil

    import pandas as pd

    from neurotrain.tasks.stellar.config import GENERATOR_LABELS
    from neurotrain.tasks.stellar.simulate import sample_labels, sample_snr, simulate_raw

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output folder exists and is not empty (choose another --out)")
    tmp = out.with_name(f".{out.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    rows, paths = [], []
    sim = cfg.simulate
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        labels = sample_labels(b, sim, gen, dev)
        snr = sample_snr(b, sim, gen, dev)
        raw = {k: v.cpu().numpy() for k, v in simulate_raw(labels, snr, sim, gen, dev).items()}
        labels, snr = labels.cpu(), snr.cpu()
        for j in range(b):
            i = start + j
            name = f"sim-{i:08d}"
            header = {"OBSID": 900_000_000 + i, "CLASS": "STAR", "Z": float(raw["z"][j]), "SNRG": float(snr[j]),
                      "COEFF0": sim.coeff0, "COEFF1": sim.coeff1}
            mask = raw["mask"][j]
            fits_fast.write_table_layout(tmp / f"{name}.fits", header, {
                "FLUX": raw["flux"][j], "IVAR": np.where(mask, 0.0, raw["ivar"][j]),
                "WAVELENGTH": raw["wave"][j], "ANDMASK": mask.astype(np.float32) * 32, "ORMASK": mask.astype(np.float32) * 32,
            })
            paths.append(out / f"{name}.fits")
        rows.append(pd.DataFrame(labels.numpy(), columns=list(GENERATOR_LABELS)).assign(
            spec=[f"sim-{start + j:08d}" for j in range(b)], snr=snr.numpy()))
    table = pd.concat(rows, ignore_index=True)
    table[["spec", *GENERATOR_LABELS, "snr"]].to_csv(tmp / "catalog.csv", index=False)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return paths
