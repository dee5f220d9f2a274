"""Bad input through the ``neurotrain`` command line, as a new user meets it (issue 17, "Bad input"):
``predict`` on a folder of good and bad spectra, ``-o`` paths that cannot be written, and ``prepare`` with
catalogues whose ids are empty or look like missing values, match no file, or carry text labels. Every case
ends in one line naming the file (exit 1, or 2 for a config error) or in counted skips, and leaves no
half-written output."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from astropy.io import fits
from typer.testing import CliRunner

from neurotrain.cli import app
from neurotrain.config import config_to_dict, validate_config
from neurotrain.tasks.stellar.task import StellarTask

from .conftest import make_arrays, write_new_layout, write_old_layout

LABELS = ["TEFF", "LOGG", "FE_H"]
SMALL = {"task": "stellar", "seed": 1, "labels": {"names": LABELS},
         "preprocess": {"grid_min_aa": 4000.0, "grid_max_aa": 6800.0, "grid_step_log10": 2e-4},
         "model": {"base_channels": 8, "hidden": 32}, "inference": {"device": "cpu"},
         "predict": {"batch_size": 3, "plot": False}, "catalog": {"read_workers": 1, "figures": False}}
runner = CliRunner()


def _one_error_line(result, code: int = 1) -> str:
    """The run failed with ``code``, no traceback, and its last line is the error; returns that line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (AttributeError, TypeError, KeyError))
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: "), result.output
    return line


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained stellar checkpoint: weights and the embedded config, all that predict needs."""
    cfg = validate_config(SMALL)
    torch.manual_seed(0)
    model = StellarTask().build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": config_to_dict(cfg)}}, path)
    return path


def _good(folder: Path, n: int = 2) -> None:
    for i in range(n):
        write_new_layout(folder / f"good{i}.fits", seed=i, obsid=500 + i)


def test_predict_mixed_folder_skips_each_bad_file_and_writes_only_the_good(tmp_path: Path, ckpt: Path) -> None:
    d = tmp_path / "spectra"
    d.mkdir()
    _good(d)
    data = (d / "good0.fits").read_bytes()
    (d / "trunc.fits").write_bytes(data[: len(data) // 2])
    (d / "text.fits").write_text("not a FITS file\n" * 50)
    fits.PrimaryHDU(np.zeros(10, np.float32)).writeto(d / "oned.fits")  # neither layout
    write_new_layout(d / "noz.fits", z=None)
    a = make_arrays()
    a["flux"][:] = np.nan
    write_new_layout(d / "nan.fits", arrays=a)
    a = make_arrays()
    a["ivar"][:] = 0
    write_new_layout(d / "ivar0.fits", arrays=a)
    a = make_arrays()
    pd.DataFrame({"wavelength": a["wave"], "flux": a["flux"]}).to_csv(d / "nocol.csv", index=False)
    flux = a["flux"].astype(object)
    flux[7] = "x"  # text in a numeric column: a damaged file, not a masked pixel
    pd.DataFrame({"wavelength": a["wave"], "flux": flux, "ivar": a["ivar"], "z": 1e-4}).to_csv(d / "textflux.csv", index=False)
    with h5py.File(d / "names.h5", "w") as f:  # wrong dataset names
        f["wave"], f["spec"] = a["wave"], a["flux"]
    with h5py.File(d / "group.h5", "w") as f:  # the right names, but flux is a group
        f["wavelength"], f["ivar"] = a["wave"], a["ivar"]
        f.create_group("flux")
    write_old_layout(d / "coeff.fits", rows=2)  # no wavelength row: the header's solution is used...
    with fits.open(d / "coeff.fits", mode="update") as h:
        h[0].header["COEFF0"] = "abc"  # ...and it is not a number
    empty = [fits.Column(name=n, format="10E", array=np.zeros((0, 10), np.float32)) for n in ("FLUX", "IVAR")]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(empty, name="COADD")]).writeto(d / "norows.fits")
    bad = {"trunc.fits", "text.fits", "oned.fits", "noz.fits", "nan.fits", "ivar0.fits", "nocol.csv", "textflux.csv",
           "names.h5", "group.h5", "coeff.fits", "norows.fits"}
    out = tmp_path / "out" / "labels.csv"  # a folder that does not exist yet is created
    res = runner.invoke(app, ["predict", str(ckpt), str(d), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    table = pd.read_csv(out)
    assert table["id"].tolist() == ["good0", "good1"]
    assert np.isfinite(table[[*LABELS, *(f"{n}_ERR" for n in LABELS)]].to_numpy()).all()
    skipped = pd.read_csv(out.with_name("labels_skipped.csv"))
    assert {Path(f).name for f in skipped["file"]} == bad
    reasons = dict(zip((Path(f).name for f in skipped["file"]), skipped["reason"]))
    assert "textflux.csv: flux: expected numbers (got 1 non-numeric, first on line 9: 'x')" in reasons["textflux.csv"]
    for name, field in (("noz.fits", ": Z:"), ("nan.fits", ": FLUX:"), ("ivar0.fits", ": IVAR:"), ("oned.fits", ": layout:"),
                        ("nocol.csv", ": columns:"), ("names.h5", ": datasets:"),
                        ("group.h5", ": flux: expected a numeric dataset (got a group)"),
                        ("coeff.fits", ": COEFF0/COEFF1: expected numbers (got 'abc', 0.0001)"),
                        ("norows.fits", ": COADD: expected a row holding the spectrum (got 0 rows)")):
        assert reasons[name].startswith(str(d / name)) and field in reasons[name], reasons[name]
    summary = next(ln for ln in res.output.splitlines() if ln.startswith("skipped "))
    assert summary.startswith(f"skipped {len(bad)} of {len(bad) + 2} files (first: ") and "labels_skipped.csv" in summary
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.csv", "labels_skipped.csv"]


def test_predict_nothing_readable_is_one_line_naming_the_file_once(tmp_path: Path, ckpt: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.fits").write_text("x")
    (d / "b.csv").write_text("a,b\n1,2\n")
    line = _one_error_line(runner.invoke(app, ["predict", str(ckpt), str(d), "-o", str(tmp_path / "l.csv")]))
    assert f"none of 2 files could be read (first: {d / 'a.fits'}: not a readable FITS file" in line
    assert line.count("a.fits") == 1
    assert not (tmp_path / "l.csv").exists()
    (tmp_path / "empty").mkdir()
    line = _one_error_line(runner.invoke(app, ["predict", str(ckpt), str(tmp_path / "empty"), "-o", str(tmp_path / "l.csv")]))
    assert line.startswith(f"error: {tmp_path / 'empty'}: no spectra found")


def test_predict_output_that_cannot_be_written_fails_first_naming_the_path(tmp_path: Path, ckpt: Path, monkeypatch) -> None:
    d = tmp_path / "spectra"
    d.mkdir()
    _good(d, 1)
    from neurotrain.tasks.stellar import stream

    def no_reading(*a, **k):  # the check comes before any spectrum is read
        raise AssertionError("read before the output was checked")

    monkeypatch.setattr(stream, "iter_batches", no_reading)
    target = f"{ckpt}/x.csv"  # inside a file
    line = _one_error_line(runner.invoke(app, ["predict", str(ckpt), str(d), "-o", target]))
    assert line == f"error: {target}: -o: expected a path inside a folder ({ckpt} is a file)"
    (tmp_path / "taken.csv").mkdir()
    line = _one_error_line(runner.invoke(app, ["predict", str(ckpt), str(d), "-o", str(tmp_path / "taken.csv")]))
    assert line == f"error: {tmp_path / 'taken.csv'}: -o: expected a csv file name (got an existing folder)"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


# --------------------------------------------------------------------------- prepare: catalogues


def _prepare(tmp_path: Path, catalogue: str, spectra: Path) -> object:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    (tmp_path / "cat.csv").write_text(catalogue)
    return runner.invoke(app, ["prepare", str(cfg), f"catalog.reference=[{tmp_path / 'cat.csv'}]",
                               f"catalog.spectra_dirs=[{spectra}]", f"catalog.prepared_dir={tmp_path / 'prep'}",
                               "catalog.splits=[1.0,0.0,0.0]"])


@pytest.fixture
def spectra(tmp_path: Path) -> Path:
    d = tmp_path / "spectra"
    d.mkdir()
    _good(d)
    write_new_layout(d / "NA.fits", seed=5, obsid=77)  # a spectrum whose name pandas would read as missing
    a = make_arrays()
    a["flux"][:] = np.nan
    write_new_layout(d / "nan.fits", arrays=a)
    return d


def test_prepare_catalogue_that_is_a_folder(tmp_path: Path, spectra: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    line = _one_error_line(runner.invoke(app, ["prepare", str(cfg), f"catalog.reference=[{spectra}]",
                                               f"catalog.spectra_dirs=[{spectra}]",
                                               f"catalog.prepared_dir={tmp_path / 'prep'}"]))
    assert line == f"error: {spectra}: catalogue: expected a CSV file (got a folder)"


def test_prepare_keeps_ids_that_look_like_missing_values(tmp_path: Path, spectra: Path) -> None:
    res = _prepare(tmp_path, "spec,TEFF,LOGG,FE_H\ngood0,5000,4.0,0.0\nNA,5500,4.2,-0.3\n", spectra)
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "prep" / "reference.h5") as f:
        assert sorted(x.decode() for x in f["id"][()]) == ["NA", "good0"]


def test_prepare_empty_id_is_one_line(tmp_path: Path, spectra: Path) -> None:
    line = _one_error_line(_prepare(tmp_path, "spec,TEFF,LOGG,FE_H\ngood0,5000,4.0,0.0\n,5500,4.2,-0.3\n", spectra))
    assert line == f"error: {tmp_path / 'cat.csv'}: spec: expected an id in every row (1 empty, first on line 3)"


def test_prepare_with_nothing_usable_names_the_catalogue_and_writes_nothing(tmp_path: Path, spectra: Path) -> None:
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "reference.h5").write_text("an earlier good file")
    for text, reason in (("spec,TEFF,LOGG,FE_H\nzz1,5000,4.0,0.0\nzz2,5500,4.2,-0.3\n", "'no_spectrum_file': 2"),
                         ("spec,TEFF,LOGG,FE_H\nnan,5000,4.0,0.0\n", "'unreadable': 1")):
        line = _one_error_line(_prepare(tmp_path, text, spectra))
        assert line.startswith(f"error: {tmp_path / 'cat.csv'}: no usable spectrum among ") and reason in line
        assert str(spectra) in line
        assert sorted(p.name for p in prep.iterdir()) == ["reference.h5"]  # no .part, no progress sidecar
        assert (prep / "reference.h5").read_text() == "an earlier good file"


def test_prepare_text_labels_are_counted_and_named(tmp_path: Path, spectra: Path) -> None:
    res = _prepare(tmp_path, "spec,TEFF,LOGG,FE_H\ngood0,hot,4.0,0.0\ngood1,5500,4.2,abc\n", spectra)
    assert res.exit_code == 0, res.output
    cat = tmp_path / "cat.csv"
    assert (f"reference: label values that are not numbers, read as missing: TEFF 1, FE_H 1 (first: TEFF: {cat} "
            f"line 2: 'hot'; FE_H: {cat} line 3: 'abc')") in res.output
    with h5py.File(tmp_path / "prep" / "reference.h5") as f:
        tgt = f["target"][()]
    assert int(np.isnan(tgt).sum()) == 2


@pytest.mark.parametrize("text, code, want", [
    ("spec,TEFF,LOGG\ngood0,5000,4.0\n", 2, "labels ['FE_H']: expected these columns"),
    ("name,TEFF,LOGG,FE_H\ngood0,5000,4.0,0.0\n", 2, "spec: expected the id column"),
    ("spec,TEFF,LOGG,FE_H\ngood0,5000,4.0,0.0\ngood0.fits,5500,4.2,-0.3\n", 1, "spec: expected unique ids (1 repeat"),
    ("", 1, "not a readable CSV catalogue"),
])
def test_prepare_catalogue_errors_are_one_line(tmp_path: Path, spectra: Path, text: str, code: int, want: str) -> None:
    line = _one_error_line(_prepare(tmp_path, text, spectra), code)
    assert line.startswith(f"error: {tmp_path / 'cat.csv'}: ") and want in line
    assert not (tmp_path / "prep" / "reference.h5").exists()
