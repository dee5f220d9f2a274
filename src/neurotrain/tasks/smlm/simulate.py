"""On-device SMLM simulator: blinking emitters -> PSF -> background -> camera, plus targets.

Everything is batched torch code on the generator's device, reproducible from the
``torch.Generator``. Units: x, y in camera pixels (pixel ``i`` spans ``[i, i+1)``), z in nm,
photons per frame, background in photons per pixel per frame.

Emitters: positions uniform in the field of view and in ``z_range_nm``; each switches on at a
uniformly distributed continuous time and stays on for an exponentially distributed time of mean
``on_lifetime_frames`` (single-exponential on-times of photoswitchable dyes, Dempsey et al.,
Nat. Methods 8:1027, 2011). A frame receives ``flux x (fraction of the frame the emitter was on)``
photons. The spawn rate is ``density x area / (lifetime + 1)``, so on average ``density``
emitters per um^2 are visible in every frame (an on-interval of length d overlaps d + 1 frames
on average).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from neurotrain.tasks.smlm.camera import camera_backward, camera_forward
from neurotrain.tasks.smlm.psf import render_emitters
from neurotrain.tasks.smlm.tensors import pad_by_group, sample_gamma

if TYPE_CHECKING:
    import pandas as pd

    from neurotrain.tasks.smlm.config import SMLMConfig


def is_3d(cfg: SMLMConfig) -> bool:
    """True when the PSF encodes z (astigmatic), i.e. z is simulated and predicted."""
    return cfg.psf.kind != "gaussian"


def z_scale(cfg: SMLMConfig) -> float:
    """Normalisation of z for the network: the largest |z| of the simulated range (nm), 1 in 2D."""
    if not is_3d(cfg):
        return 1.0
    return float(max(abs(cfg.simulate.z_range_nm[0]), abs(cfg.simulate.z_range_nm[1]), 1.0))


def sample_photons(cfg: SMLMConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-emitter brightness (photons per full frame on) from ``simulate.photons``."""
    ph = cfg.simulate.photons
    if ph.dist == "uniform":
        u = torch.rand(n, generator=generator, device=device)
        out = ph.min + (ph.max - ph.min) * u
    elif ph.dist == "gamma":
        k = (ph.mean / ph.std) ** 2
        out = sample_gamma(torch.full((n,), k, device=device), generator) * (ph.mean / k)
    else:  # lognormal with the given mean and std
        s2 = math.log(1 + (ph.std / ph.mean) ** 2)
        mu = math.log(ph.mean) - 0.5 * s2
        out = torch.exp(mu + math.sqrt(s2) * torch.randn(n, generator=generator, device=device))
    return out.clamp(ph.min, ph.max)


def sample_emissions(cfg: SMLMConfig, n_seq: int, n_frames: int, generator: torch.Generator,
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Blinking emitters of ``n_seq`` independent sequences of ``n_frames`` frames.

    Returns flat tensors, one row per (emitter, frame it shines in): ``seq``, ``frame``,
    ``emitter`` (index into the sampled emitters), ``x``, ``y`` (px), ``z`` (nm), ``photons``.
    """
    sim = cfg.simulate
    h, w = sim.frame_size
    area_um2 = h * w * (sim.pixel_size_nm / 1000.0) ** 2
    life = sim.on_lifetime_frames
    pad = int(math.ceil(6 * life)) + 1
    rate = sim.density_per_um2 * area_um2 / (life + 1.0)
    lam = torch.full((n_seq,), rate * (n_frames + pad), device=device)
    counts = torch.poisson(lam, generator=generator).long()
    n = int(counts.sum().item())
    seq = torch.repeat_interleave(torch.arange(n_seq, device=device), counts)
    x = torch.rand(n, generator=generator, device=device) * w
    y = torch.rand(n, generator=generator, device=device) * h
    if is_3d(cfg):
        z0, z1 = sim.z_range_nm
        z = z0 + (z1 - z0) * torch.rand(n, generator=generator, device=device)
    else:
        z = torch.zeros(n, device=device)
    flux = sample_photons(cfg, n, generator, device)
    t0 = -pad + (n_frames + pad) * torch.rand(n, generator=generator, device=device)
    dur = -life * torch.log(torch.rand(n, generator=generator, device=device).clamp(min=1e-12))
    t1 = t0 + dur
    f_first = torch.floor(t0).clamp(min=0).long()
    f_last = torch.floor(t1).clamp(max=n_frames - 1).long()
    nf = (f_last - f_first + 1).clamp(min=0)
    em = torch.repeat_interleave(torch.arange(n, device=device), nf)
    offsets = torch.cumsum(nf, 0) - nf
    frame = f_first[em] + (torch.arange(em.numel(), device=device) - offsets[em])
    frac = (torch.minimum(t1[em], frame + 1.0) - torch.maximum(t0[em], frame.float())).clamp(0, 1)
    phot = flux[em] * frac
    keep = phot > 0
    em, frame = em[keep], frame[keep]
    return {"seq": seq[em], "frame": frame, "emitter": em, "x": x[em], "y": y[em], "z": z[em],
            "photons": phot[keep]}


def sample_background(cfg: SMLMConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Background photons per pixel, ``[n, H, W]``: a uniform level in ``bg_photons`` plus smooth
    structure (two octaves of bicubically interpolated random grids, a Perlin-like field) of
    relative amplitude ``bg_variation``."""
    sim = cfg.simulate
    h, w = sim.frame_size
    level = sim.bg_photons[0] + (sim.bg_photons[1] - sim.bg_photons[0]) * torch.rand(n, generator=generator, device=device)
    bg = level[:, None, None].expand(n, h, w).clone()
    if sim.bg_variation > 0:
        field = torch.zeros(n, 1, h, w, device=device)
        for octave, amp in ((1, 1.0), (2, 0.5)):
            gh = max(2, int(math.ceil(h * octave / sim.bg_length_px)) + 1)
            gw = max(2, int(math.ceil(w * octave / sim.bg_length_px)) + 1)
            grid = torch.randn(n, 1, gh, gw, generator=generator, device=device)
            field = field + amp * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
        field = field[:, 0]
        field = field / field.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
        bg = bg * (1 + sim.bg_variation * field)
    return bg.clamp(min=0)


def frames_to_input(photons: torch.Tensor, cfg: SMLMConfig) -> torch.Tensor:
    """Photon frames -> network input scale (divide by ``model.input_scale`` photons)."""
    return photons / cfg.model.input_scale


def target_maps(cfg: SMLMConfig, seq: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                photons: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Pixel targets ``[B, 6, H, W]``: p (1 at the pixel holding an emitter), photons / photon_scale,
    x and y offsets of the emitter from that pixel's centre (px, in [-0.5, 0.5]), z / z_scale,
    background / bg_scale. Two emitters in one pixel: one of them is kept."""
    b, h, w = bg.shape
    out = torch.zeros(b, 6, h, w, device=bg.device, dtype=bg.dtype)
    ix = x.floor().long().clamp(0, w - 1)
    iy = y.floor().long().clamp(0, h - 1)
    ones = torch.ones_like(x)
    vals = torch.stack([ones, photons / cfg.model.photon_scale, x - ix - 0.5, y - iy - 0.5, z / z_scale(cfg)], 0)
    out[seq[None, :].expand(5, -1), torch.arange(5, device=bg.device)[:, None].expand(-1, seq.numel()),
        iy[None].expand(5, -1), ix[None].expand(5, -1)] = vals
    out[:, 5] = bg / cfg.model.bg_scale
    return out


def simulate_batch(cfg: SMLMConfig, batch_size: int, generator: torch.Generator,
                   device: torch.device | str) -> dict[str, torch.Tensor]:
    """One training batch, simulated on ``device``.

    Returns:
        ``input``: ``[B, window, H, W]`` camera frames converted back to photons / input_scale.
        ``target``: ``[B, 6, H, W]`` pixel targets of the centre frame (see :func:`target_maps`).
        ``em``: ``[B, K, 4]`` centre-frame emitters (x px, y px, z nm, photons), ``em_mask`` ``[B, K]``.
        ``bg``: ``[B, H, W]`` background photons per pixel.
    """
    device = torch.device(device)
    sim = cfg.simulate
    h, w = sim.frame_size
    nf = sim.window
    e = sample_emissions(cfg, batch_size, nf, generator, device)
    g = e["seq"] * nf + e["frame"]
    img = render_emitters(g, batch_size * nf, e["x"], e["y"], e["z"], e["photons"], h, w, cfg.psf,
                          sim.pixel_size_nm).view(batch_size, nf, h, w)
    bg = sample_background(cfg, batch_size, generator, device)
    adu = camera_forward(img + bg[:, None], cfg.camera, generator)
    frames = camera_backward(adu, cfg.camera)
    c = nf // 2
    sel = e["frame"] == c
    seq, x, y, z, ph = e["seq"][sel], e["x"][sel], e["y"][sel], e["z"][sel], e["photons"][sel]
    (em,), mask = pad_by_group(seq, batch_size, torch.stack([x, y, z, ph], 1))
    return {"input": frames_to_input(frames, cfg), "target": target_maps(cfg, seq, x, y, z, ph, bg),
            "em": em, "em_mask": mask, "bg": bg}


def simulate_movie(cfg: SMLMConfig, n_frames: int, generator: torch.Generator, device: torch.device | str,
                   chunk_frames: int = 256) -> Iterator[tuple[torch.Tensor, pd.DataFrame, torch.Tensor]]:
    """A movie with blinking continuous across frames, yielded in chunks.

    Yields ``(adu [n, H, W], ground truth table of the chunk, background photons [H, W])``; the truth
    table has columns ``frame`` (0-based), ``x_nm``, ``y_nm``, ``z_nm``, ``photons``, ``emitter_id``.
    The background map is fixed over the movie.
    """
    import pandas as pd

    device = torch.device(device)
    sim = cfg.simulate
    h, w = sim.frame_size
    px = sim.pixel_size_nm
    e = sample_emissions(cfg, 1, n_frames, generator, device)
    bg = sample_background(cfg, 1, generator, device)[0]
    order = torch.argsort(e["frame"], stable=True)
    e = {k: v[order] for k, v in e.items()}
    bounds = torch.searchsorted(e["frame"], torch.arange(0, n_frames + chunk_frames, chunk_frames, device=device))
    for i, start in enumerate(range(0, n_frames, chunk_frames)):
        stop = min(n_frames, start + chunk_frames)
        a, b = int(bounds[i]), int(bounds[i + 1])
        sl = {k: v[a:b] for k, v in e.items()}
        img = render_emitters(sl["frame"] - start, stop - start, sl["x"], sl["y"], sl["z"], sl["photons"], h, w,
                              cfg.psf, px)
        adu = camera_forward(img + bg[None], cfg.camera, generator)
        truth = pd.DataFrame({
            "frame": sl["frame"].cpu().numpy().astype(np.int64),
            "x_nm": (sl["x"] * px).cpu().numpy().astype(np.float64),
            "y_nm": (sl["y"] * px).cpu().numpy().astype(np.float64),
            "z_nm": sl["z"].cpu().numpy().astype(np.float64),
            "photons": sl["photons"].cpu().numpy().astype(np.float64),
            "emitter_id": sl["emitter"].cpu().numpy().astype(np.int64),
        })
        yield adu, truth, bg
