"""Label catalogues (the seed's ``X_FE.csv``, ``galah_X_FE.csv``, ``LASP_X_FE.csv``) and label tables.

A catalogue is a CSV with one row per spectrum: an id column (the seed's ``spec``: the spectrum's file
name or its LAMOST ``OBSID``) and label columns (``TEFF``, ``LOGG``, ``FE_H``, ``C_FE``, ...; matched
case-insensitively, so the seed's ``teff``/``logg`` work). Several catalogues are read at once; a label
a catalogue lacks is missing (NaN) for its rows, which training masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotrain.errors import ConfigError, DataError
from neurotrain.io.atomic import atomic_path

_ID_SUFFIXES = (".fits.gz", ".fit.gz", ".fits", ".fit")
#: how many offending ids an error message lists
_SHOW = 5


def normalise_id(s: pd.Series) -> pd.Series:
    """Ids as text: stripped, file suffixes dropped (``x.fits.gz`` -> ``x``), a float-looking integer
    OBSID (``3703110.0``, as spreadsheets write it) back to ``3703110``."""
    s = s.astype(str).str.strip()
    for suf in _ID_SUFFIXES:
        s = s.where(~s.str.lower().str.endswith(suf), s.str.slice(0, -len(suf)))
    floaty = s.str.fullmatch(r"\d+\.0+")
    return s.where(~floaty, s.str.split(".").str[0])


def read_catalog(paths: Sequence[str | Path] | str | Path, id_column: str = "spec",
                 label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and validate one or several label catalogues.

    Returns a DataFrame with column ``id`` (str), one float column per label (upper-case names, NaN =
    missing) and ``catalog`` (the source file). ``attrs["non_numeric"]`` counts, per label, values that
    were not numbers and became NaN, ``attrs["non_numeric_first"]`` the first of them per label (file, line
    and value). With ``label_names`` None, every column but the id is a label. Ids are text as written: a
    spectrum named ``NA`` or ``nan`` keeps its name.

    Errors (one line, naming the file): a missing file, a missing id column, labels that no catalogue
    has (:class:`ConfigError`), an empty id, duplicate ids within or across files (:class:`DataError`,
    listing some).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError("catalog: expected at least one catalogue CSV (got none)")
    wanted = [n.strip().upper() for n in label_names] if label_names is not None else None
    frames: list[pd.DataFrame] = []
    for p in map(Path, paths):
        if p.is_dir():
            raise DataError(f"{p}: catalogue: expected a CSV file (got a folder)")
        if not p.is_file():
            raise DataError(f"{p}: catalogue file not found")
        try:
            df = pd.read_csv(p, dtype={id_column: str}, skipinitialspace=True)
        except Exception as exc:
            raise DataError(f"{p}: not a readable CSV catalogue ({str(exc).strip().splitlines()[0]})") from None
        cols = {c: str(c).strip() for c in df.columns}
        raw_name = {v: k for k, v in cols.items()}
        df = df.rename(columns=cols)
        if id_column not in df.columns:
            alt = [c for c in df.columns if c.lower() == id_column.lower()]
            if not alt:
                raise ConfigError(f"{p}: {id_column}: expected the id column (read.id_column) "
                                  f"(the file has {list(df.columns)[:12]})")
            raw_name[id_column] = raw_name[alt[0]]
            df = df.rename(columns={alt[0]: id_column})
        ids = normalise_id(_raw_ids(p, df[id_column], raw_name[id_column]))
        empty = np.flatnonzero((ids == "").to_numpy())
        if empty.size:
            raise DataError(f"{p}: {id_column}: expected an id in every row ({empty.size} empty, first on "
                            f"line {empty[0] + 2})")
        dup = ids[ids.duplicated(keep=False)].unique()
        if dup.size:
            raise DataError(f"{p}: {id_column}: expected unique ids ({dup.size} repeat, e.g. {list(dup[:_SHOW])})")
        labels = df.drop(columns=[id_column])
        labels.columns = [c.upper() for c in labels.columns]
        labels = labels.loc[:, ~labels.columns.duplicated()]
        out = pd.DataFrame({"id": ids.to_numpy()})
        for c in labels.columns:
            if wanted is None or c in wanted:
                out[c] = labels[c].to_numpy()
        out["catalog"] = str(p)
        out["_line"] = np.arange(len(out)) + 2  # the file's line of each row (line 1: the header)
        frames.append(out)

    cat = pd.concat(frames, ignore_index=True, sort=False)
    if wanted is not None:
        absent = [n for n in wanted if n not in cat.columns]
        if absent:
            files = ", ".join(str(p) for p in paths)
            raise ConfigError(f"{files}: labels {absent}: expected these columns (labels.names) in the catalogue(s)")
        cat = cat[["id", *wanted, "catalog", "_line"]]
    dup = cat["id"][cat["id"].duplicated(keep=False)]
    if dup.size:
        first = dup.iloc[0]
        where = cat.loc[cat["id"] == first, "catalog"].tolist()
        raise DataError(f"{where[-1]}: id: expected each id in one catalogue only ({dup.nunique()} ids repeat "
                        f"across files, e.g. {list(dup.unique()[:_SHOW])}; {first!r} is in {where})")
    label_cols = [c for c in cat.columns if c not in ("id", "catalog", "_line")]
    non_numeric: dict[str, int] = {}
    first_bad: dict[str, str] = {}
    for c in label_cols:
        raw = cat[c]
        num = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        bad = (num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")).to_numpy()
        if bad.any():
            non_numeric[c] = int(bad.sum())
            k = int(np.argmax(bad))
            first_bad[c] = f"{cat['catalog'].iloc[k]} line {cat['_line'].iloc[k]}: {raw.iloc[k]!r}"
        cat[c] = num
    cat = cat.drop(columns="_line")
    cat.attrs["non_numeric"] = non_numeric
    cat.attrs["non_numeric_first"] = first_bad
    cat.attrs["label_names"] = label_cols
    return cat.reset_index(drop=True)


def _raw_ids(path: Path, ids: pd.Series, raw_name: Any) -> pd.Series:
    """The id column as written: pandas reads ids such as ``NA``, ``nan`` or an empty field as missing
    values, so when the first read has any, the id column alone (``raw_name``, its header as read) is read
    again as plain text."""
    if not ids.isna().any():
        return ids
    col = pd.read_csv(path, usecols=[raw_name], dtype=str, keep_default_na=False, skipinitialspace=True)[raw_name]
    return col.reset_index(drop=True)


def write_labels_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a label table as CSV, atomically (temp name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def write_labels_h5(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a label table as HDF5, one dataset per column (text as UTF-8 strings), atomically.
    The column order is kept in the file attribute ``columns``."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for c in df.columns:
                col = df[c]
                if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
                    f.create_dataset(str(c), data=col.to_numpy())
                else:
                    f.create_dataset(str(c), data=np.array(["" if pd.isna(v) else str(v) for v in col], dtype=object),
                                     dtype=h5py.string_dtype("utf-8"))
            f.attrs["columns"] = [str(c) for c in df.columns]
    return path
