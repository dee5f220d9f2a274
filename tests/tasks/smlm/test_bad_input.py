"""smlm rows of issue 21: bad movies fail before the network is built, bad tables never get a score,
evaluate of files writes where -o says (never into a run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.config import config_to_dict
from neurotrain.engine import api
from neurotrain.errors import DataError, NeurotrainError, ResourceError
from neurotrain.registry import TASKS


def _ckpt(cfg, path: Path) -> Path:
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in TASKS.get("smlm").build_model(cfg).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config_to_dict(cfg)}}, path)
    return path


def _tiff(path: Path, arr: np.ndarray, **kw) -> Path:
    import tifffile

    tifffile.imwrite(path, arr, **kw)
    return path


@pytest.fixture
def setup(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = tiny_cfg.model_copy(update={"run": tiny_cfg.run.model_copy(update={"output_dir": tmp_path / "runs"})})
    ck = _ckpt(cfg, tmp_path / "m.ckpt")
    movie = TASKS.get("smlm").simulate(cfg, tmp_path / "movie.tif", 6, device="cpu")
    built = []
    real = api.model_from_checkpoint
    monkeypatch.setattr(api, "model_from_checkpoint", lambda *a: built.append(1) or real(*a))
    return cfg, ck, movie, built


def _bad_movie(kind: str, tmp_path: Path, movie: Path) -> Path:
    if kind == "truncated":
        data = movie.read_bytes()
        (tmp_path / "t.tif").write_bytes(data[: len(data) - 300])
        return tmp_path / "t.tif"
    if kind == "huge":
        from tests.fuzz._util import minimal_tiff

        (tmp_path / "h.tif").write_bytes(minimal_tiff(200000, 200000))
        return tmp_path / "h.tif"
    if kind == "rgb":
        return _tiff(tmp_path / "rgb.tif", np.zeros((4, 16, 16, 3), np.uint8), photometric="rgb")
    if kind == "nan":
        a = np.full((6, 16, 16), 100.0, np.float32)
        a[0, 4, 4] = np.nan
        return _tiff(tmp_path / "nan.tif", a, photometric="minisblack")
    return _tiff(tmp_path / "small.tif", np.ones((6, 2, 2), np.uint16), photometric="minisblack")


@pytest.mark.parametrize("kind,expect", [("truncated", "truncated"), ("huge", "GiB"), ("rgb", "grayscale"),
                                         ("nan", "NaN"), ("tiny", "at least 7x7 px")])
def test_bad_movie_fails_before_the_network(setup, tmp_path: Path, kind: str, expect: str) -> None:
    cfg, ck, movie, built = setup
    bad = _bad_movie(kind, tmp_path, movie)
    with pytest.raises((DataError, ResourceError)) as info:
        api.predict(ck, [bad], tmp_path / "out")
    msg = str(info.value)
    assert bad.name in msg and expect in msg and "\n" not in msg
    assert not built, "the network was built before the movie was checked"
    assert not (tmp_path / "out").exists()


def test_nan_late_in_the_movie_leaves_no_output(setup, tmp_path: Path) -> None:
    cfg, ck, movie, built = setup
    a = np.full((6, 16, 16), 100.0, np.float32)
    a[5, 1, 1] = np.inf
    bad = _tiff(tmp_path / "late.tif", a, photometric="minisblack")
    with pytest.raises(DataError, match="frame 5"):
        api.predict(ck, [bad], tmp_path / "out" / "deep", render=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_good_movie_still_predicts(setup, tmp_path: Path) -> None:
    cfg, ck, movie, built = setup
    written = api.predict(ck, [movie], tmp_path / "o", render=False, progress=False)
    assert written == [tmp_path / "o" / "movie_locs.h5"] and written[0].is_file() and built


def test_unknown_option_fails_before_the_network(setup) -> None:
    cfg, ck, movie, built = setup
    with pytest.raises(NeurotrainError, match="formt: unknown option .*format"):
        api.predict(ck, [movie], None, formt="csv")
    assert not built


def _table(tmp_path: Path, name: str, rows: list[str]) -> Path:
    p = tmp_path / name
    p.write_text("frame,x_nm,y_nm,z_nm,photons\n" + "".join(r + "\n" for r in rows))
    return p


GOOD_ROWS = ["0,200,300,0,1000", "1,800,900,0,1500", "2,400,1200,0,2000"]


@pytest.mark.parametrize("rows,expect", [
    (["0,200,300,0,1000", "1,abc,900,0,1500"], "column 'x_nm' row 2: expected a number (got 'abc')"),
    ([], "no localisations (header only)"),
    (["0,200,300,0,1000", "1,nan,900,0,1500"] + GOOD_ROWS[2:], "column 'x_nm' row 2: nan is not a finite number"),
])
def test_bad_prediction_table_is_never_scored(setup, tmp_path: Path, rows: list[str], expect: str) -> None:
    cfg = setup[0]
    truth = _table(tmp_path, "truth.csv", GOOD_ROWS)
    pred = _table(tmp_path, "pred.csv", rows)
    with pytest.raises(DataError) as info:
        api.evaluate(cfg, pred=pred, truth=truth)
    assert str(info.value).startswith(f"{pred}: ") and expect in str(info.value)
    assert not (tmp_path / "pred_evaluation").exists()
    assert not cfg.run_dir.exists()


def test_evaluate_files_writes_beside_the_prediction_or_to_o(setup, tmp_path: Path) -> None:
    cfg = setup[0]
    truth = _table(tmp_path, "truth.csv", GOOD_ROWS)
    pred = _table(tmp_path, "pred.csv", GOOD_ROWS)
    res = api.evaluate(cfg, pred=pred, truth=truth)
    assert res.headline_network == pytest.approx(100.0)
    out = tmp_path / "pred_evaluation"
    assert json.loads((out / "metrics.json").read_text())["evaluate"]["files"]["pred"] == str(pred)
    assert (out / "report" / "report.md").is_file()
    assert not cfg.run_dir.exists(), "evaluate of files wrote into a run"
    api.evaluate(cfg, output=tmp_path / "mine", pred=pred, truth=truth)
    assert (tmp_path / "mine" / "metrics.json").is_file() and not cfg.run_dir.exists()
