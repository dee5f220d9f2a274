"""SMLM file formats: TIFF movies and localisation tables, read and written.

The room's modules, one job each; their public names are re-exported here (``from
neurotrain.tasks.smlm.io import read_locs`` keeps working):

* ``tiff.py``: TIFF movies (:class:`TiffStack`, memory-mapped reads; :class:`TiffMovieWriter`).
* ``loc_table.py``: the canonical table (``LOC_COLUMNS`` + ``EXTRA_COLUMNS``) and :func:`format_for`.
* ``thunderstorm.py``: ``csv``, ThunderSTORM's columns (``name [unit]``, 1-based frames).
* ``picasso.py``: ``picasso``, Picasso's HDF5 ``locs`` (camera pixels) and its ``.yaml`` metadata.
* ``h5`` (ours): one dataset per column, units and pixel size as attributes (written by ``loc_writer.py``).
* ``loc_writer.py``: :class:`LocWriter`, :func:`write_locs` (any format, atomic).
* ``table_read.py``: :func:`read_locs` (any format, checked cell by cell).
* ``render.py``: :func:`render`, :func:`save_render` (super-resolution images).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from neurotrain.tasks.smlm.loc_table import EXTRA_COLUMNS, format_for
from neurotrain.tasks.smlm.loc_writer import LocWriter, write_locs
from neurotrain.tasks.smlm.picasso import (
    PICASSO_3D,
    PICASSO_BASE,
    PICASSO_MC,
    localization_precision_px,
    picasso_dtype,
    picasso_info,
    to_picasso,
)
from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS
from neurotrain.tasks.smlm.render import render, save_render
from neurotrain.tasks.smlm.thunderstorm import TS_MC, to_thunderstorm
from neurotrain.tasks.smlm.tiff import TiffMovieWriter, TiffStack

__all__ = ["TiffMovieWriter", "TiffStack", "LocWriter", "read_locs", "write_locs", "render", "save_render", "format_for",
           "EXTRA_COLUMNS", "LOC_COLUMNS", "PICASSO_3D", "PICASSO_BASE", "PICASSO_MC", "TS_MC",
           "localization_precision_px", "picasso_dtype", "picasso_info", "to_picasso", "to_thunderstorm"]


def read_locs(path: str | Path, fmt: str = "auto", pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read ours, ThunderSTORM CSV, Picasso HDF5 or a ground-truth CSV into canonical columns (plus the
    ``EXTRA_COLUMNS`` the file has), checked cell by cell: see :func:`neurotrain.tasks.smlm.table_read.read_table`."""
    from neurotrain.tasks.smlm.table_read import read_table

    return read_table(path, fmt, pixel_size_nm)
