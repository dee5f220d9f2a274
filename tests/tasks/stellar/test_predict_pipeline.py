"""The streaming predict pipeline (readers -> device -> writer thread): the same table as predicting batch by
batch, rows in input order with threads or processes and any batch size, counted skips, stage times, and no
half-written output when anything fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neurotrain.config import validate_config
from neurotrain.errors import DataError
from neurotrain.tasks.stellar import io, predict
from neurotrain.tasks.stellar.task import StellarTask

from .conftest import make_arrays, write_new_layout, write_old_layout

LABELS = ["TEFF", "LOGG", "FE_H"]


def _cfg(**extra: object) -> object:
    data = {
        "task": "stellar", "seed": 1, "labels": {"names": LABELS},
        "preprocess": {"grid_min_aa": 4000.0, "grid_max_aa": 6800.0, "grid_step_log10": 2e-4},
        "model": {"base_channels": 8, "hidden": 32}, "inference": {"device": "cpu"},
        "predict": {"batch_size": 3, "plot": False}, "catalog": {"read_workers": 2},
    }
    data.update(extra)
    return validate_config(data)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return StellarTask().build_model(_cfg()).eval()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Eight spectra (both layouts) and four bad files (junk, truncated, all-NaN flux, no Z) in between."""
    d = tmp_path / "spectra"
    d.mkdir()
    for i in range(7):
        write_new_layout(d / f"s{i}.fits", seed=i, obsid=500 + i, z=1e-4 * i)
    write_old_layout(d / "s7.fits", seed=7)
    (d / "s1x.fits").write_text("not FITS\n" * 40)
    data = (d / "s0.fits").read_bytes()
    (d / "s3x.fits").write_bytes(data[: len(data) - 5000])
    nan = make_arrays()
    nan["flux"][:] = np.nan
    write_new_layout(d / "s4x.fits", arrays=nan)
    write_new_layout(d / "s6x.fits", z=None)
    return d


def _reference(cfg, model, folder: Path) -> pd.DataFrame:
    """The table predicted in one batch of already-read spectra (no pipeline)."""
    spectra, _ = io.read_many(io.find_spectra([folder], ["*.fits"]), cfg.read, workers=1)
    return predict.predict_spectra(cfg, model, spectra, torch.device("cpu"), 0, [])


@pytest.mark.parametrize("processes", [False, True])
def test_table_equals_batchwise_prediction_in_input_order(tmp_path: Path, folder: Path, model, processes) -> None:
    cfg = _cfg(read={"processes": processes})
    out = tmp_path / "out" / "labels.csv"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".keep").write_text("")
    stats: dict = {}
    written = predict.run_pipeline(cfg, model, [folder], out, mc_samples=0, stats=stats)
    assert written == [out, out.with_name("labels_skipped.csv")]
    ref = _reference(cfg, model, folder)
    assert out.read_bytes() == ref.to_csv(index=False, float_format="%.6g").encode()
    table = pd.read_csv(out)
    assert table["id"].tolist() == [f"s{i}" for i in range(8)]
    assert table["obsid"].tolist()[:3] == [500, 501, 502]
    assert all(np.isfinite(table[n]).all() and (table[f"{n}_ERR"] > 0).all() for n in LABELS)
    skipped = pd.read_csv(out.with_name("labels_skipped.csv"))
    assert [Path(f).name for f in skipped["file"]] == ["s1x.fits", "s3x.fits", "s4x.fits", "s6x.fits"]
    assert skipped["reason"].str.contains("FLUX").sum() == 1 and skipped["reason"].str.contains(": Z:").sum() == 1
    assert stats["files"] == 12 and stats["rows"] == 8 and stats["skipped"] == 4
    assert all(stats[k] >= 0 for k in ("read_wait_s", "device_s", "writer_busy_s", "writer_wait_s"))
    assert sorted(p.name for p in out.parent.iterdir()) == [".keep", "labels.csv", "labels_skipped.csv"]


def test_batch_size_does_not_change_the_table(tmp_path: Path, folder: Path, model) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict.predict_files(_cfg(predict={"batch_size": 1, "plot": False}), model, [folder], a)
    predict.predict_files(_cfg(predict={"batch_size": 64, "plot": False}), model, [folder], b)
    assert a.read_bytes() == b.read_bytes()


def test_kiel_plot_and_h5(tmp_path: Path, folder: Path, model) -> None:
    cfg = _cfg(predict={"batch_size": 4, "plot": True})
    written = predict.predict_files(cfg, model, [folder], tmp_path / "labels.h5")
    assert [p.name for p in written] == ["labels.h5", "labels_skipped.csv", "labels_kiel.png"]
    import h5py

    with h5py.File(tmp_path / "labels.h5") as f:
        assert [x.decode() for x in f["id"][()]] == [f"s{i}" for i in range(8)]


def test_nothing_readable_is_one_error_and_no_file(tmp_path: Path, model) -> None:
    for i in range(3):
        (tmp_path / f"b{i}.fits").write_text("junk")
    out = tmp_path / "labels.csv"
    with pytest.raises(DataError, match=r"none of 3 files could be read \(first: .*b0\.fits"):
        predict.predict_files(_cfg(), model, [tmp_path], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.fits", "b1.fits", "b2.fits"]


def test_failure_mid_run_leaves_the_previous_table(tmp_path: Path, folder: Path, model, monkeypatch) -> None:
    out = tmp_path / "labels.csv"
    out.write_text("previous table\n")
    real = predict.infer_batch
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(*args, **kw)

    monkeypatch.setattr(predict, "infer_batch", flaky)
    with pytest.raises(RuntimeError, match="device lost"):
        predict.predict_files(_cfg(), model, [folder], out)
    assert out.read_text() == "previous table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "spectra"]


@pytest.mark.gpu
def test_pipeline_on_cuda_matches_batchwise(tmp_path: Path, folder: Path, model) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = _cfg(read={"processes": True}, inference={"device": "cuda"})
    out = tmp_path / "labels.csv"
    stats: dict = {}
    predict.run_pipeline(cfg, model, [folder], out, mc_samples=0, stats=stats)
    spectra, _ = io.read_many(io.find_spectra([folder], ["*.fits"]), cfg.read, workers=1)
    ref = predict.predict_spectra(cfg, model.cuda(), spectra, torch.device("cuda"), 0, [])
    table = pd.read_csv(out)
    assert table["id"].tolist() == ref["id"].tolist()
    np.testing.assert_allclose(table["TEFF"], ref["TEFF"], rtol=1e-5)
    assert stats["device_s"] > 0 and stats["rows"] == 8
