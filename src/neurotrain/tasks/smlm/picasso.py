"""Picasso HDF5 ``locs`` <-> the canonical table, as ``picasso.io.save_locs`` writes it.

HDF5 dataset ``locs`` (compound: ``PICASSO_BASE`` -- frame u4 0-based, x, y, sx, sy, lpx, lpy in camera
pixels, photons, bg, ellipticity, net_gradient f4 -- then z, lpz in nm for 3D, then ours), the metadata as
YAML documents in ``<name>.yaml`` (movie: Frames, Width, Height, ...; localiser: Pixelsize in nm) and, as
Picasso >= 0.11 also does, as a JSON ``metadata`` dataset. Every field finite (Picasso drops rows with a
NaN anywhere; see :func:`to_picasso`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from neurotrain.tasks.smlm.loc_table import canonical, column_or_nan
from neurotrain.tasks.smlm.postprocess import MC_COLUMNS

PICASSO_BASE = (("frame", "u4"), ("x", "f4"), ("y", "f4"), ("photons", "f4"), ("sx", "f4"), ("sy", "f4"),
                ("bg", "f4"), ("lpx", "f4"), ("lpy", "f4"), ("ellipticity", "f4"), ("net_gradient", "f4"))
"""Picasso's base localisation fields and dtypes (``picasso.localize.LOCALIZATION_COLUMNS['Base']``,
as ``gausslq.locs_from_fits`` types them)."""
PICASSO_3D = (("z", "f4"), ("lpz", "f4"))
"""Picasso's 3D fields (``zfit``): z and its precision in nm."""
PICASSO_MC = (("lpx_mc", "f4"), ("lpy_mc", "f4"), ("lpz_mc", "f4"), ("photons_unc_mc", "f4"))
"""Ours: MC-dropout spreads in Picasso's units (px, px, nm, photons)."""


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
    d = canonical(df)
    px = float(pixel_size_nm)
    dtype = dtype if dtype is not None else picasso_dtype(True, "sigma_photons" in df, all(c in df for c in MC_COLUMNS))
    names = dtype.names or ()
    rec = np.zeros(len(d), dtype=dtype)

    def fill(v: np.ndarray, default: float | np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(v), v, default)

    sx = fill(column_or_nan(df, "psf_sigma_x_nm") / px, 0.0)
    sy = fill(column_or_nan(df, "psf_sigma_y_nm") / px, 0.0)
    photons, bg = column_or_nan(d, "photons"), fill(column_or_nan(d, "bg"), 0.0)
    lpx = fill(column_or_nan(d, "sigma_x_nm") / px, localization_precision_px(photons, sx, sy, bg, excess_noise))
    lpy = fill(column_or_nan(d, "sigma_y_nm") / px, localization_precision_px(photons, sy, sx, bg, excess_noise))
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
        rec["z"] = fill(column_or_nan(d, "z_nm"), 0.0)
        rec["lpz"] = fill(column_or_nan(d, "sigma_z_nm"), (lpx + lpy) * px)
    rec["prob"] = fill(column_or_nan(d, "prob"), 1.0)
    if "photons_unc" in names:
        rec["photons_unc"] = fill(column_or_nan(d, "sigma_photons"), 0.0)
    if "lpx_mc" in names:
        rec["lpx_mc"] = fill(column_or_nan(df, "x_mc_sigma_nm") / px, 0.0)
        rec["lpy_mc"] = fill(column_or_nan(df, "y_mc_sigma_nm") / px, 0.0)
        rec["lpz_mc"] = fill(column_or_nan(df, "z_mc_sigma_nm"), 0.0)
        rec["photons_unc_mc"] = fill(column_or_nan(df, "photons_mc_sigma"), 0.0)
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
