"""The canonical localisation table shared by every format: its columns, the optional ones, and the
format a file name implies.

Canonical columns (``LOC_COLUMNS``): ``frame`` (0-based), ``x_nm``, ``y_nm``, ``z_nm``, ``photons``,
``bg`` (photons/px), ``prob``, ``sigma_x_nm``, ``sigma_y_nm``, ``sigma_z_nm``, ``sigma_photons``.
Coordinates: pixel ``i`` spans ``[i, i+1) x pixel size``. Optional columns (``EXTRA_COLUMNS``):
``psf_sigma_x_nm``, ``psf_sigma_y_nm`` (PSF width) and the MC-dropout spreads ``x_mc_sigma_nm``,
``y_mc_sigma_nm``, ``z_mc_sigma_nm``, ``photons_mc_sigma``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurotrain.errors import DataError
from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS, MC_COLUMNS, PSF_COLUMNS

EXTRA_COLUMNS = PSF_COLUMNS + MC_COLUMNS
"""Optional columns carried by every format when a table has them."""


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


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` in the canonical columns, in their order: a missing ``z_nm`` is 0 (2D), a missing ``prob`` 1,
    any other missing column NaN; ``frame`` as int64. Extra columns are dropped."""
    out = pd.DataFrame(index=df.index)
    for c in LOC_COLUMNS:
        out[c] = df[c] if c in df else (np.nan if c not in ("z_nm", "prob") else (0.0 if c == "z_nm" else 1.0))
    out["frame"] = out["frame"].astype("int64")
    return out


def extras_of(df: pd.DataFrame) -> list[str]:
    """The optional columns (``EXTRA_COLUMNS``) that ``df`` carries, in their fixed order."""
    return [c for c in EXTRA_COLUMNS if c in df]


def column_or_nan(df: pd.DataFrame, name: str) -> np.ndarray:
    """Column ``name`` of ``df`` as float64, or NaN everywhere when ``df`` lacks it."""
    return df[name].to_numpy(np.float64) if name in df else np.full(len(df), np.nan)
