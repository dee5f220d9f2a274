"""prepare: catalogues x FITS folders -> prepared HDF5, drop summary, splits, resumption, figures."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from neurotrain.errors import ConfigError
from neurotrain.tasks.stellar import prepare as prep
from neurotrain.tasks.stellar.config import StellarConfig

from .conftest import make_arrays, write_new_layout, write_old_layout

N_GOOD = 14


def _dataset(root: Path) -> Path:
    """14 good spectra (two in the older layout, one matched only by OBSID), one unreadable, one at
    S/N 1.5, one catalogue row without a file. Returns the catalogue path."""
    spec = root / "fits"
    spec.mkdir()
    rows = []
    for i in range(N_GOOD):
        name = f"spec-{i:03d}"
        writer = write_old_layout if i in (3, 9) else write_new_layout
        writer(spec / f"{name}.fits", z=1e-4 * i, snr=30 + 5 * i, seed=i, obsid=5000 + i)
        rid = str(5000 + i) if i == 5 else name
        if i == 5:
            (spec / f"{name}.fits").rename(spec / "renamed.fits")
        rows.append(f"{rid},{4000 + 150 * i},{4.5 - 0.2 * i},{'' if i == 7 else -0.1 * i}")
    write_new_layout(spec / "faint.fits", snr=1.5, seed=99, obsid=6000)
    rows.append("faint,5000,4.0,0.0")
    (spec / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    rows.append("broken,5000,4.0,0.0")
    rows.append("nofile,5000,4.0,0.0")
    cat = root / "X_FE.csv"
    cat.write_text("spec,teff,logg,FE_H\n" + "\n".join(rows) + "\n")
    return cat


def _cfg(root: Path, cat: Path, out: str, figures: bool = False, **catalog) -> StellarConfig:
    return StellarConfig(
        labels={"names": ["TEFF", "LOGG", "FE_H"]},
        preprocess={"grid_min_aa": 4000.0, "grid_max_aa": 8000.0},
        model={"in_channels": 1},
        catalog={"reference": [cat], "spectra_dirs": [root / "fits"], "prepared_dir": root / out,
                 "chunk_size": 3, "read_workers": 2, "figures": figures, **catalog},
    )


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: np.asarray(f[k][()]) for k in f}
        out.update({f"attr:{k}": f.attrs[k] for k in ("label_mean", "label_std", "label_names", "grid_min")})
    return out


def test_prepare_reference(tmp_path):
    cat = _dataset(tmp_path)
    cfg = _cfg(tmp_path, cat, "prep", figures=True)
    summary = prep.prepare(cfg, progress=False)
    ref = summary["reference"]
    assert ref["rows"] == N_GOOD and summary["reference_rows"] == N_GOOD
    assert ref["drops"] == {"low_snr": 1, "unreadable": 1, "no_spectrum_file": 1}
    assert "broken.fits" in ref["examples"]["unreadable"][0] and ref["examples"]["no_spectrum_file"] == ["nofile"]
    a = _arrays(tmp_path / "prep" / "reference.h5")
    m = a["input"].shape[-1]
    assert a["input"].shape == (N_GOOD, 1, m) and a["input"].dtype == np.float32
    assert a["target"].shape == (N_GOOD, 3) and a["target_mask"].dtype == bool
    ids = [x.decode() for x in a["id"]]
    assert "5005" in ids and "faint" not in ids  # matched by OBSID; dropped by S/N
    i7 = ids.index("spec-007")
    assert np.isnan(a["target"][i7, 2]) and not a["target_mask"][i7, 2] and a["target_mask"][i7, :2].all()
    assert a["target"][ids.index("spec-002"), 0] == pytest.approx(4300.0)
    # 7:1:2 of the 17 catalogue rows, decided by id: train 12, val 2, test 3 before drops
    assert set(np.unique(a["split"])) <= {0, 1, 2} and (a["split"] == 0).sum() >= 8
    train = a["target"][a["split"] == 0]
    np.testing.assert_allclose(a["attr:label_mean"], np.nanmean(train, 0), rtol=1e-5)
    np.testing.assert_allclose(a["attr:label_std"], np.nanstd(train, 0), rtol=1e-4)
    assert [x.decode() for x in a["attr:label_names"]] == ["TEFF", "LOGG", "FE_H"]
    assert np.all(np.isfinite(a["input"])) and 0.9 < float(np.median(a["input"])) < 1.05
    s = json.loads((tmp_path / "prep" / "summary.json").read_text())
    assert s["reference"]["drops"]["low_snr"] == 1
    for f in ("reference_stages.png", "reference_snr.png", "reference_drops.png"):
        assert (tmp_path / "prep" / "plots" / f).stat().st_size > 1000
    assert not list((tmp_path / "prep").glob("*.part")) and not list((tmp_path / "prep").glob(".*"))
    # the split of an id does not depend on chunking
    b = prep.prepare(_cfg(tmp_path, cat, "prep7", chunk_size=7), progress=False)
    a7 = _arrays(Path(b["reference"]["file"]))
    assert dict(zip(a7["id"], a7["split"])) == dict(zip(a["id"], a["split"]))


def test_prepare_resumes_to_the_same_file(tmp_path, monkeypatch):
    cat = _dataset(tmp_path)
    full = prep.prepare(_cfg(tmp_path, cat, "full"), progress=False)
    calls = []

    def crash(name, k):
        calls.append(k)
        if k == 2:
            raise KeyboardInterrupt("killed after the third chunk")

    monkeypatch.setattr(prep, "_after_chunk", crash)
    cfg = _cfg(tmp_path, cat, "resumed")
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(cfg, progress=False)
    out = tmp_path / "resumed" / "reference.h5"
    assert not out.exists() and out.with_name("reference.h5.part").exists()
    with h5py.File(out.with_name("reference.h5.part"), "r") as f:
        durable = int(f.attrs["n_complete_rows"])
    assert 0 < durable < N_GOOD
    calls.clear()
    again = prep.prepare(cfg, progress=False)
    assert calls and calls[0] >= 1  # it did not start from the first chunk
    assert again["reference"]["drops"] == full["reference"]["drops"]
    a, b = _arrays(out), _arrays(Path(full["reference"]["file"]))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_prediction_set_and_streaming(tmp_path):
    cat = _dataset(tmp_path)
    cfg = _cfg(tmp_path, cat, "pred")
    cfg.catalog.reference = []
    cfg.catalog.prediction = [cat]
    res = prep.prepare(cfg, progress=False)
    with h5py.File(res["prediction"]["file"], "r") as f:
        assert "split" not in f and f["input"].shape[0] == N_GOOD and "target" in f
    files = sorted((tmp_path / "fits").glob("*.fits"))
    seen, skipped = [], []
    for ids, pre, bad in prep.preprocess_files(files, cfg, "cpu", chunk_size=4):
        seen += ids
        skipped += bad
        if ids:
            assert pre["input"].shape == (len(ids), 1, pre["flux"].shape[1])
            assert pre["keep"].shape == (len(ids),)
    assert len(seen) == N_GOOD + 1 and [p.name for p, _ in skipped] == ["broken.fits"]


def test_prepare_config_errors(tmp_path):
    cat = _dataset(tmp_path)
    cfg = _cfg(tmp_path, cat, "err")
    cfg.labels.names = ["TEFF", "MG_FE"]
    with pytest.raises(ConfigError, match="MG_FE"):
        prep.prepare(cfg, progress=False)
    cfg = _cfg(tmp_path, cat, "err")
    cfg.catalog.spectra_dirs = []
    with pytest.raises(ConfigError, match="spectra_dirs"):
        prep.prepare(cfg, progress=False)
    assert make_arrays  # the shared fixture module stays importable
