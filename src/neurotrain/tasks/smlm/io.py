"""SMLM file formats: TIFF movies (memory-mapped, chunked) and localisation tables.

Localisation tables, one row per localisation; our canonical columns (``LOC_COLUMNS``):
``frame`` (0-based), ``x_nm``, ``y_nm``, ``z_nm``, ``photons``, ``bg`` (photons/px), ``prob``,
``sigma_x_nm``, ``sigma_y_nm``, ``sigma_z_nm``, ``sigma_photons``. Coordinates: pixel ``i``
spans ``[i, i+1) x pixel size``. Formats:

* ``csv``: ThunderSTORM column names and units (``frame`` 1-based, ``x [nm]``, ``y [nm]``,
  ``z [nm]``, ``intensity [photon]``, ``offset [photon]``, ``uncertainty_xy [nm]``,
  ``uncertainty_z [nm]``; Ovesny et al. 2014).
* ``picasso``: HDF5 dataset ``locs`` (structured array: ``frame`` u4 0-based, ``x``, ``y``,
  ``sx``, ``sy``, ``lpx``, ``lpy`` in camera pixels, ``photons``, ``bg``, ``z`` nm, ...) plus the
  YAML sidecar ``<name>.yaml`` Picasso reads (Width, Height, Frames, Pixelsize).
* ``h5``: ours, one dataset per canonical column, units and pixel size as attributes.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotrain.errors import DataError
from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS

THUNDERSTORM = {"frame": "frame", "x_nm": "x [nm]", "y_nm": "y [nm]", "z_nm": "z [nm]", "photons": "intensity [photon]",
                "bg": "offset [photon]", "prob": "detection_probability", "sigma_photons": "uncertainty_intensity [photon]"}
PICASSO_FIELDS = [("frame", "u4"), ("x", "f4"), ("y", "f4"), ("z", "f4"), ("photons", "f4"), ("sx", "f4"), ("sy", "f4"),
                  ("bg", "f4"), ("lpx", "f4"), ("lpy", "f4"), ("lpz", "f4"), ("ellipticity", "f4"),
                  ("net_gradient", "f4"), ("prob", "f4")]


# --------------------------------------------------------------------------- TIFF movies


class TiffStack:
    """A TIFF movie as ``[n_frames, H, W]`` float32, read lazily.

    Uncompressed contiguous files are memory-mapped (``tifffile.memmap``); others are read page by
    page for the requested frames only, so a movie of any length is processed with flat memory.
    Supports ``len()`` and ``stack[a:b]`` (returns a NumPy array).
    """

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
        except Exception as exc:  # tifffile raises several types for corrupt files
            raise DataError(f"{self.path}: not a readable TIFF ({exc})") from None
        shape = tuple(series.shape)
        if len(shape) < 2:
            raise DataError(f"{self.path}: expected frames of 2D images (got shape {shape})")
        self.height, self.width = int(shape[-2]), int(shape[-1])
        self.n_frames = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        self._mm: np.ndarray | None = None
        try:
            mm = tifffile.memmap(self.path, mode="r")
            self._mm = mm.reshape(self.n_frames, self.height, self.width)
        except Exception:
            self._pages = series.pages if len(series.pages) == self.n_frames else None
            if self._pages is None:
                self._all = series.asarray().reshape(self.n_frames, self.height, self.width)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frames, self.height, self.width)

    @property
    def memory_mapped(self) -> bool:
        return self._mm is not None

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, idx: slice | int) -> np.ndarray:
        if isinstance(idx, int):
            return self[idx:idx + 1][0]
        start, stop, step = idx.indices(self.n_frames)
        if self._mm is not None:
            return np.asarray(self._mm[start:stop:step], dtype=np.float32)
        if self._pages is None:
            return np.asarray(self._all[start:stop:step], dtype=np.float32)
        frames = [self._pages[i].asarray() for i in range(start, stop, step)]
        if not frames:
            return np.zeros((0, self.height, self.width), np.float32)
        return np.stack(frames).astype(np.float32)

    def close(self) -> None:
        self._mm = None
        self._tif.close()


class TiffMovieWriter:
    """Write a movie chunk by chunk to one contiguous (memory-mappable) TIFF, atomically."""

    def __init__(self, path: str | Path, dtype: str = "uint16") -> None:
        self.path = Path(path)
        self.dtype = dtype
        self._stack = ExitStack()
        self._tw: Any = None

    def __enter__(self) -> TiffMovieWriter:
        import tifffile

        tmp = self._stack.enter_context(atomic_path(self.path))
        self._tw = self._stack.enter_context(tifffile.TiffWriter(tmp, bigtiff=True))
        return self

    def write(self, frames: np.ndarray) -> None:
        arr = np.asarray(frames)
        if self.dtype == "uint16":
            arr = np.clip(np.round(arr), 0, 65535).astype(np.uint16)
        else:
            arr = arr.astype(self.dtype)
        for f in arr:
            self._tw.write(f, contiguous=True, photometric="minisblack")

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)


# --------------------------------------------------------------------------- localisation tables


def format_for(path: str | Path, fmt: str = "auto") -> str:
    """``csv`` (ThunderSTORM), ``picasso`` (``.hdf5``) or ``h5`` (ours) from the suffix when ``auto``."""
    if fmt != "auto":
        return fmt
    suf = Path(path).suffix.lower()
    if suf == ".csv":
        return "csv"
    if suf == ".hdf5":
        return "picasso"
    if suf == ".h5":
        return "h5"
    raise DataError(f"{path}: cannot tell the table format from suffix {suf!r} (expected .csv, .hdf5 (Picasso) or .h5)")


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for c in LOC_COLUMNS:
        out[c] = df[c] if c in df else (np.nan if c not in ("z_nm", "prob") else (0.0 if c == "z_nm" else 1.0))
    out["frame"] = out["frame"].astype("int64")
    return out


def to_thunderstorm(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical table -> ThunderSTORM columns (1-based frames, nm, photons)."""
    d = _canonical(df)
    out = pd.DataFrame({"id": np.arange(1, len(d) + 1, dtype=np.int64)})
    for ours, ts in THUNDERSTORM.items():
        out[ts] = d[ours].to_numpy()
    out["frame"] = d["frame"].to_numpy() + 1
    out["uncertainty_xy [nm]"] = np.sqrt(0.5 * (d["sigma_x_nm"] ** 2 + d["sigma_y_nm"] ** 2)).to_numpy()
    out["uncertainty_z [nm]"] = d["sigma_z_nm"].to_numpy()
    return out


def to_picasso(df: pd.DataFrame, pixel_size_nm: float) -> np.ndarray:
    """Canonical table -> Picasso ``locs`` record array (positions and widths in camera pixels)."""
    d = _canonical(df)
    rec = np.zeros(len(d), dtype=PICASSO_FIELDS)
    rec["frame"] = d["frame"].to_numpy()
    rec["x"] = d["x_nm"] / pixel_size_nm
    rec["y"] = d["y_nm"] / pixel_size_nm
    rec["z"] = d["z_nm"]
    rec["photons"] = d["photons"]
    rec["bg"] = d["bg"]
    rec["lpx"] = d["sigma_x_nm"] / pixel_size_nm
    rec["lpy"] = d["sigma_y_nm"] / pixel_size_nm
    rec["lpz"] = d["sigma_z_nm"]
    rec["sx"] = df["psf_sigma_x_nm"] / pixel_size_nm if "psf_sigma_x_nm" in df else np.nan
    rec["sy"] = df["psf_sigma_y_nm"] / pixel_size_nm if "psf_sigma_y_nm" in df else np.nan
    rec["prob"] = d["prob"]
    return rec


class LocWriter:
    """Stream localisation tables (pandas chunks) into one file; atomic (temp name, then rename).

    ``meta`` carries ``pixel_size_nm``, ``width``, ``height``, ``n_frames`` (Picasso's sidecar, attrs).
    """

    def __init__(self, path: str | Path, fmt: str = "auto", meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.fmt = format_for(path, fmt)
        self.meta = dict(meta or {})
        self.px = float(self.meta.get("pixel_size_nm", 100.0))
        self._stack = ExitStack()
        self._n = 0
        self._header = False

    def __enter__(self) -> LocWriter:
        import h5py

        if self.fmt == "h5":
            from neurotrain.io.hdf5 import H5Writer

            attrs = {"format": "neurotrain-smlm-locs", "units": "nm, photons, photons/px; frame 0-based", **self.meta}
            self._h5 = self._stack.enter_context(H5Writer(self.path, attrs=attrs))
            return self
        tmp = self._stack.enter_context(atomic_path(self.path))
        if self.fmt == "csv":
            self._fh = self._stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
        else:
            self._f = self._stack.enter_context(h5py.File(tmp, "w"))
            self._ds = self._f.create_dataset("locs", shape=(0,), maxshape=(None,), dtype=PICASSO_FIELDS,
                                              chunks=(16384,), compression="gzip")
        return self

    def append(self, df: pd.DataFrame) -> None:
        if self.fmt == "h5":
            d = _canonical(df)
            if len(d):
                self._h5.append(**{c: d[c].to_numpy() for c in LOC_COLUMNS})
        elif self.fmt == "csv":
            ts = to_thunderstorm(df)
            ts["id"] += self._n
            ts.to_csv(self._fh, index=False, header=not self._header)
            self._header = True
        else:
            rec = to_picasso(df, self.px)
            self._ds.resize((self._n + len(rec),))
            self._ds[self._n:] = rec
        self._n += len(df)

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None and self.fmt == "h5" and self._n == 0:
            empty = _canonical(pd.DataFrame({c: np.zeros(0) for c in LOC_COLUMNS}))
            self._h5.append(**{c: empty[c].to_numpy() for c in LOC_COLUMNS})
        if exc_type is None and self.fmt == "csv" and not self._header:
            to_thunderstorm(pd.DataFrame(columns=list(LOC_COLUMNS))).to_csv(self._fh, index=False)
        self._stack.__exit__(exc_type, *rest)
        if exc_type is None and self.fmt == "picasso":
            import yaml

            info = {"Byte Order": "<", "Data Type": "uint16", "Frames": int(self.meta.get("n_frames", 0)),
                    "Height": int(self.meta.get("height", 0)), "Width": int(self.meta.get("width", 0)),
                    "Generated by": "neurotrain smlm", "Pixelsize": self.px}
            with atomic_path(self.path.with_suffix(".yaml")) as tmp:
                tmp.write_text(yaml.safe_dump_all([info], sort_keys=False), encoding="utf-8")


def write_locs(df: pd.DataFrame, path: str | Path, fmt: str = "auto", meta: dict[str, Any] | None = None) -> Path:
    """Write a whole table at once (see :class:`LocWriter`)."""
    with LocWriter(path, fmt, meta) as w:
        w.append(df)
    return Path(path)


def read_locs(path: str | Path, fmt: str = "auto", pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read ours, ThunderSTORM CSV, Picasso HDF5 or a ground-truth CSV into canonical columns."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = format_for(path, fmt)
    try:
        if kind == "csv":
            raw = pd.read_csv(path)
            if "x [nm]" in raw:
                d = pd.DataFrame({ours: raw[ts] for ours, ts in THUNDERSTORM.items() if ts in raw})
                d["frame"] = raw["frame"].astype("int64") - 1
                if "uncertainty_xy [nm]" in raw:
                    d["sigma_x_nm"] = d["sigma_y_nm"] = raw["uncertainty_xy [nm]"]
                if "uncertainty_z [nm]" in raw:
                    d["sigma_z_nm"] = raw["uncertainty_z [nm]"]
            elif {"frame", "x_nm", "y_nm"} <= set(raw.columns):
                d = raw
            else:
                raise DataError(f"{path}: CSV has neither ThunderSTORM columns ('x [nm]') nor frame/x_nm/y_nm "
                                f"(got {list(raw.columns)[:8]})")
            return _canonical(d).assign(**{c: d[c] for c in d.columns if c not in LOC_COLUMNS})
        with h5py.File(path, "r") as f:
            if kind == "picasso" or "locs" in f:
                if "locs" not in f:
                    raise DataError(f"{path}: Picasso HDF5 needs a 'locs' dataset (got {list(f.keys())})")
                rec = f["locs"][()]
                px = pixel_size_nm or _picasso_pixel_size(path)
                names = rec.dtype.names
                d = pd.DataFrame({"frame": rec["frame"].astype("int64"), "x_nm": rec["x"] * px, "y_nm": rec["y"] * px,
                                  "z_nm": rec["z"] if "z" in names else 0.0, "photons": rec["photons"],
                                  "bg": rec["bg"] if "bg" in names else np.nan,
                                  "prob": rec["prob"] if "prob" in names else 1.0,
                                  "sigma_x_nm": rec["lpx"] * px if "lpx" in names else np.nan,
                                  "sigma_y_nm": rec["lpy"] * px if "lpy" in names else np.nan,
                                  "sigma_z_nm": rec["lpz"] if "lpz" in names else np.nan})
                return _canonical(d.astype({c: "float64" for c in d.columns if c != "frame"}))
            missing = [c for c in ("frame", "x_nm", "y_nm") if c not in f]
            if missing:
                raise DataError(f"{path}: localisation HDF5 lacks datasets {missing}")
            return _canonical(pd.DataFrame({c: f[c][()] for c in LOC_COLUMNS if c in f}))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: cannot read localisation table ({exc})") from None


def _picasso_pixel_size(path: Path) -> float:
    import yaml

    side = path.with_suffix(".yaml")
    if side.is_file():
        for doc in yaml.safe_load_all(side.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and "Pixelsize" in doc:
                return float(doc["Pixelsize"])
    raise DataError(f"{path}: Picasso file without 'Pixelsize' in {side.name}; pass the pixel size")


def render(x_nm: np.ndarray, y_nm: np.ndarray, width_nm: float, height_nm: float, px_nm: float = 10.0,
           blur_px: float = 1.0) -> np.ndarray:
    """Super-resolution image: 2D histogram of localisations at ``px_nm`` blurred by a Gaussian of
    ``blur_px`` render pixels. Returns float32 ``[ny, nx]`` (localisations per pixel, blurred)."""
    from scipy.ndimage import gaussian_filter

    nx, ny = max(1, int(np.ceil(width_nm / px_nm))), max(1, int(np.ceil(height_nm / px_nm)))
    img, _, _ = np.histogram2d(np.asarray(y_nm), np.asarray(x_nm), bins=(ny, nx), range=((0, ny * px_nm), (0, nx * px_nm)))
    if blur_px > 0:
        img = gaussian_filter(img, blur_px)
    return img.astype(np.float32)


def save_render(img: np.ndarray, path: str | Path) -> Path:
    """Save a render as PNG (contrast at the 99.5th percentile, 'hot' colour map) or float32 TIFF."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, img.astype(np.float32))
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            vmax = float(np.percentile(img, 99.5)) if img.size and img.max() > 0 else 1.0
            plt.imsave(tmp, img, cmap="hot", vmin=0, vmax=max(vmax, 1e-9))
    return path
