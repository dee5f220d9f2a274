"""Network output maps -> localisations, on the device.

DECODE-style spatial integration (Speiser et al. 2021): a pixel is a candidate when its p is a
3x3 local maximum above ``raw_threshold``; its detection probability is the sum of p over the
3x3 neighbourhood (an emitter near a pixel border spreads its p over neighbours), capped at 1,
and it is kept when that sum exceeds ``threshold``. ``method="nms"`` keeps local maxima whose own
p exceeds ``threshold``. Sub-pixel positions come from the offset channels at the kept pixel,
sigmas (10-channel models) are carried through in nm / photons. With Monte-Carlo dropout the
localisations come from the mean maps and the per-pixel spread of the samples at each kept pixel
is carried as ``MC_COLUMNS`` (epistemic uncertainty, Gal & Ghahramani 2016; the sigma columns are
the network's own, aleatoric, estimate).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from neurotrain.tasks.smlm.losses import SIGMA_MIN, SIGMA_SCALE, bg_channel

LOC_COLUMNS = ("frame", "x_nm", "y_nm", "z_nm", "photons", "bg", "prob",
               "sigma_x_nm", "sigma_y_nm", "sigma_z_nm", "sigma_photons")
MC_COLUMNS = ("x_mc_sigma_nm", "y_mc_sigma_nm", "z_mc_sigma_nm", "photons_mc_sigma")
"""Standard deviation over MC-dropout samples of x, y, z (nm) and photons at each localisation."""
PSF_COLUMNS = ("psf_sigma_x_nm", "psf_sigma_y_nm")
"""Width of the PSF model (Gaussian sigma, nm) at each localisation, as Picasso's sx/sy and
ThunderSTORM's sigma1/sigma2 report it."""


def detect(p: torch.Tensor, method: str, raw_threshold: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``p`` ``[B, H, W]`` -> (boolean detection mask, detection probability map)."""
    pp = p[:, None]
    lm = (pp == F.max_pool2d(pp, 3, stride=1, padding=1))[:, 0]
    if method == "nms":
        return lm & (p > threshold), p
    p_int = F.avg_pool2d(pp, 3, stride=1, padding=1, count_include_pad=True)[:, 0] * 9.0
    p_int = p_int.clamp(max=1.0)
    return lm & (p > raw_threshold) & (p_int > threshold), p_int


def localise(out: torch.Tensor, cfg: Any, frame_offset: int = 0, threshold: float | None = None,
             spread: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Network output ``[B, C, H, W]`` -> flat localisation tensors (``LOC_COLUMNS``), on ``out.device``.

    ``frame`` is ``frame_offset`` + the batch index. Positions in nm (pixel ``i`` spans
    ``[i, i+1)`` x pixel size), photons and background in photons (per pixel for bg).
    ``spread`` (same shape as ``out``: the per-channel standard deviation over MC-dropout
    samples, ``out`` being their mean) adds ``MC_COLUMNS`` read at the kept pixels.
    """
    from neurotrain.tasks.smlm.simulate import z_scale

    pc = cfg.postprocess
    px = cfg.simulate.pixel_size_nm
    zs = z_scale(cfg)
    th = pc.threshold if threshold is None else threshold
    det, p_int = detect(out[:, 0], pc.method, min(pc.raw_threshold, th), th)
    b, iy, ix = torch.nonzero(det, as_tuple=True)
    v = out[b, :, iy, ix]  # [N, C]
    loc = {
        "frame": b + frame_offset,
        "x_nm": (ix.to(out.dtype) + 0.5 + v[:, 2]) * px,
        "y_nm": (iy.to(out.dtype) + 0.5 + v[:, 3]) * px,
        "z_nm": v[:, 4] * zs,
        "photons": v[:, 1] * cfg.model.photon_scale,
        "prob": p_int[b, iy, ix],
    }
    bc = bg_channel(out)
    loc["bg"] = v[:, bc] * cfg.model.bg_scale if bc is not None else torch.full_like(loc["x_nm"], float("nan"))
    if out.shape[1] == 10:
        s = v[:, 5:9] * SIGMA_SCALE + SIGMA_MIN
        loc["sigma_photons"] = s[:, 0] * cfg.model.photon_scale
        loc["sigma_x_nm"] = s[:, 1] * px
        loc["sigma_y_nm"] = s[:, 2] * px
        loc["sigma_z_nm"] = s[:, 3] * zs
    else:
        nan = torch.full_like(loc["x_nm"], float("nan"))
        loc.update(sigma_photons=nan, sigma_x_nm=nan, sigma_y_nm=nan, sigma_z_nm=nan)
    cols = LOC_COLUMNS
    if spread is not None:
        # x_nm = (ix + 0.5 + offset) * px with ix fixed by the mean map: the spread is the offset's
        s = spread[b, :, iy, ix]
        loc.update(x_mc_sigma_nm=s[:, 2] * px, y_mc_sigma_nm=s[:, 3] * px, z_mc_sigma_nm=s[:, 4] * zs,
                   photons_mc_sigma=s[:, 1] * cfg.model.photon_scale)
        cols = LOC_COLUMNS + MC_COLUMNS
    return {k: loc[k] for k in cols}


def with_psf_widths(locs: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """``locs`` plus ``PSF_COLUMNS``: the configured PSF's Gaussian width at each ``z_nm`` (nm)."""
    from neurotrain.tasks.smlm.psf import psf_sigmas

    if all(c in locs for c in PSF_COLUMNS):
        return locs
    px = cfg.simulate.pixel_size_nm
    sx, sy = psf_sigmas(cfg.psf, locs["z_nm"], px)
    return {**locs, "psf_sigma_x_nm": sx * px, "psf_sigma_y_nm": sy * px}


def concat_locs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate localisation dicts column by column."""
    if not parts:
        return {k: torch.zeros(0) for k in LOC_COLUMNS}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def locs_to_frame(locs: dict[str, torch.Tensor]) -> Any:
    """Localisation tensors -> a pandas DataFrame (``frame`` as int64)."""
    import pandas as pd

    d = {k: v.detach().cpu().numpy() for k, v in locs.items()}
    df = pd.DataFrame(d)
    if "frame" in df:
        df["frame"] = df["frame"].astype("int64")
    return df
