"""Detector responses of the gamma task: Monte Carlo photon transport per incident energy, cached on disk.

For each channel centre a parallel beam on the crystal's front face (plus a share ``backscatter_fraction`` that
first reaches a slab (Pb or Fe) behind the crystal and returns by single scattering: backscatter peak, Pb K
x-rays) is tracked by :func:`neurotrain.tasks.gamma.physics.transport`. Stored: the full-energy probability per
incident photon and the continuum of partial deposits per channel; deposits of no fixed energy are smoothed by a
Gaussian of ``response_smooth_kev`` (:func:`smooth_deposits`), escape and x-ray lines are not. For LYSO also the
intrinsic Lu-176 deposit spectrum: beta continuum (allowed shape with Fermi function, end point 597 keV to the
596.8 keV level of Hf-176) summed with the transported 306.8 / 201.8 / 88.3 keV cascade (emission 93.6 / 78.0 /
14.5 %; the rest converted and absorbed locally). ENSDF via NNDC NuDat 3.

One code serves every detector (:class:`Geometry`): the scintillator of ``simulate.detector``
(:func:`scintillator_geometry`) and the germanium crystal of ``simulate.hpge`` (``hpge.geometry``: dead contact
layer and core as insensitive germanium), each from its own Monte Carlo seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from neurotrain.tasks.gamma import physics
from neurotrain.tasks.gamma.resolution import channel_edges

#: Bumped when the response construction changes; with physics.PHYSICS_VERSION and the photon data hash it keys
#: the disk cache, so stale responses are rebuilt, never reused.
RESPONSE_VERSION = 7
LU176_BETA_ENDPOINT = 597.3  # keV, Q(1194.1) - 596.8 level (ENSDF)
LU176_CASCADE = ((306.78, 0.936), (201.83, 0.780), (88.34, 0.145))  # keV, emission per decay (ENSDF)
HF_Z = 72  # daughter of Lu-176


@dataclass(frozen=True)
class Geometry:
    """A detector crystal: a cylinder of ``material`` (physics.MATERIALS) on the beam axis (lengths in cm).

    ``dead_layer_cm``: insensitive outer layer on the side and front faces; ``core_radius_cm`` x
    ``core_depth_cm``: insensitive core bored from the back face (a closed-end coaxial germanium crystal; the core
    is treated as insensitive germanium rather than vacuum: 2 % of the volume of the default crystal)."""

    name: str
    material: str
    radius_cm: float
    height_cm: float
    slab_material: str
    backscatter_fraction: float
    seed: int
    lu176: bool = False
    dead_layer_cm: float = 0.0
    core_radius_cm: float = 0.0
    core_depth_cm: float = 0.0
    photons: int | None = None  # Monte Carlo photons per incident energy (None: simulate.response_photons)

    def active(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Mask function of the sensitive volume for physics.transport (None: all of the crystal)."""
        if self.dead_layer_cm <= 0 and self.core_radius_cm <= 0:
            return None
        r_in, z_front = self.radius_cm - self.dead_layer_cm, self.dead_layer_cm
        r_core, z_core = self.core_radius_cm, self.height_cm - self.core_depth_cm

        def mask(p: torch.Tensor) -> torch.Tensor:
            r2 = p[:, 0] ** 2 + p[:, 1] ** 2
            ok = (r2 <= r_in**2) & (p[:, 2] >= z_front)
            return ok & ~((r2 < r_core**2) & (p[:, 2] > z_core))

        return mask

    def sensitive_volume_cm3(self) -> float:
        r, h = self.radius_cm - self.dead_layer_cm, self.height_cm - self.dead_layer_cm
        return math.pi * r**2 * h - math.pi * self.core_radius_cm**2 * self.core_depth_cm


def scintillator_geometry(sim: Any) -> Geometry:
    """The scintillator of ``sim.detector`` (its Monte Carlo seed is ``sim.response_seed``)."""
    d = sim.detector
    return Geometry(
        d.crystal, d.crystal, float(d.radius_cm), float(d.height_cm), d.slab_material, float(d.backscatter_fraction),
        int(sim.response_seed), lu176=d.crystal == "LYSO",
    )


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

    def total(self) -> torch.Tensor:
        """(N,) probability that an incident photon deposits anything (intrinsic total efficiency)."""
        return self.full_energy + self.continuum.sum(1)


def response_key(sim: Any, geom: Geometry | None = None) -> dict[str, Any]:
    """What a response depends on (its cache key); ``geom`` defaults to the scintillator."""
    g = geom or scintillator_geometry(sim)
    key = {
        "version": RESPONSE_VERSION,
        "physics": physics.PHYSICS_VERSION,
        "photon_data": physics.data_fingerprint(),
        "crystal": g.material,
        "radius_cm": g.radius_cm,
        "height_cm": g.height_cm,
        "slab": g.slab_material,
        "backscatter_fraction": g.backscatter_fraction,
        "n_channels": sim.n_channels,
        "e_min_kev": sim.e_min_kev,
        "e_max_kev": sim.e_max_kev,
        "photons": g.photons or sim.response_photons,
        "smooth": sim.response_smooth_channels,
        "smooth_kev": sim.response_smooth_kev,
        "seed": g.seed,
    }
    if g.dead_layer_cm > 0 or g.core_radius_cm > 0:
        key.update({k: v for k, v in asdict(g).items() if k.startswith(("dead", "core"))})
    if g.lu176:
        key["lu176_events"] = sim.lu176_events
    return key


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


def build_response(
    sim: Any, device: torch.device | None = None, progress: bool = False, geom: Geometry | None = None
) -> Response:
    """Run the Monte Carlo for every channel centre (and Lu-176 for LYSO). See the module docstring.
    ``geom`` defaults to the scintillator of ``sim.detector``."""
    device = device or torch.device("cpu")
    d = geom or scintillator_geometry(sim)
    active = d.active()
    gen = torch.Generator(device=device)
    gen.manual_seed(int(d.seed))
    table = physics.material_table(d.material).to(device)
    slab = physics.material_table(d.slab_material).to(device) if d.slab_material != "none" else None
    edges = channel_edges(sim, device)
    centers = 0.5 * (edges[1:] + edges[:-1])
    n_ch = centers.numel()
    n_per = int(d.photons or sim.response_photons)
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
        dep = physics.transport(
            e[live], pos[live], u[live], ev[live], n, table, d.radius_cm, d.height_cm, gen, active=active
        )
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
    if d.lu176:
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
    key = json.dumps(response_key(sim, d), sort_keys=True)
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


def get_response(sim: Any, device: torch.device | None = None, geom: Geometry | None = None) -> Response:
    """The response of ``geom`` (default: ``sim``'s scintillator): from memory, from the disk cache, or computed
    and cached."""
    device = device or torch.device("cpu")
    key = json.dumps(response_key(sim, geom), sort_keys=True)
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
        resp = build_response(sim, build_device, geom=geom)
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
