"""SMLM file formats: localisation tables (TIFF movies live in ``tiff.py``, re-exported here).

Localisation tables, one row per localisation; our canonical columns (``LOC_COLUMNS``):
``frame`` (0-based), ``x_nm``, ``y_nm``, ``z_nm``, ``photons``, ``bg`` (photons/px), ``prob``,
``sigma_x_nm``, ``sigma_y_nm``, ``sigma_z_nm``, ``sigma_photons``. Coordinates: pixel ``i``
spans ``[i, i+1) x pixel size``. Formats:

Optional columns (``EXTRA_COLUMNS``): ``psf_sigma_x_nm``, ``psf_sigma_y_nm`` (PSF width) and the
MC-dropout spreads ``x_mc_sigma_nm``, ``y_mc_sigma_nm``, ``z_mc_sigma_nm``, ``photons_mc_sigma``.
Formats:

* ``csv``: ThunderSTORM's labels ``name [unit]`` (``MoleculeDescriptor`` / ``PSFModel.Params`` in
  ThunderSTORM's source; Ovesny et al. 2014) in its order, labels quoted, ``NaN`` written out
  (its importer parses every field as a double): ``"id","frame","x [nm]","y [nm]","z [nm]",
  "sigma1 [nm]","sigma2 [nm]","intensity [photon]","offset [photon]","bkgstd [photon]",
  "uncertainty_xy [nm]","uncertainty_z [nm]"`` (2D: ``"sigma [nm]"``, no z), frame 1-based, then
  ours (``detection_probability``, ``uncertainty_intensity [photon]``, ``mc_sigma_* [nm|photon]``).
  Files written by ThunderSTORM (any of nm/um/px lengths) and Picasso's ``export_thunderstorm`` read.
* ``picasso``: as ``picasso.io.save_locs`` writes it: HDF5 dataset ``locs`` (compound:
  ``PICASSO_BASE`` -- frame u4 0-based, x, y, sx, sy, lpx, lpy in camera pixels, photons, bg,
  ellipticity, net_gradient f4 -- then z, lpz in nm for 3D, then ours), the metadata as YAML
  documents in ``<name>.yaml`` (movie: Frames, Width, Height, ...; localiser: Pixelsize in nm)
  and, as Picasso >= 0.11 also does, as a JSON ``metadata`` dataset. Every field finite (Picasso
  drops rows with a NaN anywhere; see :func:`to_picasso`).
* ``h5``: ours, one dataset per column, units and pixel size as attributes.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotrain.errors import DataError
from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS, MC_COLUMNS, PSF_COLUMNS
from neurotrain.tasks.smlm.tiff import TiffMovieWriter, TiffStack

__all__ = ["TiffMovieWriter", "TiffStack", "LocWriter", "read_locs", "write_locs", "render", "save_render", "format_for"]

EXTRA_COLUMNS = PSF_COLUMNS + MC_COLUMNS
"""Optional columns carried by every format when a table has them."""
TS_MC = {"x_mc_sigma_nm": "mc_sigma_x [nm]", "y_mc_sigma_nm": "mc_sigma_y [nm]", "z_mc_sigma_nm": "mc_sigma_z [nm]",
         "photons_mc_sigma": "mc_sigma_intensity [photon]"}
"""ThunderSTORM-style labels (``name [unit]``) of the MC-dropout spreads."""
_TS_LABEL = re.compile(r"^\s*([^\[\]]+?)\s*(?:\[([^\]]*)\])?\s*$")
PICASSO_BASE = (("frame", "u4"), ("x", "f4"), ("y", "f4"), ("photons", "f4"), ("sx", "f4"), ("sy", "f4"),
                ("bg", "f4"), ("lpx", "f4"), ("lpy", "f4"), ("ellipticity", "f4"), ("net_gradient", "f4"))
"""Picasso's base localisation fields and dtypes (``picasso.localize.LOCALIZATION_COLUMNS['Base']``,
as ``gausslq.locs_from_fits`` types them)."""
PICASSO_3D = (("z", "f4"), ("lpz", "f4"))
"""Picasso's 3D fields (``zfit``): z and its precision in nm."""
PICASSO_MC = (("lpx_mc", "f4"), ("lpy_mc", "f4"), ("lpz_mc", "f4"), ("photons_unc_mc", "f4"))
"""Ours: MC-dropout spreads in Picasso's units (px, px, nm, photons)."""


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


def _extras(df: pd.DataFrame) -> list[str]:
    """The optional columns (``EXTRA_COLUMNS``) that ``df`` carries, in their fixed order."""
    return [c for c in EXTRA_COLUMNS if c in df]


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(np.float64) if name in df else np.full(len(df), np.nan)


# --------------------------------------------------------------------------- ThunderSTORM CSV


def to_thunderstorm(df: pd.DataFrame, three_d: bool = True) -> pd.DataFrame:
    """Canonical table -> ThunderSTORM columns (1-based frames, nm, photons), ThunderSTORM's order.

    ``three_d``: the astigmatism layout (``z [nm]``, ``sigma1/2 [nm]``, ``uncertainty_z [nm]``),
    else the 2D one (``sigma [nm]``). ``bkgstd [photon]`` is the background's shot noise,
    sqrt(offset). Our extra columns follow.
    """
    d = _canonical(df)
    out = pd.DataFrame({"id": np.arange(1, len(d) + 1, dtype=np.int64), "frame": d["frame"].to_numpy() + 1,
                        "x [nm]": d["x_nm"].to_numpy(np.float64), "y [nm]": d["y_nm"].to_numpy(np.float64)})
    sx, sy = _col(df, "psf_sigma_x_nm"), _col(df, "psf_sigma_y_nm")
    if three_d:
        out["z [nm]"] = d["z_nm"].to_numpy(np.float64)
        out["sigma1 [nm]"], out["sigma2 [nm]"] = sx, sy
    else:
        out["sigma [nm]"] = sx
    bg = d["bg"].to_numpy(np.float64)
    out["intensity [photon]"] = d["photons"].to_numpy(np.float64)
    out["offset [photon]"] = bg
    out["bkgstd [photon]"] = np.sqrt(np.clip(bg, 0, None))
    out["uncertainty_xy [nm]"] = np.sqrt(0.5 * (d["sigma_x_nm"] ** 2 + d["sigma_y_nm"] ** 2)).to_numpy()
    if three_d:
        out["uncertainty_z [nm]"] = d["sigma_z_nm"].to_numpy(np.float64)
    out["detection_probability"] = d["prob"].to_numpy(np.float64)
    out["uncertainty_intensity [photon]"] = d["sigma_photons"].to_numpy(np.float64)
    for c in MC_COLUMNS:
        if c in df:
            out[TS_MC[c]] = df[c].to_numpy(np.float64)
    return out


def _ts_length_nm(raw: pd.DataFrame, name: str, unit: str, px: float | None, path: Path) -> np.ndarray:
    v = raw[f"{name} [{unit}]" if unit else name].to_numpy(np.float64)
    if unit == "nm":
        return v
    if unit == "um":
        return v * 1000.0
    if unit == "px":
        if px is None:
            raise DataError(f"{path}: column '{name} [px]' is in camera pixels; pass the pixel size (nm)")
        return v * px
    raise DataError(f"{path}: column '{name}': unit {unit!r} not understood (expected nm, um or px)")


def _from_thunderstorm(raw: pd.DataFrame, path: Path, px: float | None) -> pd.DataFrame:
    """ThunderSTORM columns (``name [unit]``, any of nm/um/px for lengths) -> canonical + extras."""
    labels: dict[str, str] = {}
    for col in raw.columns:
        m = _TS_LABEL.match(str(col))
        if m is not None:
            labels[m.group(1)] = m.group(2) or ""
    for need in ("frame", "x", "y"):
        if need not in labels:
            raise DataError(f"{path}: ThunderSTORM CSV lacks column {need!r} (got {list(raw.columns)[:10]})")
    for name in ("intensity", "offset"):
        if labels.get(name, "photon") != "photon":
            raise DataError(f"{path}: column '{name} [{labels[name]}]': expected photons, export from "
                            "ThunderSTORM with photon units")

    def length(name: str) -> np.ndarray:
        return _ts_length_nm(raw, name, labels[name], px, path)

    d = pd.DataFrame({"frame": raw[_ts_name("frame", labels)].to_numpy(np.float64).astype(np.int64) - 1,
                      "x_nm": length("x"), "y_nm": length("y")})
    if "z" in labels:
        d["z_nm"] = length("z")
    if "intensity" in labels:
        d["photons"] = raw[_ts_name("intensity", labels)].to_numpy(np.float64)
    if "offset" in labels:
        d["bg"] = raw[_ts_name("offset", labels)].to_numpy(np.float64)
    unc_xy = "uncertainty_xy" if "uncertainty_xy" in labels else "uncertainty"  # ThunderSTORM < 1.3 wrote the latter
    if unc_xy in labels:
        d["sigma_x_nm"] = d["sigma_y_nm"] = length(unc_xy)
    if "uncertainty_z" in labels:
        d["sigma_z_nm"] = length("uncertainty_z")
    if "sigma" in labels:
        d["psf_sigma_x_nm"] = d["psf_sigma_y_nm"] = length("sigma")
    if "sigma1" in labels and "sigma2" in labels:
        d["psf_sigma_x_nm"], d["psf_sigma_y_nm"] = length("sigma1"), length("sigma2")
    if "detection_probability" in labels:
        d["prob"] = raw["detection_probability"].to_numpy(np.float64)
    if "uncertainty_intensity" in labels:
        d["sigma_photons"] = raw[_ts_name("uncertainty_intensity", labels)].to_numpy(np.float64)
    for ours, ts in TS_MC.items():
        name = ts.split(" [")[0]
        if name in labels:
            d[ours] = length(name) if ours != "photons_mc_sigma" else raw[_ts_name(name, labels)].to_numpy(np.float64)
    return d


def _ts_name(name: str, labels: dict[str, str]) -> str:
    return f"{name} [{labels[name]}]" if labels[name] else name


# --------------------------------------------------------------------------- Picasso HDF5


def localization_precision_px(photons: np.ndarray, s: np.ndarray, s_orth: np.ndarray, bg: np.ndarray,
                              excess_noise: float = 1.0) -> np.ndarray:
    """Lateral precision (camera pixels) of a Gaussian fit, Mortensen et al. (Nat. Methods 7:377, 2010)
    with the elliptic background term as Picasso uses it: ``sa^2 = s^2 + 1/12``,
    ``var = sa^2 / N * (16/9 + 8 pi sa sa_orth b / N)``, times the EMCCD excess-noise factor (2).
    ``s``, ``s_orth`` PSF widths in pixels, ``bg`` photons per pixel."""
    sa2, so2 = s ** 2 + 1 / 12, s_orth ** 2 + 1 / 12
    with np.errstate(invalid="ignore", divide="ignore"):
        var = sa2 * (16 / 9 + 8 * np.pi * np.sqrt(sa2 * so2) * bg / photons) / photons
        return np.sqrt(excess_noise * var)


def picasso_dtype(three_d: bool, photons_unc: bool, mc: bool) -> np.dtype:
    """The ``locs`` record layout: Picasso's base fields (``picasso.localize`` order), ``z``/``lpz``
    for 3D, then ours (``prob``; ``photons_unc`` as Picasso names a photon-count std; MC spreads)."""
    fields = list(PICASSO_BASE) + (list(PICASSO_3D) if three_d else []) + [("prob", "f4")]
    if photons_unc:
        fields.append(("photons_unc", "f4"))
    if mc:
        fields += list(PICASSO_MC)
    return np.dtype(fields)


def to_picasso(df: pd.DataFrame, pixel_size_nm: float, dtype: np.dtype | None = None,
               excess_noise: float = 1.0) -> np.ndarray:
    """Canonical table -> Picasso ``locs`` record array (x, y, sx, sy, lpx, lpy in camera pixels;
    z, lpz in nm; frame 0-based ``uint32``), every field finite.

    Picasso's ``lib.ensure_sanity`` drops every row with a NaN in any field, so unknowns are filled:
    ``lpx``/``lpy`` from :func:`localization_precision_px` (what Picasso itself reports), ``lpz``
    as twice their mean (Picasso Render's rule when ``lpz`` is missing), ``bg``, ``sx``, ``sy``,
    ``net_gradient`` with 0 (no such quantity), ``prob`` with 1. Positions are not shifted:
    ``x = x_nm / pixel size`` as in Picasso's ThunderSTORM import/export, Render and Simulate
    (Picasso Localize puts pixel centres on integers, half a pixel off that convention).
    """
    d = _canonical(df)
    px = float(pixel_size_nm)
    dtype = dtype if dtype is not None else picasso_dtype(True, "sigma_photons" in df, all(c in df for c in MC_COLUMNS))
    names = dtype.names or ()
    rec = np.zeros(len(d), dtype=dtype)

    def fill(v: np.ndarray, default: float | np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(v), v, default)

    sx = fill(_col(df, "psf_sigma_x_nm") / px, 0.0)
    sy = fill(_col(df, "psf_sigma_y_nm") / px, 0.0)
    photons, bg = _col(d, "photons"), fill(_col(d, "bg"), 0.0)
    lpx = fill(_col(d, "sigma_x_nm") / px, localization_precision_px(photons, sx, sy, bg, excess_noise))
    lpy = fill(_col(d, "sigma_y_nm") / px, localization_precision_px(photons, sy, sx, bg, excess_noise))
    lpx, lpy = fill(lpx, 0.0), fill(lpy, 0.0)
    rec["frame"] = d["frame"].to_numpy()
    rec["x"], rec["y"] = d["x_nm"] / px, d["y_nm"] / px
    rec["photons"], rec["bg"] = fill(photons, 0.0), bg
    rec["sx"], rec["sy"], rec["lpx"], rec["lpy"] = sx, sy, lpx, lpy
    big = np.maximum(sx, sy)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec["ellipticity"] = np.where(big > 0, (big - np.minimum(sx, sy)) / big, 0.0)
    rec["net_gradient"] = 0.0
    if "z" in names:
        rec["z"] = fill(_col(d, "z_nm"), 0.0)
        rec["lpz"] = fill(_col(d, "sigma_z_nm"), (lpx + lpy) * px)
    rec["prob"] = fill(_col(d, "prob"), 1.0)
    if "photons_unc" in names:
        rec["photons_unc"] = fill(_col(d, "sigma_photons"), 0.0)
    if "lpx_mc" in names:
        rec["lpx_mc"] = fill(_col(df, "x_mc_sigma_nm") / px, 0.0)
        rec["lpy_mc"] = fill(_col(df, "y_mc_sigma_nm") / px, 0.0)
        rec["lpz_mc"] = fill(_col(df, "z_mc_sigma_nm"), 0.0)
        rec["photons_unc_mc"] = fill(_col(df, "photons_mc_sigma"), 0.0)
    return rec


def picasso_info(meta: dict[str, Any], n_frames: int, width: int, height: int) -> list[dict[str, Any]]:
    """Picasso's metadata documents: the camera geometry (``Frames``, ``Width``, ``Height`` are required
    by ``lib.ensure_sanity``; ``Pixelsize`` in nm by Render and the exporters -- Picasso's
    ``get_from_metadata`` searches every document) and the localiser's."""
    movie = {"Byte Order": "<", "Data Type": str(meta.get("data_type", "uint16")), "Frames": int(n_frames),
             "Height": int(height), "Width": int(width), "Pixelsize": float(meta.get("pixel_size_nm", 100.0))}
    if meta.get("movie"):
        movie["File"] = str(meta["movie"])
    loc: dict[str, Any] = {"Generated by": "neurotrain smlm"}
    for k in ("model", "threshold", "mc_samples"):
        if meta.get(k) is not None:
            loc[k.replace("_", " ").capitalize()] = meta[k]
    return [movie, loc]


# --------------------------------------------------------------------------- writers / readers


class LocWriter:
    """Stream localisation tables (pandas chunks) into one file; atomic (temp name, then rename).

    ``meta`` carries ``pixel_size_nm``, ``width``, ``height``, ``n_frames`` (Picasso's metadata,
    our attrs), ``three_d`` (ThunderSTORM/Picasso layout with z; default True) and
    ``excess_noise_factor`` (for Picasso's fallback ``lpx``). The columns are fixed by the first
    non-empty chunk: ``LOC_COLUMNS`` plus the ``EXTRA_COLUMNS`` it carries.
    """

    def __init__(self, path: str | Path, fmt: str = "auto", meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.fmt = format_for(path, fmt)
        self.meta = dict(meta or {})
        self.px = float(self.meta.get("pixel_size_nm", 100.0))
        self.three_d = bool(self.meta.get("three_d", True))
        self._stack = ExitStack()
        self._n = 0
        self._cols: list[str] | None = None
        self._ds: Any = None
        self._max = [0, 0.0, 0.0]  # frame, x, y (px): Picasso's sizes when meta lacks them

    def __enter__(self) -> LocWriter:
        import h5py

        if self.fmt == "h5":
            from neurotrain.io.hdf5 import H5Writer

            attrs = {"format": "neurotrain-smlm-locs", "units": "nm, photons, photons/px; frame 0-based",
                     **{k: v for k, v in self.meta.items() if v is not None}}
            self._h5 = self._stack.enter_context(H5Writer(self.path, attrs=attrs))
            return self
        tmp = self._stack.enter_context(atomic_path(self.path))
        if self.fmt == "csv":
            self._fh = self._stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
        else:
            self._f = self._stack.enter_context(h5py.File(tmp, "w"))
        return self

    def _start(self, df: pd.DataFrame) -> None:
        self._cols = list(LOC_COLUMNS) + _extras(df)
        if self.fmt == "csv":
            header = to_thunderstorm(df.iloc[:0], self.three_d).columns
            # ThunderSTORM quotes every header label and no value
            self._fh.write(",".join(f'"{c}"' for c in header) + "\n")
        elif self.fmt == "picasso":
            # 5/6-channel networks and the baseline have no photon std: no field rather than zeros
            unc = "sigma_photons" in df and (
                len(df) == 0 or bool(np.isfinite(df["sigma_photons"].to_numpy(np.float64)).any()))
            dtype = picasso_dtype(self.three_d, unc, all(c in df for c in MC_COLUMNS))
            self._ds = self._f.create_dataset("locs", shape=(0,), maxshape=(None,), dtype=dtype,
                                              chunks=(16384,), compression="gzip")

    def append(self, df: pd.DataFrame) -> None:
        if self._cols is None:
            if len(df) == 0 and self.fmt != "csv":
                return
            self._start(df)
        assert self._cols is not None
        # every chunk in the first one's columns: extras it lacks as NaN, extras it adds dropped
        df = df.drop(columns=[c for c in EXTRA_COLUMNS if c in df and c not in self._cols])
        df = df.assign(**{c: np.nan for c in self._cols if c not in df and c not in LOC_COLUMNS})
        if self.fmt == "h5":
            d = _canonical(df)
            if len(d):
                arrays = {c: d[c].to_numpy() for c in LOC_COLUMNS}
                arrays.update({c: _col(df, c) for c in self._cols if c not in LOC_COLUMNS})
                self._h5.append(**arrays)
        elif self.fmt == "csv":
            ts = to_thunderstorm(df, self.three_d)
            ts["id"] += self._n
            ts.replace([np.inf, -np.inf], np.nan).to_csv(self._fh, index=False, header=False, na_rep="NaN")
        else:
            rec = to_picasso(df, self.px, self._ds.dtype, float(self.meta.get("excess_noise_factor", 1.0)))
            self._ds.resize((self._n + len(rec),))
            self._ds[self._n:] = rec
            if len(rec):
                self._max = [max(self._max[0], int(rec["frame"].max()) + 1), max(self._max[1], float(rec["x"].max())),
                             max(self._max[2], float(rec["y"].max()))]
        self._n += len(df)

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        import json

        if exc_type is None and self._cols is None:
            self._start(pd.DataFrame({c: np.zeros(0) for c in LOC_COLUMNS}))
        if exc_type is None and self.fmt == "h5" and self._n == 0:
            empty = _canonical(pd.DataFrame({c: np.zeros(0) for c in LOC_COLUMNS}))
            self._h5.append(**{c: empty[c].to_numpy() for c in LOC_COLUMNS},
                            **{c: np.zeros(0) for c in (self._cols or []) if c not in LOC_COLUMNS})
        info = None
        if exc_type is None and self.fmt == "picasso":
            info = picasso_info(self.meta, int(self.meta.get("n_frames") or self._max[0]),
                                int(self.meta.get("width") or np.ceil(self._max[1] + 1)),
                                int(self.meta.get("height") or np.ceil(self._max[2] + 1)))
            # Picasso >= 0.11 reads this copy when the .yaml is missing
            self._f.create_dataset("metadata", data=json.dumps(info))
        self._stack.__exit__(exc_type, *rest)
        if exc_type is not None and self.fmt == "h5":
            from neurotrain.io.hdf5 import part_path

            # a table is never resumed (predict starts each movie afresh): no half file stays behind
            part_path(self.path).unlink(missing_ok=True)
        if info is not None:
            import yaml

            with atomic_path(self.path.with_suffix(".yaml")) as tmp:
                tmp.write_text(yaml.safe_dump_all(info, sort_keys=False), encoding="utf-8")


def write_locs(df: pd.DataFrame, path: str | Path, fmt: str = "auto", meta: dict[str, Any] | None = None) -> Path:
    """Write a whole table at once (see :class:`LocWriter`)."""
    with LocWriter(path, fmt, meta) as w:
        w.append(df)
    return Path(path)


def read_locs(path: str | Path, fmt: str = "auto", pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read ours, ThunderSTORM CSV, Picasso HDF5 or a ground-truth CSV into canonical columns (plus the
    ``EXTRA_COLUMNS`` the file has), checked cell by cell: see :func:`neurotrain.tasks.smlm.table_read.read_table`."""
    from neurotrain.tasks.smlm.table_read import read_table

    return read_table(path, fmt, pixel_size_nm)


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
