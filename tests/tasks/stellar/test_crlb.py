"""Cramér–Rao bounds against hand-computed cases, and on the generator."""

from __future__ import annotations

import math

import numpy as np
import torch

from neurotrain.tasks.stellar import crlb as C
from neurotrain.tasks.stellar import simulate as S
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, SimulateSection


def test_linear_model_matches_analytic_inverse():
    x = torch.linspace(-1.0, 3.0, 41, dtype=torch.float64)
    sigma = 0.05 + 0.02 * torch.rand(41, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def line(lab: torch.Tensor) -> torch.Tensor:  # f = a + b x
        return lab[:, :1] + lab[:, 1:2] * x

    labels = torch.tensor([[1.0, 0.5], [-2.0, 3.0]], dtype=torch.float64)
    got = C.fisher_crlb(line, labels, sigma.expand(2, -1))
    w = 1 / sigma**2
    s0, s1, s2 = w.sum(), (w * x).sum(), (w * x * x).sum()
    det = s0 * s2 - s1 * s1
    want = torch.stack([torch.sqrt(s2 / det), torch.sqrt(s0 / det)])  # (F^-1)_aa = S2/det, (F^-1)_bb = S0/det
    assert torch.allclose(got, want.expand(2, -1), rtol=1e-7)


def test_gaussian_line_depth_only():
    x = torch.linspace(-10.0, 10.0, 201, dtype=torch.float64)
    s, sig = 1.3, 0.02

    def line(lab: torch.Tensor) -> torch.Tensor:  # f = 1 - d exp(-x^2 / 2 s^2)
        return 1 - lab[:, :1] * torch.exp(-0.5 * (x / s) ** 2)

    got = C.fisher_crlb(line, torch.tensor([[0.4]], dtype=torch.float64), torch.full((1, 201), sig, dtype=torch.float64))
    g2 = torch.exp(-((x / s) ** 2)).sum()
    assert math.isclose(float(got), sig / math.sqrt(float(g2)), rel_tol=1e-9)
    # continuum limit: sum of g^2 -> sqrt(pi) s / dx
    assert math.isclose(float(got), sig / math.sqrt(math.sqrt(math.pi) * s / 0.1), rel_tol=1e-6)


def test_nuisance_label_is_marginalised_and_degeneracy_is_large():
    x = torch.linspace(0, 1, 30, dtype=torch.float64)
    sig = torch.full((1, 30), 0.1, dtype=torch.float64)
    lab = torch.tensor([[1.0, 0.2]], dtype=torch.float64)
    both = C.fisher_crlb(lambda l: l[:, :1] + l[:, 1:2] * x, lab, sig)
    alone = C.fisher_crlb(lambda l: l[:, :1] + 0 * x, lab[:, :1], sig)
    assert both[0, 0] > 1.5 * alone[0, 0]  # a free slope widens the offset's bound
    degenerate = C.fisher_crlb(lambda l: (l[:, :1] + l[:, 1:2]) + 0 * x, lab, sig)
    assert torch.isfinite(degenerate).all() and degenerate.min() > 100 * alone.max()
    blind = C.fisher_crlb(lambda l: l[:, :1] + 0 * l[:, 1:2] + 0 * x, lab, sig)
    assert math.isinf(float(blind[0, 1])) and math.isclose(float(blind[0, 0]), float(alone[0, 0]), rel_tol=1e-6)


def test_generator_crlb_scales_with_snr_and_is_physical():
    cfg = SimulateSection()
    grid = torch.pow(10.0, torch.arange(math.log10(3900), math.log10(5600), 1e-4, dtype=torch.float64))  # blue arm
    fn = S.generator_flux_fn(cfg, grid)
    lab = torch.tensor([[5777.0, 4.44, 0.0, 0, 0, 0, 0, 0], [4700.0, 2.5, -0.5, 0.1, 0.2, 0.1, 0, 0.1]],
                       dtype=torch.float64)
    c50 = C.crlb_at_snr(fn, lab, 50.0, grid, cfg)
    c100 = C.crlb_at_snr(fn, lab, torch.tensor([100.0, 100.0]), grid, cfg)
    assert c50.shape == (2, len(GENERATOR_LABELS))
    na = GENERATOR_LABELS.index("NA_FE")
    assert torch.isinf(c50[:, na]).all()  # no sodium line on the blue arm (Na D is at 5890 A): no information
    c50, c100 = c50[:, torch.arange(8) != na], c100[:, torch.arange(8) != na]
    assert torch.isfinite(c50).all() and (c50 > 0).all()
    assert torch.allclose(c50 / c100, torch.full_like(c50, 2.0), rtol=1e-6)  # sigma ~ 1/snr
    teff, logg, feh = c50[:, 0], c50[:, 1], c50[:, 2]
    assert (teff > 3).all() and (teff < 200).all()  # K at S/N 50: tens of K, as the field finds
    assert (logg < 0.3).all() and (feh < 0.1).all()


def test_normalised_sigma_matches_simulated_noise():
    cfg = SimulateSection()
    grid = torch.pow(10.0, torch.arange(math.log10(3900), math.log10(8800), 1e-4, dtype=torch.float64))
    flux = torch.ones(1, grid.numel(), dtype=torch.float64)
    sig = C.normalised_sigma(flux, torch.tensor([5777.0]), torch.tensor([40.0]), grid, cfg)
    band = (grid >= cfg.snr_band_aa[0]) & (grid <= cfg.snr_band_aa[1])
    assert math.isclose(float((1 / sig[0, band]).median()), 40.0, rel_tol=1e-6)
    assert float(sig[0, grid < 4000].mean()) > 1.15 * float(sig[0, band].median())  # blue end: lower S/N
    assert np.isfinite(sig.numpy()).all()
