"""Writing localisation tables: :class:`LocWriter` streams pandas chunks into one ThunderSTORM CSV, Picasso
HDF5 (+ ``.yaml``) or our HDF5 file, atomically (temp name, then rename); :func:`write_locs` writes a whole
table at once. The column mappings are in ``thunderstorm.py`` and ``picasso.py``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.smlm.loc_table import EXTRA_COLUMNS, canonical, column_or_nan, extras_of, format_for
from neurotrain.tasks.smlm.picasso import picasso_dtype, picasso_info, to_picasso
from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS, MC_COLUMNS
from neurotrain.tasks.smlm.thunderstorm import to_thunderstorm

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
        self._cols = list(LOC_COLUMNS) + extras_of(df)
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
            d = canonical(df)
            if len(d):
                arrays = {c: d[c].to_numpy() for c in LOC_COLUMNS}
                arrays.update({c: column_or_nan(df, c) for c in self._cols if c not in LOC_COLUMNS})
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
            empty = canonical(pd.DataFrame({c: np.zeros(0) for c in LOC_COLUMNS}))
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
