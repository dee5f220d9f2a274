"""The stellar task end to end: generator batches, a short training run beats its untrained self,
element-by-element training, prepared-file splits, and predict on FITS files (real ones when present)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from neurotrain.cli import app
from neurotrain.config import validate_config
from neurotrain.engine import api
from neurotrain.engine.checkpoint import load_model
from neurotrain.tasks.stellar.models import label_stats
from neurotrain.tasks.stellar.task import StellarTask

LABELS = ["TEFF", "LOGG", "FE_H", "MG_FE"]


def _cfg(tmp_path: Path, **extra: object) -> object:
    data = {
        "task": "stellar",
        "seed": 1,
        "run": {"name": "t", "output_dir": str(tmp_path / "runs")},
        "trainer": {"max_epochs": 12, "accelerator": "cpu", "devices": 1, "progress_bar": False,
                    "gradient_clip_val": 1.0},
        "optim": {"name": "adamw", "lr": 0.003},
        "data": {"batch_size": 32},
        "pool": {"train": 256, "val": 32, "test": 32},
        "labels": {"names": LABELS},
        "preprocess": {"grid_min_aa": 4000.0, "grid_max_aa": 6800.0, "grid_step_log10": 2e-4},
        "simulate": {"snr_range": [30.0, 100.0]},
        "model": {"base_channels": 8, "hidden": 32},
        "inference": {"device": "cpu"},
        "logging": {"tensorboard": False},
        "calibration": {"n_spectra": 64, "chunk": 64},
    }
    data.update(extra)
    return validate_config(data)


def test_simulated_batch_is_a_preprocessed_spectrum_with_physical_targets(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    gen = torch.Generator().manual_seed(0)
    b = StellarTask().simulate_batch(cfg, 8, gen, torch.device("cpu"))
    assert b["input"].shape[:2] == (8, 2) and b["target"].shape == (8, len(LABELS))
    assert torch.isfinite(b["input"]).all()
    flux = b["input"][:, 0]
    assert 0.85 < float(flux.median()) < 1.05  # continuum-normalised
    teff = b["target"][:, 0]
    lo, hi = cfg.simulate.label_ranges["TEFF"]
    assert ((teff >= lo - 500) & (teff <= hi + 500)).all()
    assert b["target_mask"].all()


def _val_rmse(cfg, model) -> float:
    """RMSE of the predicted means in units of each label's prior width, averaged over labels."""
    batch = StellarTask().simulate_batch(cfg, 128, torch.Generator().manual_seed(12345), torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        mean, _ = model.to_physical(model(batch["input"]))
    z = (mean - batch["target"]) / model.label_std
    return float(z.pow(2).mean(0).sqrt().mean())


def test_short_training_beats_the_untrained_network(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    untrained = StellarTask().build_model(cfg)
    run = api.train(cfg)
    _, trained = load_model(run / "checkpoints" / "last.ckpt")
    before, after = _val_rmse(cfg, untrained), _val_rmse(cfg, trained)
    assert after < 0.75 * before, (before, after)
    # the sigma calibration ran after validation and its factors are in the checkpoint
    assert not torch.allclose(trained.sigma_scale, torch.ones_like(trained.sigma_scale))
    assert bool((trained.sigma_scale > 0).all())
    # the analyze verb on the trained run: importance by wavelength, regions named by their lines
    cfg.analyze.n_spectra = 8
    cfg.analyze.ig_steps = 4
    summary = api.analyze(cfg, run / "checkpoints" / "last.ckpt", figures=False)
    assert (run / "analysis" / "importance.csv").is_file()
    assert "analyze" in json.loads((run / "metrics.json").read_text())
    assert summary


def test_train_elements_makes_one_run_per_label(tmp_path: Path) -> None:
    cfg_file = tmp_path / "s.yaml"
    cfg = _cfg(tmp_path, trainer={"max_epochs": 1, "accelerator": "cpu", "devices": 1, "progress_bar": False})
    import yaml

    from neurotrain.config import config_to_dict

    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    res = CliRunner().invoke(app, ["train", str(cfg_file), "pool.train=32", "--elements", "FE_H,MG_FE"])
    assert res.exit_code == 0, res.output
    for label in ("FE_H", "MG_FE"):
        run_cfg, model = load_model(tmp_path / "runs" / "stellar" / f"t_{label}" / "checkpoints" / "last.ckpt")
        assert run_cfg.labels.names == [label]
        assert model.label_mean.numel() == 1


def test_prepared_file_split_and_label_stats_are_used(tmp_path: Path) -> None:
    path = tmp_path / "reference.h5"
    n, m = 20, 16
    split = np.array([0] * 14 + [1] * 2 + [2] * 4, dtype=np.int8)
    with h5py.File(path, "w") as f:
        f["input"] = np.ones((n, 2, m), np.float32)
        f["target"] = np.zeros((n, 2), np.float32)
        f["target_mask"] = np.ones((n, 2), bool)
        f["snr"] = np.full(n, 50.0, np.float32)
        f["split"] = split
        f.attrs["label_names"] = ["FE_H", "TEFF"]
        f.attrs["label_mean"] = [-0.3, 5000.0]
        f.attrs["label_std"] = [0.4, 700.0]
    cfg = _cfg(tmp_path, data={"path": str(path), "batch_size": 4}, labels={"names": ["TEFF", "FE_H"]})
    sets = StellarTask().datasets(cfg)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    assert label_stats(cfg) == ([5000.0, -0.3], [700.0, 0.4])


def test_predict_writes_labels_with_uncertainties_for_every_real_star(tmp_path: Path, realdata: Path) -> None:
    cfg = _cfg(tmp_path)
    model = StellarTask().build_model(cfg)
    out = tmp_path / "labels.csv"
    written = api.get_task(cfg).predict(cfg, model, [realdata / "stellar"], out)
    assert out in written
    table = pd.read_csv(out)
    assert len(table) == 25
    for name in LABELS:
        assert np.isfinite(table[name]).all() and (table[f"{name}_ERR"] > 0).all()
    assert set(table["obsid"].astype(str)) >= {"3703110"}


def test_simulated_fits_files_go_through_predict(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    folder = StellarTask().simulate(cfg, tmp_path / "sim", 5, seed=4)
    catalog = pd.read_csv(folder / "catalog.csv")
    assert list(catalog["spec"]) == [f"sim-{i:08d}" for i in range(5)]
    model = StellarTask().build_model(cfg)
    StellarTask().predict(cfg, model, [folder], tmp_path / "out" / "labels.h5")
    with h5py.File(tmp_path / "out" / "labels.h5", "r") as f:
        assert len(f["TEFF"]) == 5 and np.isfinite(f["TEFF"][:]).all()
