"""Physics simulator of scintillator (LYSO/NaI/CsI/LaBr3) and HPGe-like spectra of the same deposits.

Pipeline (batched torch on the training device; units keV, cm, counts):

1. **Response** (once per geometry, cached on disk): Monte Carlo photon transport in the crystal cylinder
   (:func:`neurotrain.tasks.gamma.physics.transport`) for one incident energy per channel centre, a
   parallel beam on the front face plus a share ``backscatter_fraction`` that first reaches a slab (Pb or Fe)
   behind the crystal and returns by single scattering (backscatter peak, Pb K x-rays). Stored as the
   full-energy efficiency per incident energy and the continuum of partial deposits per channel; deposits of
   no fixed energy are smoothed by a Gaussian of ``response_smooth_kev`` (:func:`smooth_deposits`), escape and
   x-ray lines are not. For LYSO
   also the intrinsic Lu-176 deposit spectrum: beta continuum (allowed shape with Fermi function, end point
   597 keV to the 596.8 keV level of Hf-176) summed with the transported 306.8 / 201.8 / 88.3 keV cascade
   (emission 93.6 / 78.0 / 14.5 %; the rest converted and absorbed locally). ENSDF via NNDC NuDat 3.
2. **Deposits of a spectrum**: 1-4 library sources with random activities, a share of spectra with lines at
   random energies, environmental K-40 / Th-232 / Ra-226 lines plus a scattered E^-1 continuum, and for LYSO
   the Lu-176 activity of 37 Bq/g times the crystal mass (Lu-176: 2.59 % abundance, T1/2 3.76e10 y, giving
   ~39 Bq per g of LYSO; e.g. Alva-Sanchez et al., Sci. Rep. 8, 17310 (2018)).
3. **Input**: photopeaks as Gaussians at the exact line energies and the continuum broadened with the
   scintillator law FWHM(E) = r * 662 keV * (E / 662 keV)^p (r ~ 10 % for LYSO, randomised 8-12 %,
   p 0.45-0.65; GADRAS/MCNP GEB-like power law), gain and offset jitter, Poisson counts with 1e3-1e7 in total.
4. **Target**: the *same deposits*, with the input's gain and offset, at HPGe resolution
   FWHM(E) = sqrt(a + b E + c E^2) through 0.9 keV at 122 keV, 1.3 keV at 662 keV and 1.9 keV at 1332 keV
   (typical coaxial HPGe; e.g. ORTEC GEM datasheets), noiseless (expected counts).

The variable-width Gaussian of step 3/4 is one fixed-width convolution in the coordinate
u(E) = integral dE / FWHM(E), where every peak has FWHM 1; histograms move between the channel grid and the
u grid through their cumulative sums, so counts are conserved.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neurotrain.tasks.gamma import library, physics

#: Bumped when the response construction changes; with physics.PHYSICS_VERSION and the photon data hash it keys
#: the disk cache, so stale responses are rebuilt, never reused.
RESPONSE_VERSION = 6
LU176_BETA_ENDPOINT = 597.3  # keV, Q(1194.1) - 596.8 level (ENSDF)
LU176_CASCADE = ((306.78, 0.936), (201.83, 0.780), (88.34, 0.145))  # keV, emission per decay (ENSDF)
HF_Z = 72  # daughter of Lu-176


# ----------------------------------------------------------------------------------------------- grids


def channel_edges(sim: Any, device: torch.device | None = None) -> torch.Tensor:
    """Channel edges (keV), ``n_channels + 1`` values from ``e_min_kev`` to ``e_max_kev``."""
    return torch.linspace(sim.e_min_kev, sim.e_max_kev, sim.n_channels + 1, device=device)


def measured_energy(e_true: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Library (true) energies, (M,) or (B, M) keV, where each spectrum's calibration shows them: (B, M).
    Identity for batches without ``calibration`` (files written before it existed)."""
    cal = batch.get("calibration")
    if e_true.dim() == 1:
        ref = cal if cal is not None else batch["input"]
        e_true = e_true.to(ref.device, torch.float32).expand(ref.shape[0], -1)
    return e_true if cal is None else e_true * cal[:, :1] + cal[:, 1:2]


def true_energy(e_meas: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`measured_energy` for (B, M) energies."""
    cal = batch.get("calibration")
    return e_meas if cal is None else (e_meas - cal[:, 1:2]) / cal[:, :1]


def channel_centers(sim: Any, device: torch.device | None = None) -> torch.Tensor:
    e = channel_edges(sim, device)
    return 0.5 * (e[1:] + e[:-1])


def scint_fwhm(energy: torch.Tensor, r662: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """Scintillator FWHM (keV): r662 * 662 * (E/662)^power; parameters broadcast against ``energy``."""
    return r662 * 662.0 * (energy.clamp_min(1.0) / 662.0) ** power


def hpge_coefficients(anchors: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(a, b, c) of FWHM^2 = a + b E + c E^2 through three (energy keV, FWHM keV) anchors."""
    e = torch.tensor([a[0] for a in anchors], dtype=torch.float64)
    f = torch.tensor([a[1] for a in anchors], dtype=torch.float64)
    m = torch.stack([torch.ones_like(e), e, e**2], dim=1)
    a, b, c = torch.linalg.solve(m, f**2).tolist()
    return a, b, c


def hpge_fwhm(energy: torch.Tensor, coeffs: tuple[float, float, float]) -> torch.Tensor:
    a, b, c = coeffs
    return torch.sqrt((a + b * energy + c * energy**2).clamp_min(0.01))


# ------------------------------------------------------------------------------------------- response


@dataclass
class Response:
    """Detector response on a channel grid (CPU or device tensors)."""

    key: str
    edges: torch.Tensor  # (N+1,) keV
    incident: torch.Tensor  # (N,) keV, channel centres
    full_energy: torch.Tensor  # (N,) probability of a full-energy deposit per incident photon
    continuum: torch.Tensor  # (N, N) probability per incident photon of a partial deposit in channel k
    lu176: torch.Tensor  # (N,) deposit spectrum per Lu-176 decay (zeros for non-LYSO crystals)
    mass_g: float
    volume_cm3: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> Response:
        return Response(
            self.key, self.edges.to(device), self.incident.to(device), self.full_energy.to(device),
            self.continuum.to(device), self.lu176.to(device), self.mass_g, self.volume_cm3, self.meta,
        )

    def full_matrix(self) -> torch.Tensor:
        """(N, N) response of a continuous incident spectrum: continuum plus full-energy on the diagonal."""
        return self.continuum + torch.diag(self.full_energy)


def response_key(sim: Any) -> dict[str, Any]:
    d = sim.detector
    return {
        "version": RESPONSE_VERSION,
        "physics": physics.PHYSICS_VERSION,
        "photon_data": physics.data_fingerprint(),
        "crystal": d.crystal,
        "radius_cm": d.radius_cm,
        "height_cm": d.height_cm,
        "slab": d.slab_material,
        "backscatter_fraction": d.backscatter_fraction,
        "n_channels": sim.n_channels,
        "e_min_kev": sim.e_min_kev,
        "e_max_kev": sim.e_max_kev,
        "photons": sim.response_photons,
        "smooth": sim.response_smooth_channels,
        "smooth_kev": sim.response_smooth_kev,
        "seed": sim.response_seed,
    }


def default_cache_dir() -> Path:
    """``$NEUROTRAIN_CACHE/gamma`` or ``~/.cache/neurotrain/gamma`` (``$XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("NEUROTRAIN_CACHE")
    if root:
        return Path(root) / "gamma"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neurotrain" / "gamma"


def _beta_energies(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Kinetic energies (keV) of Lu-176 betas: allowed shape p W (E0-T)^2 F(Z, W) with the
    non-relativistic Fermi function F = 2 pi eta / (1 - exp(-2 pi eta)), eta = alpha Z W / p."""
    t = torch.linspace(0.5, LU176_BETA_ENDPOINT - 0.5, 4000, dtype=torch.float64)
    w = 1 + t / physics.ME_C2
    p = torch.sqrt(w**2 - 1)
    eta = HF_Z * w / (137.035999 * p)
    fermi = 2 * math.pi * eta / (1 - torch.exp(-2 * math.pi * eta))
    pdf = p * w * (LU176_BETA_ENDPOINT - t) ** 2 * fermi
    cdf = torch.cumsum(pdf, 0)
    cdf = (cdf / cdf[-1]).float().to(device)
    u = torch.rand(n, generator=gen, device=device)
    idx = torch.searchsorted(cdf, u).clamp(max=len(t) - 1)
    return t.float().to(device)[idx]


def build_response(sim: Any, device: torch.device | None = None, progress: bool = False) -> Response:
    """Run the Monte Carlo for every channel centre (and Lu-176 for LYSO). See the module docstring."""
    device = device or torch.device("cpu")
    d = sim.detector
    gen = torch.Generator(device=device)
    gen.manual_seed(int(sim.response_seed))
    table = physics.material_table(d.crystal).to(device)
    slab = physics.material_table(d.slab_material).to(device) if d.slab_material != "none" else None
    edges = channel_edges(sim, device)
    centers = 0.5 * (edges[1:] + edges[:-1])
    n_ch = centers.numel()
    n_per = int(sim.response_photons)
    full = torch.zeros(n_ch, device=device)
    cont = torch.zeros(n_ch * n_ch, device=device)  # deposits of no fixed energy: smoothed below
    lines = torch.zeros(n_ch * n_ch, device=device)  # escape and x-ray peaks: kept as they are
    losses, fixed = line_deposit_energies(table, slab)
    losses, fixed = losses.to(device), fixed.to(device)
    chunk = max(1, 400_000 // n_per)
    for start in range(0, n_ch, chunk):
        inc = centers[start : start + chunk]
        m = inc.numel()
        e = inc.repeat_interleave(n_per)
        n = e.numel()
        ev = torch.arange(n, device=device)
        pos = physics.disk_points(n, d.radius_cm, 0.0, gen, device)
        u = torch.tensor([0.0, 0.0, 1.0], device=device).expand(n, 3).clone()
        if slab is not None and d.backscatter_fraction > 0:
            via = torch.rand(n, generator=gen, device=device) < d.backscatter_fraction
            e_b, u_b, back = physics.slab_backscatter(e[via], slab, gen)
            idx = ev[via]
            # photons lost in the slab get zero energy (no deposit)
            e = e.clone()
            e[idx] = torch.where(back, e_b, torch.zeros_like(e_b))
            u[idx] = u_b
            pos[idx] = physics.disk_points(idx.numel(), d.radius_cm, d.height_cm, gen, device)
        live = e > 0
        dep = physics.transport(e[live], pos[live], u[live], ev[live], n, table, d.radius_cm, d.height_cm, gen)
        inc_e = inc.repeat_interleave(n_per)
        is_full = (dep - inc_e).abs() < 0.05
        which = torch.arange(m, device=device).repeat_interleave(n_per)
        full[start : start + m] = torch.zeros(m, device=device).index_add_(0, which, is_full.float()) / n_per
        part = (~is_full) & (dep > 0)
        d_part = dep[part]
        sharp = ((inc_e[part] - d_part).unsqueeze(1) - losses).abs().lt(0.05).any(1)
        sharp |= (d_part.unsqueeze(1) - fixed).abs().lt(0.05).any(1)
        k = torch.bucketize(d_part, edges) - 1
        okk = (k >= 0) & (k < n_ch)
        flat = (which[part] + start) * n_ch + k
        w = torch.full((int(okk.sum()),), 1.0 / n_per, device=device)
        cont.index_add_(0, flat[okk & ~sharp], w[~sharp[okk]])
        lines.index_add_(0, flat[okk & sharp], w[sharp[okk]])
    sigma_ch = float(sim.response_smooth_kev) / float(edges[1] - edges[0])
    cont = smooth_deposits(cont.view(n_ch, n_ch), sigma_ch) + lines.view(n_ch, n_ch)
    cont = smooth_response(cont, int(sim.response_smooth_channels)).reshape(-1)
    radius, height = d.radius_cm, d.height_cm
    volume = math.pi * radius**2 * height
    mass = volume * table.density
    lu = torch.zeros(n_ch, device=device)
    if d.crystal == "LYSO":
        n_lu = int(sim.lu176_events)
        beta = _beta_energies(n_lu, gen, device)
        dep = beta.clone()
        for e_g, p_g in LU176_CASCADE:
            emit = torch.rand(n_lu, generator=gen, device=device) < p_g
            # converted transitions deposit their energy locally (electron + atomic relaxation)
            dep = dep + torch.where(emit, torch.zeros_like(dep), torch.full_like(dep, e_g))
            idx = torch.nonzero(emit).squeeze(1)
            ne = idx.numel()
            pos = physics.cylinder_points(ne, radius, height, gen, device)
            dirs = physics.isotropic(ne, gen, device)
            gdep = physics.transport(torch.full((ne,), e_g, device=device), pos, dirs, torch.arange(ne, device=device), ne, table, radius, height, gen)
            dep[idx] += gdep
        k = torch.bucketize(dep, edges) - 1
        okk = (k >= 0) & (k < n_ch)
        lu = torch.zeros(n_ch, device=device).index_add_(0, k[okk], torch.ones(int(okk.sum()), device=device)) / n_lu
        # the beta continuum under every cascade sum leaves no fixed-energy deposit to keep sharp
        lu = smooth_deposits(lu.unsqueeze(0), sigma_ch)[0]
    key = json.dumps(response_key(sim), sort_keys=True)
    return Response(
        key, edges.cpu(), centers.cpu(), full.cpu(), cont.view(n_ch, n_ch).cpu(), lu.cpu(), mass, volume,
        {"density": table.density},
    )


def line_deposit_energies(table: physics.MaterialTable, slab: physics.MaterialTable | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies that make sharp lines in the continuum of deposits (keV): ``losses``, what an escaping photon
    carries away exactly (511 and 1022 keV annihilation photons, each crystal K x-ray, and 511 keV plus one),
    and ``fixed``, deposits of one energy whatever the incident one (the slab's K x-rays absorbed in full or
    with a crystal K x-ray escaping)."""
    kx = torch.cat([table.kx_alpha, table.kx_beta]).float().cpu()
    me = physics.ME_C2
    losses = torch.cat([torch.tensor([me, 2 * me]), kx, me + kx])
    if slab is not None and slab.kx_alpha.numel():
        sx = torch.cat([slab.kx_alpha, slab.kx_beta]).float().cpu()
        fixed = torch.cat([sx, (sx.unsqueeze(1) - kx.unsqueeze(0)).flatten()])
    else:
        fixed = torch.zeros(0)
    return losses, fixed


def smooth_deposits(hist: torch.Tensor, sigma_channels: float) -> torch.Tensor:
    """Gaussian smoothing (sigma in channels) of each row of ``hist`` (R, N) along the deposit axis, each row
    sum kept.

    Applied to the deposits that have no fixed energy (Compton continuum, backscatter, Lu-176 beta sums), it
    cuts their Monte Carlo noise by about sqrt(2 sqrt(pi) sigma) per channel (sigma = 1 keV: 2.2x on 0.73 keV
    channels) and stands in for the Doppler broadening of Compton scattering on bound electrons, which the
    free-electron Klein-Nishina transport leaves out; escape and x-ray lines are tallied apart and stay sharp.
    """
    if sigma_channels <= 0:
        return hist
    # one fixed width, so one convolution: broaden() (any width law) took 33x longer on a 4096 x 4096 matrix
    half = max(1, int(math.ceil(4 * sigma_channels)))
    x = torch.arange(-half, half + 1, device=hist.device, dtype=hist.dtype)
    kernel = torch.exp(-0.5 * (x / sigma_channels) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    out = torch.nn.functional.conv1d(hist.unsqueeze(1), kernel, padding=half)[:, 0]
    # mass pushed past either end of the grid goes back to its row
    before, after = hist.sum(1, keepdim=True), out.sum(1, keepdim=True)
    return out * torch.where(after > 0, before / after.clamp_min(1e-30), torch.ones_like(after))


def smooth_response(cont: torch.Tensor, k: int) -> torch.Tensor:
    """Average each row of the continuum with its 2k neighbours, each shifted so that features moving with the
    incident energy (escape peaks E-511, E-1022, E-E_K; Compton edges, to first order) stay aligned.

    This multiplies the Monte Carlo statistics per row by 2k+1 at the price of smearing features at a fixed
    deposit energy (backscatter peak, slab x-rays) by +-k channels.
    """
    if k <= 0:
        return cont
    n = cont.shape[0]
    rows = torch.arange(n, device=cont.device)
    acc = torch.zeros_like(cont)
    for j in range(-k, k + 1):  # 2k+1 aligned copies of the matrix
        shifted = torch.roll(cont[(rows + j).clamp(0, n - 1)], shifts=-j, dims=1)
        if j > 0:
            shifted[:, n - j :] = 0
        elif j < 0:
            shifted[:, : -j] = 0
        acc += shifted
    return acc / (2 * k + 1)


_MEMO: dict[tuple[str, str], Response] = {}


def get_response(sim: Any, device: torch.device | None = None) -> Response:
    """The response of ``sim``'s geometry: from memory, from the disk cache, or computed and cached."""
    device = device or torch.device("cpu")
    key = json.dumps(response_key(sim), sort_keys=True)
    memo_key = (key, str(device))
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    cache_dir = Path(sim.cache_dir) if sim.cache_dir else default_cache_dir()
    path = cache_dir / f"response-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    resp: Response | None = None
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("key") == key:
                resp = Response(
                    key, data["edges"], data["incident"], data["full_energy"], data["continuum"], data["lu176"],
                    float(data["mass_g"]), float(data["volume_cm3"]), {"density": float(data["density"])},
                )
        except (OSError, RuntimeError, KeyError, EOFError):
            resp = None
    if resp is None:
        build_device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        resp = build_response(sim, build_device)
        from neurotrain.io.atomic import atomic_path

        try:
            with atomic_path(path) as tmp:
                torch.save(
                    {
                        "key": key, "edges": resp.edges, "incident": resp.incident, "full_energy": resp.full_energy,
                        "continuum": resp.continuum, "lu176": resp.lu176, "mass_g": resp.mass_g,
                        "volume_cm3": resp.volume_cm3, "density": resp.meta["density"],
                    },
                    tmp,
                )
        except OSError:
            pass  # a read-only cache folder only costs a recomputation next time
    out = resp.to(device)
    _MEMO[memo_key] = out
    return out


# ------------------------------------------------------------------------------------------- helpers


def batched_interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation per row: ``x`` (B, M), ``xp`` (B, K) increasing, ``fp`` (B, K); clamped ends."""
    if xp.dim() == 1:
        xp = xp.expand(x.shape[0], -1)
    if fp.dim() == 1:
        fp = fp.expand(x.shape[0], -1)
    xp = xp.contiguous()
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.shape[1] - 1)
    x0, x1 = xp.gather(1, idx - 1), xp.gather(1, idx)
    f0, f1 = fp.gather(1, idx - 1), fp.gather(1, idx)
    t = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return f0 + t * (f1 - f0)


def broaden(
    hist: torch.Tensor,
    edges: torch.Tensor,
    fwhm_at: torch.Tensor,
    out_true_edges: torch.Tensor | None = None,
    points_per_fwhm: float = 4.0,
) -> torch.Tensor:
    """Gaussian broadening with an energy-dependent width, conserving counts.

    Args:
        hist: (B, N) counts per channel (deposits).
        edges: (N+1,) channel edges, keV.
        fwhm_at: (B, N) FWHM in keV at each channel centre (per sample).
        out_true_edges: (B, N+1) true energies of the *measured* channel edges (gain/offset jitter);
            default the same grid.
        points_per_fwhm: sampling of the u grid.
    Returns:
        (B, N) broadened counts on the measured grid.
    """
    b, n = hist.shape
    de = (edges[1:] - edges[:-1]).unsqueeze(0)
    u_edges = torch.cat([torch.zeros(b, 1, device=hist.device), torch.cumsum(de / fwhm_at.clamp_min(1e-3), 1)], 1)
    u_tot = u_edges[:, -1:]
    n_u = int(min(max(math.ceil(float(u_tot.max()) * points_per_fwhm), n), 8 * n))
    grid = torch.linspace(0, 1, n_u + 1, device=hist.device).unsqueeze(0) * u_tot  # (B, n_u+1)
    cdf = torch.cat([torch.zeros(b, 1, device=hist.device), torch.cumsum(hist, 1)], 1)
    cdf_u = batched_interp(grid, u_edges, cdf)
    counts_u = cdf_u[:, 1:] - cdf_u[:, :-1]
    du = u_tot / n_u  # (B,1) u units per bin
    sigma_bins = (1.0 / 2.3548200450309493) / du  # (B,1)
    half = int(math.ceil(4 * float(sigma_bins.max())))
    x = torch.arange(-half, half + 1, device=hist.device, dtype=hist.dtype).unsqueeze(0)
    # integrate the Gaussian over each bin so narrow kernels stay normalised
    lo = torch.special.ndtr((x - 0.5) / sigma_bins)
    hi = torch.special.ndtr((x + 0.5) / sigma_bins)
    kern = (hi - lo)
    kern = kern / kern.sum(1, keepdim=True)
    out_u = torch.nn.functional.conv1d(
        counts_u.unsqueeze(0), kern.flip(1).unsqueeze(1), padding=half, groups=b
    ).squeeze(0)
    cdf_back = torch.cat([torch.zeros(b, 1, device=hist.device), torch.cumsum(out_u, 1)], 1)
    target_edges = out_true_edges if out_true_edges is not None else edges.unsqueeze(0).expand(b, -1)
    u_at = batched_interp(target_edges, edges, u_edges)
    cdf_out = batched_interp(u_at, grid, cdf_back)
    # energies outside the grid: clamp to the cumulative ends (no counts created)
    return (cdf_out[:, 1:] - cdf_out[:, :-1]).clamp_min(0)


def gaussian_lines(
    centers: torch.Tensor, areas: torch.Tensor, fwhm: torch.Tensor, edges: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """Sum of Gaussian peaks integrated over channels: ``centers``/``areas``/``fwhm`` (B, L) -> (B, N).

    Each peak is evaluated in a window of +-5 sigma (of the widest peak) around its centre and added with
    ``scatter_add``, so the cost is B x L x window, not B x L x N. Uniform channel edges assumed.
    """
    b, n_l = centers.shape
    n = edges.numel() - 1
    out = torch.zeros(b, n, device=centers.device, dtype=areas.dtype)
    keep = (areas > 0).any(0)
    if not bool(keep.any()):
        return out
    centers, areas, fwhm = centers[:, keep], areas[:, keep], fwhm[:, keep]
    sig = (fwhm / 2.3548200450309493).clamp_min(1e-3)
    e0 = float(edges[0])
    width = float(edges[1] - edges[0])
    k = int(min(n, math.ceil(10 * float(sig.max()) / width) + 3))
    offs = torch.arange(k + 1, device=centers.device)
    for s in range(0, centers.shape[1], chunk):  # chunks of lines bound the memory of (B, L, K)
        c, a, sg = centers[:, s : s + chunk], areas[:, s : s + chunk], sig[:, s : s + chunk]
        start = (torch.floor((c - e0) / width).long() - k // 2).clamp(0, max(n - k, 0))
        idx = start.unsqueeze(2) + offs  # (B, l, K+1) edge indices
        e = e0 + idx.to(c.dtype) * width
        cdf = torch.special.ndtr((e - c.unsqueeze(2)) / sg.unsqueeze(2))
        val = a.unsqueeze(2) * (cdf[..., 1:] - cdf[..., :-1])
        ch = idx[..., :-1].clamp(max=n - 1)
        out.scatter_add_(1, ch.reshape(b, -1), val.reshape(b, -1))
    return out


def room_return(line_e: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Energy distribution (B, L, N), per photon of each line ``line_e`` (B, L) keV, of the photons that reach
    the crystal after one Compton scatter in the surroundings: the Klein-Nishina distribution
    dsigma/dE' ~ eps + 1/eps - sin^2(theta) (eps = E'/E) over all angles, E' from E / (1 + 2E/511 keV) to E
    (Evans, "The Atomic Nucleus", 1955, ch. 23), integrated over channels; each row sums to 1 (0 for lines
    below the grid). Room walls, floor and table scatter at every angle; the slab response models only
    180-degree returns."""
    centers = 0.5 * (edges[1:] + edges[:-1])
    e = line_e.unsqueeze(2)
    eps = centers.view(1, 1, -1) / e.clamp_min(1e-3)
    k = e / physics.ME_C2
    inside = (eps <= 1) & (eps >= 1 / (1 + 2 * k))
    cos_t = 1 - (1 / eps.clamp_min(1e-6) - 1) / k.clamp_min(1e-9)
    shape = torch.where(inside, eps + 1 / eps.clamp_min(1e-6) - (1 - cos_t**2), torch.zeros_like(eps))
    return shape / shape.sum(2, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """Overrides for evaluation sets; ``None`` fields are drawn at random from the config ranges."""

    sources: list[str] | None = None  # the same sources in every spectrum
    counts: float | None = None
    fwhm_662: float | None = None
    power: float | None = None
    random_lines: int | None = None  # number of random-energy lines (0 disables)
    random_line_energies: list[float] | None = None
    environment: bool | None = None
    jitter: bool = True
    crystal: str | None = None  # another crystal of the same geometry


def _log_uniform(lo: float, hi: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=device)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def merge_lines(
    energy: torch.Tensor, area: torch.Tensor, detectable: torch.Tensor, merge_kev: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge lines closer than ``merge_kev`` (B, L): summed areas at the area-weighted energy; a merged line
    is detectable when the summed area was detectable for any member. Emptied slots get area 0."""
    b, n_l = energy.shape
    e_sorted, order = torch.sort(torch.where(area > 0, energy, torch.full_like(energy, 1e9)), dim=1)
    a_sorted = area.gather(1, order)
    d_sorted = detectable.gather(1, order)
    new_group = torch.ones_like(e_sorted, dtype=torch.long)
    new_group[:, 1:] = (e_sorted[:, 1:] - e_sorted[:, :-1] > merge_kev).long()
    gid = torch.cumsum(new_group, 1) - 1
    a_sum = torch.zeros(b, n_l, device=energy.device, dtype=area.dtype).scatter_add_(1, gid, a_sorted)
    ea_sum = torch.zeros_like(a_sum).scatter_add_(1, gid, a_sorted * e_sorted)
    d_any = torch.zeros_like(a_sum).scatter_add_(1, gid, d_sorted.to(area.dtype)) > 0
    e_out = torch.where(a_sum > 0, ea_sum / a_sum.clamp_min(1e-30), torch.zeros_like(a_sum))
    return e_out, a_sum, d_any & (a_sum > 0)


def simulate_batch(
    cfg: Any, batch_size: int, generator: torch.Generator, device: torch.device, scene: Scene | None = None
) -> dict[str, torch.Tensor]:
    """One batch of (input, target) spectra. See the module docstring for the physics.

    Returns a dict of tensors with leading dimension ``batch_size``:

    * ``input`` (B, 3, N): counts / scale, log1p of that, and the energy axis E / e_max.
    * ``target`` (B, 1, N): expected HPGe-resolution counts / scale.
    * ``fwhm_params`` (B, 2): the input law (r662, power) - the network's conditioning.
    * ``scale`` (B, 1): counts per unit of the normalised spectra (mean input counts per channel).
    * ``counts`` (B, N): the Poisson input counts; ``clean_input`` (B, N): their expectation.
    * ``line_energy``, ``line_area``, ``line_area_input``, ``line_mask``, ``line_detectable`` (B, L):
      true lines at the energies the spectrum's (jittered) calibration shows them (keV), expected net
      photopeak counts in target and input, validity and detectability.
    * ``lu_fraction``, ``live_time_s`` (B,); ``calibration`` (B, 2): the gain and offset (keV) of the jitter,
      measured energy = gain x true energy + offset (:func:`measured_energy`).

    With ``simulate.train_crystals`` set, each training batch (no ``scene``) uses one crystal drawn from it.
    """
    sim = cfg.simulate
    scene = scene or Scene()
    b = batch_size
    gen = generator
    if scene.crystal is not None or (scene.sources is None and sim.train_crystals):
        pool = [scene.crystal] if scene.crystal is not None else list(sim.train_crystals)
        pick = int(torch.randint(0, len(pool), (1,), generator=gen, device=device).item())
        sim = sim.model_copy(update={"detector": sim.detector.model_copy(update={"crystal": pool[pick]})})
    resp = get_response(sim, device)
    edges, centers = resp.edges, resp.incident
    n = centers.numel()
    e_lo, e_hi = sim.e_min_kev, sim.e_max_kev

    # ---------------- source lines
    names = [s for s in sim.sources]
    chosen_names = scene.sources if scene.sources is not None else None
    if chosen_names is not None and len(chosen_names) == 0:
        e_src = torch.zeros(b, 1, device=device)
        i_src = torch.zeros(b, 1, device=device)
    elif chosen_names is not None:
        tab_e, tab_i = library.line_table(chosen_names, device)
        k = len(chosen_names)
        e_src = tab_e.unsqueeze(0).expand(b, -1, -1)
        act = _log_uniform(0.5, 2.0, b * k, gen, device).view(b, k, 1)
        i_src = tab_i.unsqueeze(0) * act
    else:
        tab_e, tab_i = library.line_table(names, device)
        s_max = sim.max_sources
        pick = torch.randint(0, len(names), (b, s_max), generator=gen, device=device)
        n_src = torch.randint(sim.min_sources, s_max + 1, (b,), generator=gen, device=device)
        use = torch.arange(s_max, device=device).unsqueeze(0) < n_src.unsqueeze(1)
        act = _log_uniform(0.1, 1.0, b * s_max, gen, device).view(b, s_max) * use
        e_src = tab_e[pick]  # (B, S, W)
        i_src = tab_i[pick] * act.unsqueeze(2)
    e_src = e_src.reshape(b, -1)
    i_src = i_src.reshape(b, -1)

    # ---------------- random-energy lines
    r_max = sim.max_random_lines
    if scene.random_line_energies is not None:
        e_rand = torch.tensor(scene.random_line_energies, device=device).unsqueeze(0).expand(b, -1)
        i_rand = _log_uniform(0.5, 1.0, b * e_rand.shape[1], gen, device).view(b, -1)
    else:
        e_rand = _uniform(e_lo + 15.0, e_hi - 30.0, b * r_max, gen, device).view(b, r_max)
        i_rand = _log_uniform(0.05, 1.0, b * r_max, gen, device).view(b, r_max)
        if scene.random_lines is not None:
            k_rand = torch.full((b,), scene.random_lines, device=device)
        else:
            has = torch.rand(b, generator=gen, device=device) < sim.random_line_fraction
            k_rand = torch.randint(1, r_max + 1, (b,), generator=gen, device=device) * has
        i_rand = i_rand * (torch.arange(r_max, device=device).unsqueeze(0) < k_rand.unsqueeze(1))
        # spectra with no source and no random line get random lines
        empty = (i_src.sum(1) <= 0) & (i_rand.sum(1) <= 0)
        i_rand[:, 0] = torch.where(empty, torch.ones_like(i_rand[:, 0]), i_rand[:, 0])
    src_e = torch.cat([e_src, e_rand], 1)
    src_w = torch.cat([i_src, i_rand], 1)
    src_w = src_w * ((src_e >= e_lo) & (src_e < e_hi))

    # ---------------- environment: terrestrial lines + scattered continuum
    env_on = sim.environment if scene.environment is None else scene.environment
    env_e, env_i = library.line_table(list(library.ENVIRONMENT), device)
    env_act = _uniform(0.5, 2.0, b * 3, gen, device).view(b, 3, 1)
    env_e = env_e.unsqueeze(0).expand(b, -1, -1).reshape(b, -1)
    env_w = (env_i.unsqueeze(0) * env_act).reshape(b, -1) * ((env_e >= e_lo) & (env_e < e_hi))

    # ---------------- per-line detection probabilities (interpolated on the incident grid)
    def fe_of(e: torch.Tensor) -> torch.Tensor:
        return batched_interp(e, centers, resp.full_energy)

    def continuum_of(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        idx = torch.bucketize(e, edges).sub(1).clamp(0, n - 1)
        dens = torch.zeros(b, n, device=device).scatter_add_(1, idx, w)
        return dens @ resp.continuum

    det_total = resp.full_energy + resp.continuum.sum(1)  # detection probability per incident photon
    # photons scattered once by the surroundings (simulate.room_return_fraction): extra continuum, counted
    # in each line's detection probability so that the rates below still fix the total counts.
    # A fixed fraction draws nothing, so the random stream of the rest stays as it was.
    f_lo, f_hi = sim.room_return_fraction
    room = f_hi > 0
    if room:
        frac = (_uniform(f_lo, f_hi, b, gen, device) if f_hi > f_lo else torch.full((b,), f_lo, device=device)).view(b, 1, 1)
        rr_src, rr_env = frac * room_return(src_e, edges), frac * room_return(env_e, edges)

    def line_det(e: torch.Tensor, w: torch.Tensor, rr: torch.Tensor | None) -> torch.Tensor:
        d = batched_interp(e, centers, det_total)
        if rr is not None:
            d = d + rr @ det_total
        return (w * d).sum(1).clamp_min(1e-12)

    src_det = line_det(src_e, src_w, rr_src if room else None)
    env_cont_inc = (centers.clamp_min(30.0) ** -1.0) * (centers <= 2614.5)
    env_cont_inc = env_cont_inc / env_cont_inc.sum() * sim.env_continuum_share
    env_line_det = line_det(env_e, env_w, rr_env if room else None)
    env_cont_det = float((env_cont_inc * det_total).sum())

    # ---------------- rates (counts per second) and live time
    src_rate = _log_uniform(sim.source_rate_cps[0], sim.source_rate_cps[1], b, gen, device)
    env_rate = torch.full((b,), sim.env_rate_cps_per_cm3 * resp.volume_cm3 if env_on else 0.0, device=device)
    lu_det = float(resp.lu176.sum())
    lu_rate = torch.full((b,), sim.lu176_bq_per_g * resp.mass_g * lu_det, device=device)
    total_rate = src_rate + env_rate + lu_rate
    if scene.counts is not None:
        total = torch.full((b,), float(scene.counts), device=device)
    else:
        total = _log_uniform(sim.counts_range[0], sim.counts_range[1], b, gen, device)
    live = total / total_rate

    # scale each component so its detected counts equal rate * live time
    k_src = (src_rate * live / src_det).unsqueeze(1)
    env_norm = (env_line_det + env_cont_det).unsqueeze(1)
    k_env = (env_rate * live).unsqueeze(1) / env_norm
    lines_e = torch.cat([src_e, env_e], 1)
    lines_w = torch.cat([src_w * k_src, env_w * k_env], 1)  # emitted photons
    peak_area = lines_w * fe_of(lines_e)  # expected full-energy counts
    deposits = continuum_of(lines_e, lines_w)
    if room:
        scattered = torch.einsum("bl,bln->bn", src_w * k_src, rr_src) + torch.einsum("bl,bln->bn", env_w * k_env, rr_env)
        deposits = deposits + scattered @ resp.full_matrix()
    deposits = deposits + k_env * (env_cont_inc @ resp.full_matrix()).unsqueeze(0)
    if lu_det > 0:
        deposits = deposits + (lu_rate * live / lu_det).unsqueeze(1) * resp.lu176.unsqueeze(0)

    # ---------------- input resolution, jitter
    r662 = torch.full((b,), scene.fwhm_662, device=device) if scene.fwhm_662 is not None else _uniform(*sim.fwhm_662_range, b, gen, device)
    power = torch.full((b,), scene.power, device=device) if scene.power is not None else _uniform(*sim.power_range, b, gen, device)
    if scene.jitter and sim.gain_jitter > 0:
        gain = 1 + sim.gain_jitter * (2 * torch.rand(b, generator=gen, device=device) - 1)
    else:
        gain = torch.ones(b, device=device)
    if scene.jitter and sim.offset_jitter_kev > 0:
        offset = sim.offset_jitter_kev * (2 * torch.rand(b, generator=gen, device=device) - 1)
    else:
        offset = torch.zeros(b, device=device)
    fwhm_in = scint_fwhm(centers.unsqueeze(0), r662.unsqueeze(1), power.unsqueeze(1))
    true_edges = (edges.unsqueeze(0) - offset.unsqueeze(1)) / gain.unsqueeze(1)
    in_cont = broaden(deposits, edges, fwhm_in, true_edges)
    fwhm_line_in = scint_fwhm(lines_e, r662.unsqueeze(1), power.unsqueeze(1))
    meas_e = lines_e * gain.unsqueeze(1) + offset.unsqueeze(1)
    in_peaks = gaussian_lines(meas_e, peak_area, fwhm_line_in * gain.unsqueeze(1), edges)
    clean_in = (in_cont + in_peaks).clamp_min(0)

    # ---------------- target: same deposits, HPGe resolution, in the *measured* calibration
    # The jitter stands for the user's calibration error, which no network can know: a target at the true
    # energies would teach it to move peaks onto library energies (recall, not enhancement), so the target
    # keeps the input's gain and offset and the network only sharpens.
    coeffs = hpge_coefficients(sim.hpge_fwhm_anchors)
    fwhm_t = hpge_fwhm(centers, coeffs).unsqueeze(0).expand(b, -1)
    tg_cont = broaden(deposits, edges, fwhm_t, true_edges)
    tg_peaks = gaussian_lines(meas_e, peak_area, hpge_fwhm(lines_e, coeffs) * gain.unsqueeze(1), edges)
    clean_t = (tg_cont + tg_peaks).clamp_min(0)

    counts = torch.poisson(clean_in, generator=gen)
    scale = (counts.sum(1, keepdim=True) / n).clamp_min(1e-6)
    x = counts / scale
    axis = (centers / e_hi).unsqueeze(0).expand(b, -1)
    inp = torch.stack([x, torch.log1p(x), axis], 1)
    tgt = (clean_t / scale).unsqueeze(1)

    # ---------------- line bookkeeping for the metrics (padded to max_lines, strongest first)
    area_in = peak_area
    win = fwhm_line_in
    # background under +-1 FWHM of the input peak, from the expected continuum
    lo_idx = torch.bucketize(meas_e - win, edges).clamp(1, n) - 1
    hi_idx = torch.bucketize(meas_e + win, edges).clamp(1, n) - 1
    cum = torch.cat([torch.zeros(b, 1, device=device), torch.cumsum(in_cont, 1)], 1)
    bkg = cum.gather(1, hi_idx + 1) - cum.gather(1, lo_idx)
    detectable = (area_in >= sim.detect_sigma * torch.sqrt(bkg + area_in).clamp_min(1.0)) & (area_in >= 10)
    lm = sim.max_lines
    # line energies as the measured calibration shows them: where input and target put the peaks
    m_e, m_a, m_d = merge_lines(meas_e, peak_area, detectable, sim.line_merge_kev)
    order = torch.argsort(m_a, dim=1, descending=True)[:, :lm]
    le = m_e.gather(1, order)
    la = m_a.gather(1, order)
    ld = m_d.gather(1, order)
    mask = la > 0
    pad = lm - le.shape[1]
    if pad > 0:
        le = torch.nn.functional.pad(le, (0, pad))
        la = torch.nn.functional.pad(la, (0, pad))
        ld = torch.nn.functional.pad(ld, (0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
    return {
        "input": inp.float(),
        "target": tgt.float(),
        "fwhm_params": torch.stack([r662, power], 1).float(),
        "scale": scale.float(),
        "counts": counts.float(),
        "clean_input": clean_in.float(),
        "line_energy": le.float(),
        "line_area": (la / scale).float(),
        "line_mask": mask,
        "line_detectable": ld & mask,
        "lu_fraction": (lu_rate / total_rate).float(),
        "live_time_s": live.float(),
        "calibration": torch.stack([gain, offset], 1).float(),
    }
