"""Network output -> stellar labels with uncertainties in physical units (K, dex).

Three sources of uncertainty, combined by the law of total variance over the K predictions a spectrum gets
(one per ensemble member and MC-dropout sample):

* aleatoric: the heteroscedastic head's sigma_k (noise in the spectrum), averaged as a variance,
  ``sigma_ale^2 = mean_k sigma_k^2``;
* epistemic: the spread of the predicted means over MC-dropout samples (Gal & Ghahramani 2016, dropout
  layers alone switched to training mode, batch norm kept in inference mode) and over the members of a
  deep ensemble (Lakshminarayanan et al. 2017), ``sigma_epi^2 = mean_k (mu_k - mu)^2``;
* total: ``sigma^2 = sigma_ale^2 + sigma_epi^2``, with ``mu = mean_k mu_k``.

The aleatoric sigma_k is the calibrated one: each member scales its head's sigma by its own post-hoc factors
(``calibration.py``) at the spectrum's S/N, measured by the member on the input
(``SpectralResCNN.input_snr``) unless the caller passes it. A mean-only model contributes aleatoric 0. MC samples run as one forward pass over the batch repeated
``mc_samples`` times (each row draws its own dropout mask), in chunks of ``batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn


@contextmanager
def _inference_mode(model: nn.Module, mc_dropout: bool) -> Iterator[None]:
    """Eval mode (and dropout layers in train mode when ``mc_dropout``); the previous modes are restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    if mc_dropout:
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


def _member_samples(model: nn.Module, x: Tensor, samples: int, snr: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(S, B, L) physical means and sigmas of one member for one chunk ``x`` (B, C, M), its sigma calibrated
    at S/N ``snr`` (B,) (default: what the member measures on ``x``; a model without ``input_snr`` gets its
    global factor only)."""
    b = x.shape[0]
    if snr is None and hasattr(model, "input_snr"):
        snr = model.input_snr(x)  # type: ignore[operator]
    xr = x.repeat(samples, 1, 1) if samples > 1 else x
    out = model(xr)
    if snr is None:
        mean, sigma = model.to_physical(out)  # type: ignore[operator]
    else:
        mean, sigma = model.to_physical(out, snr.repeat(samples) if samples > 1 else snr)  # type: ignore[operator]
    return mean.view(samples, b, -1), sigma.view(samples, b, -1)


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    inputs: Tensor,
    *,
    mc_samples: int = 0,
    ensemble: Sequence[nn.Module] = (),
    batch_size: int = 1024,
    snr: Tensor | None = None,
) -> dict[str, Tensor]:
    """Labels of a batch of network inputs.

    Args:
        model: a ``SpectralResCNN`` (anything with ``forward`` and ``to_physical``).
        inputs: (B, C, M) network input (``preprocess.network_input``), on the model's device.
        mc_samples: MC-dropout passes per member (0 = one deterministic pass).
        ensemble: further members (deep ensemble), used together with ``model``.
        batch_size: spectra x samples per forward pass (memory cap).
        snr: (B,) S/N per pixel at which each member's S/N-dependent sigma factor is looked up; default: the
            member's own measurement on ``inputs`` (``SpectralResCNN.input_snr``).

    Returns:
        ``mean``, ``sigma``, ``sigma_aleatoric``, ``sigma_epistemic``: (B, L) float32, physical units.
    """
    members = [model, *ensemble]
    samples = max(1, int(mc_samples))
    chunk = max(1, batch_size // samples)
    B = inputs.shape[0]
    parts: dict[str, list[Tensor]] = {k: [] for k in ("mean", "sigma", "sigma_aleatoric", "sigma_epistemic")}
    for s in range(0, B, chunk):
        x = inputs[s : s + chunk]
        sn = None if snr is None else snr[s : s + chunk]
        mus, sigs = [], []
        for m in members:
            with _inference_mode(m, mc_dropout=mc_samples > 0):
                mu, sg = _member_samples(m, x, samples, sn)
            mus.append(mu.float())
            sigs.append(sg.float())
        mu_all = torch.cat(mus, 0)  # (K, b, L)
        sg_all = torch.cat(sigs, 0)
        mean = mu_all.mean(0)
        ale2 = (sg_all**2).mean(0)
        epi2 = ((mu_all - mean) ** 2).mean(0)
        parts["mean"].append(mean)
        parts["sigma"].append(torch.sqrt(ale2 + epi2))
        parts["sigma_aleatoric"].append(torch.sqrt(ale2))
        parts["sigma_epistemic"].append(torch.sqrt(epi2))
    return {k: torch.cat(v, 0) for k, v in parts.items()}
