"""ThunderSTORM CSV columns <-> the canonical table.

ThunderSTORM's labels are ``name [unit]`` (``MoleculeDescriptor`` / ``PSFModel.Params`` in ThunderSTORM's
source; Ovesny et al. 2014), written in its order, labels quoted, ``NaN`` written out (its importer parses
every field as a double): ``"id","frame","x [nm]","y [nm]","z [nm]","sigma1 [nm]","sigma2 [nm]",
"intensity [photon]","offset [photon]","bkgstd [photon]","uncertainty_xy [nm]","uncertainty_z [nm]"``
(2D: ``"sigma [nm]"``, no z), frame 1-based, then ours (``detection_probability``,
``uncertainty_intensity [photon]``, ``mc_sigma_* [nm|photon]``). Files written by ThunderSTORM (any of
nm/um/px lengths) and Picasso's ``export_thunderstorm`` read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from neurotrain.errors import DataError
from neurotrain.tasks.smlm.loc_table import canonical, column_or_nan
from neurotrain.tasks.smlm.postprocess import MC_COLUMNS

TS_MC = {"x_mc_sigma_nm": "mc_sigma_x [nm]", "y_mc_sigma_nm": "mc_sigma_y [nm]", "z_mc_sigma_nm": "mc_sigma_z [nm]",
         "photons_mc_sigma": "mc_sigma_intensity [photon]"}
"""ThunderSTORM-style labels (``name [unit]``) of the MC-dropout spreads."""
TS_LABEL = re.compile(r"^\s*([^\[\]]+?)\s*(?:\[([^\]]*)\])?\s*$")
"""A ThunderSTORM label: ``name`` and, in brackets, an optional ``unit``."""


def to_thunderstorm(df: pd.DataFrame, three_d: bool = True) -> pd.DataFrame:
    """Canonical table -> ThunderSTORM columns (1-based frames, nm, photons), ThunderSTORM's order.

    ``three_d``: the astigmatism layout (``z [nm]``, ``sigma1/2 [nm]``, ``uncertainty_z [nm]``),
    else the 2D one (``sigma [nm]``). ``bkgstd [photon]`` is the background's shot noise,
    sqrt(offset). Our extra columns follow.
    """
    d = canonical(df)
    out = pd.DataFrame({"id": np.arange(1, len(d) + 1, dtype=np.int64), "frame": d["frame"].to_numpy() + 1,
                        "x [nm]": d["x_nm"].to_numpy(np.float64), "y [nm]": d["y_nm"].to_numpy(np.float64)})
    sx, sy = column_or_nan(df, "psf_sigma_x_nm"), column_or_nan(df, "psf_sigma_y_nm")
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


def from_thunderstorm(raw: pd.DataFrame, path: Path, px: float | None) -> pd.DataFrame:
    """ThunderSTORM columns (``name [unit]``, any of nm/um/px for lengths) -> canonical + extras."""
    labels: dict[str, str] = {}
    for col in raw.columns:
        m = TS_LABEL.match(str(col))
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
