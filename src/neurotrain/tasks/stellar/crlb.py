"""Cramér–Rao lower bounds of the labels from the generator's Jacobian.

For a spectrum model f(theta) (M pixels) with independent Gaussian pixel noise sigma_m, the Fisher matrix is
F = J^T diag(1 / sigma^2) J with J = df/dtheta (M x P), and no unbiased estimator of label i can beat
sqrt((F^-1)_ii) (Rao 1945; Cramér 1946). Every label of the generator is free in F, so the bound of one
label includes what is lost to its degeneracies with all the others (nuisance labels marginalised, not
fixed). The Jacobian comes from forward-mode autodiff, ``torch.func.vmap(torch.func.jacfwd(...))``, one
spectrum at a time under vmap (P tangents each).

Near-singular F (degenerate labels, labels with almost no signal): F is equilibrated to unit diagonal,
D^-1/2 F D^-1/2, a ridge of ``ridge`` (default 1e-9) is added to that unit diagonal, and the result is
inverted in float64. A degenerate pair then gets a large, finite bound (~ 1/sqrt(ridge F_ii)) rather than the
too-optimistic bound a pseudo-inverse would give by dropping the degenerate direction; a label with no
information at all (F_ii = 0) gets ``inf``.
"""

from __future__ import annotations

from typing import Callable

import torch

from neurotrain.tasks.stellar.config import GENERATOR_LABELS, SimulateSection
from neurotrain.tasks.stellar.simulate import continuum_sed, noise_sigma

FluxCallable = Callable[[torch.Tensor], torch.Tensor]


def jacobian(flux_fn: FluxCallable, labels: torch.Tensor) -> torch.Tensor:
    """d flux / d labels for each spectrum: (B, M, P) from ``flux_fn`` (B, P) -> (B, M)."""

    def single(lab: torch.Tensor) -> torch.Tensor:
        return flux_fn(lab.unsqueeze(0)).squeeze(0)

    return torch.func.vmap(torch.func.jacfwd(single))(labels)


def fisher_crlb(flux_fn: FluxCallable, labels: torch.Tensor, sigma: torch.Tensor, ridge: float = 1e-9) -> torch.Tensor:
    """Cramér–Rao bound (B, P), in the labels' units, of every label of ``labels`` (B, P) for pixel noise
    ``sigma`` (B, M) (pixels with sigma <= 0, inf or NaN carry no information)."""
    jac = jacobian(flux_fn, labels).double()
    s = sigma.to(jac.device, torch.float64)
    w = torch.where(torch.isfinite(s) & (s > 0), 1.0 / s.clamp(min=1e-300) ** 2, torch.zeros_like(s))
    fisher = torch.einsum("bmp,bm,bmq->bpq", jac, w, jac)
    return crlb_from_fisher(fisher, ridge).to(labels.dtype)


def crlb_from_fisher(fisher: torch.Tensor, ridge: float = 1e-9) -> torch.Tensor:
    """sqrt(diag(F^-1)) (B, P) of Fisher matrices (B, P, P), equilibrated and ridge-regularised (module
    docstring); ``inf`` for labels with F_ii = 0."""
    f = fisher.double()
    diag = torch.diagonal(f, dim1=1, dim2=2)
    none = ~(diag > 0)
    d = torch.where(none, torch.ones_like(diag), diag).sqrt()
    eq = f / (d.unsqueeze(2) * d.unsqueeze(1))
    eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
    mask = none.unsqueeze(2) | none.unsqueeze(1)  # decouple the labels without information
    eq = torch.where(mask, eye.expand_as(eq), eq) + ridge * eye
    var = torch.diagonal(torch.linalg.inv(eq), dim1=1, dim2=2).clamp(min=0) / d**2
    return torch.where(none, torch.full_like(var, float("inf")), var.sqrt())


def normalised_sigma(flux: torch.Tensor, teff: torch.Tensor, snr: torch.Tensor, grid: torch.Tensor,
                     cfg: SimulateSection) -> torch.Tensor:
    """Noise sigma (B, M) of the continuum-normalised flux ``flux`` (B, M) on ``grid`` (M,) at S/N ``snr`` (B,),
    by ``simulate.noise_sigma``'s model: photon noise of SED(Teff) x flux through the throughput plus the sky
    background, the median S/N over ``cfg.snr_band_aa`` equal to ``snr``, then divided by the SED (continuum).

    Approximations: the continuum-normalisation error, flux-calibration error, tellurics, sky residuals, bad
    pixels and the Doppler shift (|z| <= 1e-3) are ignored, and ``grid`` is taken to have the observed
    pixel size (LAMOST's d log10 lambda = 1e-4; a finer grid would need its noise correlations)."""
    lab = teff.reshape(-1, 1).to(torch.float64)
    g = torch.as_tensor(grid, dtype=torch.float64, device=flux.device)
    sed = continuum_sed(lab, g)
    sig = noise_sigma(sed * flux.double(), g, snr.to(flux.device, torch.float64), cfg)
    return sig / sed


def crlb_at_snr(flux_fn: FluxCallable, labels: torch.Tensor, snr: torch.Tensor | float, grid: torch.Tensor,
                cfg: SimulateSection | None = None, ridge: float = 1e-9) -> torch.Tensor:
    """Cramér–Rao bound (B, P) of every label at S/N ``snr`` (scalar or (B,)) on ``grid`` (M,), the noise of
    ``normalised_sigma`` (``simulate_raw``'s noise model; ``cfg`` defaults to ``SimulateSection()``). Teff is
    read from the label named ``TEFF`` of ``flux_fn.label_names`` (GENERATOR_LABELS when absent); without one
    the SED is that of a 5777 K star."""
    cfg = cfg or SimulateSection()
    names = tuple(getattr(flux_fn, "label_names", GENERATOR_LABELS))
    b = labels.shape[0]
    snr_t = torch.as_tensor(snr, dtype=torch.float64, device=labels.device).reshape(-1).expand(b)
    with torch.no_grad():
        flux = flux_fn(labels)
    teff = labels[:, names.index("TEFF")] if "TEFF" in names and len(names) == labels.shape[1] else \
        torch.full((b,), 5777.0, device=labels.device)
    sigma = normalised_sigma(flux, teff, snr_t, grid, cfg)
    return fisher_crlb(flux_fn, labels, sigma, ridge)
