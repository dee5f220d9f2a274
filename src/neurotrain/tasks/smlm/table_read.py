"""Reading localisation tables (``io.read_locs``): ThunderSTORM CSV, Picasso HDF5, ours, ground-truth CSV.

Everything a file holds is checked before it is used: each column read holds numbers (text, byte strings,
wrong HDF5 shapes stop with the column and row), each row has a finite frame and position (a NaN
coordinate would be dropped by the matcher and inflate the Jaccard index), frames are whole numbers from
the format's first frame on. Every problem is one :class:`DataError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotrain.errors import DataError
from neurotrain.tasks.smlm.loc_table import EXTRA_COLUMNS, canonical, format_for
from neurotrain.tasks.smlm.postprocess import LOC_COLUMNS
from neurotrain.tasks.smlm.thunderstorm import TS_LABEL, TS_MC, from_thunderstorm

REQUIRED_FINITE = ("frame", "x_nm", "y_nm", "z_nm")
"""Columns every localisation needs as finite numbers: without a frame and a position nothing can be
matched or rendered (a NaN x would be skipped by the matcher and inflate the Jaccard index)."""


def _numeric(raw: pd.DataFrame, cols: list[str], path: Path) -> pd.DataFrame:
    """``cols`` of ``raw`` as float64; the first cell that is not a number is a one-line DataError."""
    out = raw.copy()
    for c in cols:
        col = raw[c]
        if col.dtype.kind in "iufb":
            out[c] = col.astype(np.float64)
            continue
        conv = pd.to_numeric(col.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v),
                             errors="coerce")
        bad = np.flatnonzero(conv.isna().to_numpy() & col.notna().to_numpy()
                             & ~col.astype(str).str.strip().str.lower().isin(["nan", ""]).to_numpy())
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: column {c!r} row {i + 1}: expected a number (got {_short(col.iloc[i])})")
        out[c] = conv.astype(np.float64)
    return out


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_positions(d: pd.DataFrame, path: Path, labels: dict[str, str] | None = None, first_frame: int = 0) -> None:
    """Frames and coordinates finite, frames whole numbers >= ``first_frame`` (0 ours and Picasso, 1
    ThunderSTORM); else one DataError line naming the file's column (``labels``: canonical -> file label)."""
    labels = labels or {}
    for c in REQUIRED_FINITE:
        if c not in d:
            continue
        v = d[c].to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: column {labels.get(c, c)!r} row {i + 1}: {v[i]} is not a finite number; "
                            "every localisation needs a frame and a position")
    if "frame" in d and len(d):
        f = d["frame"].to_numpy(np.float64)
        bad = np.flatnonzero((f < first_frame) | (f != np.round(f)))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: column {labels.get('frame', 'frame')!r} row {i + 1}: frame {f[i]:g}: "
                            f"expected a whole number >= {first_frame}")


def _h5_column(f: Any, name: str, path: Path, n: int | None) -> np.ndarray:
    ds = f[name]
    if not hasattr(ds, "shape") or ds.shape is None or len(ds.shape) != 1:
        raise DataError(f"{path}: dataset {name!r}: expected a 1-D column (got shape {getattr(ds, 'shape', None)})")
    if n is not None and ds.shape[0] != n:
        raise DataError(f"{path}: dataset {name!r}: expected {n} rows like 'frame' (got {ds.shape[0]})")
    return ds[()]


def read_table(path: str | Path, fmt: str = "auto", pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read ours, ThunderSTORM CSV, Picasso HDF5 or a ground-truth CSV into canonical columns
    (plus the ``EXTRA_COLUMNS`` the file has).

    Every column read must hold numbers, and every row a finite frame and position: text in a numeric
    column, a NaN coordinate, a negative frame, a damaged or empty file each stop with one
    :class:`DataError` line naming the file, the column and the row. A header-only table is an empty table.
    """
    import h5py
    import yaml

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a localisation table")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = format_for(path, fmt)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes), expected a localisation table")
    try:
        if kind == "csv":
            try:
                raw = pd.read_csv(path)
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: no header line, expected a localisation table") from None
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text; expected a CSV localisation table") from None
            if any(TS_LABEL.match(str(c)) and str(c).startswith("x [") for c in raw.columns):
                used = [c for c in raw.columns if (m := TS_LABEL.match(str(c))) is not None and m.group(1) in TS_USED]
                raw = _numeric(raw, used, path)
                by_base = {m.group(1): str(c) for c in raw.columns if (m := TS_LABEL.match(str(c))) is not None}
                canon = {"frame": "frame", "x_nm": "x", "y_nm": "y", "z_nm": "z"}
                view = pd.DataFrame({k: raw[by_base[b]] for k, b in canon.items() if b in by_base})
                _check_positions(view, path, {k: by_base[b] for k, b in canon.items() if b in by_base}, first_frame=1)
                d = from_thunderstorm(raw, path, pixel_size_nm)
            elif {"frame", "x_nm", "y_nm"} <= set(raw.columns):
                d = _numeric(raw, [c for c in raw.columns if c in (*LOC_COLUMNS, *EXTRA_COLUMNS)], path)
                _check_positions(d, path)
            else:
                raise DataError(f"{path}: CSV has neither ThunderSTORM columns ('x [nm]') nor frame/x_nm/y_nm "
                                f"(got {[str(c) for c in raw.columns][:8]})")
            return canonical(d).assign(**{c: d[c] for c in d.columns if c not in LOC_COLUMNS})
        with h5py.File(path, "r") as f:
            if kind == "picasso" or "locs" in f:
                if "locs" not in f:
                    raise DataError(f"{path}: Picasso HDF5 needs a 'locs' dataset (got {list(f.keys())[:8]})")
                rec = _h5_column(f, "locs", path, None)
                names = rec.dtype.names or ()
                missing = [c for c in ("frame", "x", "y") if c not in names]
                if missing:
                    raise DataError(f"{path}: dataset 'locs': expected a table with fields frame, x, y "
                                    f"(missing {missing}; dtype {rec.dtype})")
                for c in names:
                    if rec.dtype[c].kind not in "iufb":
                        raise DataError(f"{path}: dataset 'locs' field {c!r}: expected numbers (got {rec.dtype[c]})")
                embedded = f["metadata"][()] if "metadata" in f else None
            else:
                missing = [c for c in ("frame", "x_nm", "y_nm") if c not in f]
                if missing:
                    raise DataError(f"{path}: localisation HDF5 lacks datasets {missing}")
                n = int(f["frame"].shape[0]) if getattr(f["frame"], "shape", None) else None
                cols = {c: _h5_column(f, c, path, n) for c in (*LOC_COLUMNS, *EXTRA_COLUMNS) if c in f}
                d = _numeric(pd.DataFrame(cols), list(cols), path)
                _check_positions(d, path)
                return canonical(d).assign(**{c: d[c] for c in EXTRA_COLUMNS if c in d})
        view = pd.DataFrame({k: rec[c].astype(np.float64) for k, c in
                             (("frame", "frame"), ("x_nm", "x"), ("y_nm", "y"), ("z_nm", "z")) if c in names})
        _check_positions(view, path, {"x_nm": "x", "y_nm": "y", "z_nm": "z"})
        px = pixel_size_nm or _picasso_pixel_size(path, embedded)
        if not (np.isfinite(px) and px > 0):
            raise DataError(f"{path}: Pixelsize: expected a positive number of nm (got {px})")
        return _from_picasso(rec, px)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, yaml.YAMLError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"{path}: cannot read localisation table ({first})") from None


TS_USED = frozenset({"frame", "x", "y", "z", "intensity", "offset", "uncertainty_xy", "uncertainty", "uncertainty_z",
                     "sigma", "sigma1", "sigma2", "detection_probability", "uncertainty_intensity",
                     *(v.split(" [")[0] for v in TS_MC.values())})
"""ThunderSTORM labels (without unit) this reader uses; each must hold numbers."""


def _from_picasso(rec: np.ndarray, px: float) -> pd.DataFrame:
    names = rec.dtype.names or ()

    def get(name: str, scale: float = 1.0) -> np.ndarray | float:
        return rec[name].astype(np.float64) * scale if name in names else np.nan

    d = pd.DataFrame({"frame": rec["frame"].astype("int64"), "x_nm": get("x", px), "y_nm": get("y", px),
                      "z_nm": get("z") if "z" in names else 0.0, "photons": get("photons"), "bg": get("bg"),
                      "prob": get("prob") if "prob" in names else 1.0, "sigma_x_nm": get("lpx", px),
                      "sigma_y_nm": get("lpy", px), "sigma_z_nm": get("lpz"), "sigma_photons": get("photons_unc")})
    out = canonical(d)
    if "sx" in names and "sy" in names:
        out["psf_sigma_x_nm"], out["psf_sigma_y_nm"] = get("sx", px), get("sy", px)
    if "lpx_mc" in names:
        out["x_mc_sigma_nm"], out["y_mc_sigma_nm"] = get("lpx_mc", px), get("lpy_mc", px)
        out["z_mc_sigma_nm"], out["photons_mc_sigma"] = get("lpz_mc"), get("photons_unc_mc")
    return out


def _picasso_pixel_size(path: Path, embedded: Any = None) -> float:
    import json

    import yaml

    side = path.with_suffix(".yaml")
    docs: list[Any] = []
    if side.is_file():
        docs = list(yaml.safe_load_all(side.read_text(encoding="utf-8")))
    elif embedded is not None:
        docs = json.loads(embedded.decode("utf-8") if isinstance(embedded, bytes) else str(embedded))
    for doc in reversed(docs):  # Picasso's get_from_metadata: the last document wins
        if isinstance(doc, dict) and "Pixelsize" in doc:
            return float(doc["Pixelsize"])
    raise DataError(f"{path}: Picasso file without 'Pixelsize' in {side.name} or its metadata; "
                    "pass the pixel size")


