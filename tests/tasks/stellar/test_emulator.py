"""Payne-format emulators: read The Payne's .npz, evaluate it in torch, reject bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.stellar import simulate as S
from neurotrain.tasks.stellar.config import SimulateSection
from neurotrain.tasks.stellar.emulator import PayneEmulator


def write_payne(path: Path, n_labels: int = 3, hidden: int = 16, n_pix: int = 50, seed: int = 0, **drop) -> dict:
    rng = np.random.default_rng(seed)
    arrs = {
        "w_array_0": rng.normal(0, 1, (hidden, n_labels)), "b_array_0": rng.normal(0, 0.1, hidden),
        "w_array_1": rng.normal(0, 0.3, (hidden, hidden)), "b_array_1": rng.normal(0, 0.1, hidden),
        "w_array_2": rng.normal(0, 0.05, (n_pix, hidden)), "b_array_2": 1 + rng.normal(0, 0.01, n_pix),
        "x_min": np.array([3500.0, 0.0, -2.5][:n_labels]), "x_max": np.array([7500.0, 5.0, 0.5][:n_labels]),
        "wavelength": np.linspace(5000.0, 5100.0, n_pix),
    }
    for k, v in drop.items():
        if v is None:
            arrs.pop(k)
        else:
            arrs[k] = v
    np.savez(path, **arrs)
    return arrs


def numpy_payne(arrs: dict, labels: np.ndarray) -> np.ndarray:
    """The Payne's own forward, written out by hand: scaled labels, leaky ReLU (0.01), linear output."""
    leaky = lambda z: z * (z > 0) + 0.01 * z * (z < 0)  # noqa: E731
    out = []
    for lab in labels:
        x = (lab - arrs["x_min"]) / (arrs["x_max"] - arrs["x_min"]) - 0.5
        inside = np.einsum("ij,j->i", arrs["w_array_0"], x) + arrs["b_array_0"]
        outside = np.einsum("ij,j->i", arrs["w_array_1"], leaky(inside)) + arrs["b_array_1"]
        out.append(np.einsum("ij,j->i", arrs["w_array_2"], leaky(outside)) + arrs["b_array_2"])
    return np.array(out)


LABELS = np.array([[5777.0, 4.44, 0.0], [4200.0, 1.5, -1.8], [6900.0, 4.1, 0.3]])


def test_forward_matches_numpy(tmp_path):
    p = tmp_path / "nn.npz"
    arrs = write_payne(p)
    emu = PayneEmulator.from_npz(p, dtype=torch.float64)
    got = emu(torch.as_tensor(LABELS)).numpy()
    np.testing.assert_allclose(got, numpy_payne(arrs, LABELS), rtol=1e-10, atol=1e-12)
    assert emu.n_labels == 3


def test_resample_linear_and_outside_is_continuum(tmp_path):
    p = tmp_path / "nn.npz"
    arrs = write_payne(p)
    emu = PayneEmulator.from_npz(p, dtype=torch.float64)
    grid = torch.tensor([4990.0, 5000.0, 5011.3, 5050.05, 5100.0, 5120.0], dtype=torch.float64)
    res = emu.resample(grid)
    got = res(torch.as_tensor(LABELS)).numpy()
    ref = numpy_payne(arrs, LABELS)
    want = np.stack([np.interp(grid.numpy(), arrs["wavelength"], r) for r in ref])
    inside = res.covered.numpy()
    assert inside.tolist() == [False, True, True, True, True, False]
    np.testing.assert_allclose(got[:, inside], want[:, inside], rtol=1e-10)
    assert np.all(got[:, ~inside] == 1.0)


def test_deeper_nets_and_generator_flux_fn(tmp_path):
    p = tmp_path / "nn.npz"
    rng = np.random.default_rng(1)
    write_payne(p, w_array_3=rng.normal(0, 0.1, (50, 50)), b_array_3=np.ones(50))
    arrs = dict(np.load(p))
    emu = PayneEmulator.from_npz(p, dtype=torch.float64)
    assert len(emu.layers) == 4
    cfg = SimulateSection(generator="payne", emulator_path=p, emulator_labels=["TEFF", "LOGG", "FE_H"])
    grid = torch.linspace(5010.0, 5090.0, 40, dtype=torch.float64)
    fn = S.generator_flux_fn(cfg, grid)
    assert fn.label_names == ("TEFF", "LOGG", "FE_H")
    out = fn(torch.as_tensor(LABELS, dtype=torch.float32))
    assert out.shape == (3, 40)
    leaky = lambda z: np.where(z > 0, z, 0.01 * z)  # noqa: E731
    x = (LABELS - arrs["x_min"]) / (arrs["x_max"] - arrs["x_min"]) - 0.5
    h = x
    for k in range(4):
        h = h @ arrs[f"w_array_{k}"].T + arrs[f"b_array_{k}"]
        h = leaky(h) if k < 3 else h
    want = np.stack([np.interp(grid.numpy(), arrs["wavelength"], r) for r in h])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)
    bad = cfg.model_copy(update={"emulator_labels": ["TEFF", "LOGG"]})
    with pytest.raises(ConfigError, match="emulator_labels"):
        S.generator_flux_fn(bad, grid)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"b_array_1": None}, "b_array_1"),
        ({"x_max": None}, "x_max"),
        ({"wavelength": None}, "wavelength"),
        ({"w_array_1": np.zeros((16, 7))}, "w_array_1"),
        ({"b_array_0": np.zeros(5)}, "b_array_0"),
        ({"wavelength": np.linspace(5000, 5100, 49)}, "wavelength"),
        ({"x_min": np.array([3500.0, 0.0])}, "x_max"),
        ({"x_max": np.array([3000.0, 5.0, 0.5])}, "x_max"),
    ],
)
def test_bad_npz_names_file_and_array(tmp_path, change, field):
    p = tmp_path / "bad.npz"
    write_payne(p, **change)
    with pytest.raises(DataError) as e:
        PayneEmulator.from_npz(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "\n" not in msg


def test_not_an_npz(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        PayneEmulator.from_npz(p)
    with pytest.raises(DataError, match="no such file"):
        PayneEmulator.from_npz(tmp_path / "missing.npz")


def test_simulate_raw_with_payne_generator(tmp_path):
    p = tmp_path / "wide.npz"
    rng = np.random.default_rng(2)
    n_pix = 300
    w2 = np.zeros((n_pix, 16))
    w2[150, :] = -0.5  # one absorption line at pixel 150, deeper for larger scaled labels
    write_payne(p, n_pix=n_pix, w_array_2=w2, b_array_2=np.ones(n_pix),
                w_array_0=np.abs(rng.normal(0, 1, (16, 3))), b_array_0=np.zeros(16),
                w_array_1=np.eye(16), b_array_1=np.zeros(16), wavelength=np.linspace(3600.0, 9400.0, n_pix))
    cfg = SimulateSection(generator="payne", emulator_path=p, emulator_labels=["TEFF", "LOGG", "FE_H"],
                          rv_range_kms=(0.0, 0.0), sky_residuals=False, tellurics=False, bad_pixel_fraction=0.0,
                          response_error=0.0, response_jump=0.0)
    g = torch.Generator().manual_seed(0)
    lab = S.sample_labels(2, cfg, g, "cpu")
    lab[:, :3] = torch.tensor([[7000.0, 5.0, -2.0], [7000.0, 5.0, 0.5]])
    raw = S.simulate_raw(lab, torch.tensor([1e4, 1e4]), cfg, g, "cpu")
    line = float(np.linspace(3600.0, 9400.0, n_pix)[150])
    w = raw["wave"][0]
    j = int((w - line).abs().argmin())
    depth = 1 - raw["flux"][:, j] / raw["flux"][:, j + 20 : j + 30].mean(1)
    assert depth[1] > depth[0] + 0.05 and depth[1] > 0.1  # the emulator's line is there, deeper for the larger label
