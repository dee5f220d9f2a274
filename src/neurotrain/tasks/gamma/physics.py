"""Vectorised Monte Carlo photon transport of the gamma task (keV, cm).

Photons are tracked through a cylindrical crystal by interaction generations (never a Python loop over
photons): photoabsorption with K fluorescence (x-ray escape), Compton scattering at the bound-electron
incoherent rate with Klein-Nishina angles (Butcher & Messel 1960 composition-rejection, as in EGS4 / Geant4's
G4KleinNishinaCompton), pair production with transported annihilation quanta (single / double escape); an
optional sensitive-volume mask (a germanium crystal's dead layer and core). The photon data and material tables
are ``attenuation.py`` (NIST SRD 126, xraylib partials, X-ray Data Booklet); its names are re-exported here.

Not modelled: electron transport (secondary electrons deposit locally; bremsstrahlung and electron escape
are neglected), coherent scattering (no deposit, small angles), L-shell x-rays, positron annihilation in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from neurotrain.tasks.gamma.attenuation import (  # noqa: F401  (re-exported: the photon data of this module)
    ME_C2,
    R_E,
    N_A,
    MATERIALS,
    K_XRAYS,
    Z_OF,
    PHYSICS_VERSION,
    DATA_FILES,
    ElementTable,
    ScatteringTable,
    data_fingerprint,
    element_tables,
    scattering_tables,
    klein_nishina_sigma,
    element_partials,
    mass_fractions,
    MaterialTable,
    material_table,
)

__all__ = [
    "ME_C2",
    "R_E",
    "N_A",
    "MATERIALS",
    "K_XRAYS",
    "Z_OF",
    "PHYSICS_VERSION",
    "DATA_FILES",
    "ElementTable",
    "ScatteringTable",
    "data_fingerprint",
    "element_tables",
    "scattering_tables",
    "klein_nishina_sigma",
    "element_partials",
    "mass_fractions",
    "MaterialTable",
    "material_table",
    "isotropic",
    "sample_klein_nishina",
    "rotate",
    "distance_to_exit",
    "transport",
    "slab_backscatter",
    "disk_points",
    "cylinder_points",
]

# --------------------------------------------------------------------------------------------- sampling


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def isotropic(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Unit vectors uniform on the sphere, (n, 3)."""
    cos_t = 2 * _rand(n, gen, device) - 1
    phi = 2 * math.pi * _rand(n, gen, device)
    sin_t = torch.sqrt((1 - cos_t**2).clamp_min(0))
    return torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], dim=1)


def sample_klein_nishina(energy: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Scattered-to-incident energy ratio eps = E'/E from the Klein-Nishina distribution
    (Butcher & Messel 1960 composition-rejection). Returns eps, same shape as ``energy``."""
    device = energy.device
    k = energy / ME_C2
    eps0 = 1.0 / (1.0 + 2.0 * k)
    a1 = -torch.log(eps0)
    a2 = 0.5 * (1 - eps0**2)
    eps = torch.ones_like(energy)
    todo = torch.arange(energy.numel(), device=device)
    for _ in range(64):
        if todo.numel() == 0:
            break
        n = todo.numel()
        r1, r2, r3 = _rand(n, gen, device), _rand(n, gen, device), _rand(n, gen, device)
        e0, aa1, aa2, kk = eps0[todo], a1[todo], a2[todo], k[todo]
        first = r1 * (aa1 + aa2) < aa1
        e = torch.where(first, torch.exp(-aa1 * r2), torch.sqrt(e0**2 + (1 - e0**2) * r2))
        t = (1 - e) / (kk * e)
        sin2 = (t * (2 - t)).clamp(0, 1)
        g = 1 - e * sin2 / (1 + e**2)
        ok = g >= r3
        eps[todo[ok]] = e[ok]
        todo = todo[~ok]
    return eps


def rotate(u: torch.Tensor, cos_t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotate unit vectors ``u`` (n, 3) by polar angle acos(cos_t) and a uniform azimuth."""
    n = u.shape[0]
    phi = 2 * math.pi * _rand(n, gen, u.device)
    sin_t = torch.sqrt((1 - cos_t**2).clamp_min(0))
    # orthonormal basis around u
    helper = torch.where(
        (u[:, 2].abs() < 0.9).unsqueeze(1),
        torch.tensor([0.0, 0.0, 1.0], device=u.device).expand(n, 3),
        torch.tensor([1.0, 0.0, 0.0], device=u.device).expand(n, 3),
    )
    a = torch.linalg.cross(u, helper)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = torch.linalg.cross(u, a)
    out = (
        u * cos_t.unsqueeze(1)
        + a * (sin_t * torch.cos(phi)).unsqueeze(1)
        + b * (sin_t * torch.sin(phi)).unsqueeze(1)
    )
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


def distance_to_exit(p: torch.Tensor, u: torch.Tensor, radius: float, height: float) -> torch.Tensor:
    """Path length (cm) from points ``p`` inside the cylinder x^2+y^2<=R^2, 0<=z<=H along ``u`` to its surface."""
    a = u[:, 0] ** 2 + u[:, 1] ** 2
    b = 2 * (p[:, 0] * u[:, 0] + p[:, 1] * u[:, 1])
    c = p[:, 0] ** 2 + p[:, 1] ** 2 - radius**2
    disc = (b**2 - 4 * a * c).clamp_min(0)
    t_r = torch.where(a > 1e-12, (-b + torch.sqrt(disc)) / (2 * a).clamp_min(1e-12), torch.full_like(a, 1e9))
    uz = u[:, 2]
    t_z = torch.where(
        uz > 1e-12, (height - p[:, 2]) / uz.clamp_min(1e-12),
        torch.where(uz < -1e-12, -p[:, 2] / uz.clamp(max=-1e-12), torch.full_like(uz, 1e9)),
    )
    return torch.minimum(t_r, t_z).clamp_min(0)


def transport(
    energy: torch.Tensor,
    pos: torch.Tensor,
    direction: torch.Tensor,
    event: torch.Tensor,
    n_events: int,
    table: MaterialTable,
    radius: float,
    height: float,
    gen: torch.Generator,
    max_steps: int = 60,
    active: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Track photons through a cylindrical crystal and return the energy deposited per event (keV).

    ``active`` (optional) maps interaction points (n, 3) to a bool mask of the sensitive volume: energy given to
    electrons outside it (a germanium detector's dead contact layer, its core) is not recorded, while photons
    keep being transported through it (it attenuates and scatters like the rest of the crystal).

    Photons start at ``pos`` (inside or on the surface) moving along ``direction``; each carries the index of
    its event. Interactions: photoabsorption (with K x-ray emission and transport, hence x-ray escape),
    Compton scattering (at the bound-electron incoherent rate, Klein-Nishina angles), pair production (kinetic energy E - 1022 keV deposited, two back-to-back
    511 keV photons transported, hence single/double escape). The loop runs over interaction generations,
    never over photons.
    """
    device = energy.device
    dep = torch.zeros(n_events, device=device, dtype=torch.float32)
    e, p, u, ev = energy.float(), pos.float(), direction.float(), event.long()
    for _step in range(max_steps):
        if e.numel() == 0:
            break
        mu, kx = table.lookup(e)
        mu_tot = mu.sum(0).clamp_min(1e-9)
        s = -torch.log(_rand(e.numel(), gen, device).clamp_min(1e-12)) / mu_tot
        d_exit = distance_to_exit(p, u, radius, height)
        stay = s < d_exit
        e, p, u, ev, mu, kx, mu_tot, s = e[stay], p[stay], u[stay], ev[stay], mu[:, stay], kx[:, stay], mu_tot[stay], s[stay]
        if e.numel() == 0:
            break
        p = p + u * s.unsqueeze(1)
        r = _rand(e.numel(), gen, device) * mu_tot
        is_photo = r < mu[0]
        is_compton = (~is_photo) & (r < mu[0] + mu[1])
        is_pair = ~(is_photo | is_compton)
        local = torch.zeros_like(e)
        new_e = e.clone()
        alive = torch.ones_like(is_photo)
        new_u = u.clone()
        # --- photoabsorption with K fluorescence
        if kx.shape[0] > 0:
            cum = kx.cumsum(0)  # (J, n)
            rk = _rand(e.numel(), gen, device)
            j = (rk.unsqueeze(0) >= cum).sum(0)  # emitter index, J means none
            fluor = is_photo & (j < kx.shape[0])
            jj = j.clamp(max=kx.shape[0] - 1)
            beta = _rand(e.numel(), gen, device) < table.kx_beta_share[jj]
            e_x = torch.where(beta, table.kx_beta[jj], table.kx_alpha[jj])
            e_x = torch.minimum(e_x, e)
        else:
            fluor = torch.zeros_like(is_photo)
            e_x = torch.zeros_like(e)
        local = torch.where(is_photo, torch.where(fluor, e - e_x, e), local)
        new_e = torch.where(fluor, e_x, new_e)
        alive = torch.where(is_photo, fluor, alive)
        iso = isotropic(e.numel(), gen, device)
        new_u = torch.where(fluor.unsqueeze(1), iso, new_u)
        # --- Compton
        eps = torch.ones_like(e)
        if bool(is_compton.any()):
            eps_c = sample_klein_nishina(e[is_compton], gen)
            eps[is_compton] = eps_c
        cos_t = 1 - (1 / eps - 1) * ME_C2 / e
        rot = rotate(u, cos_t.clamp(-1, 1), gen)
        local = torch.where(is_compton, e * (1 - eps), local)
        new_e = torch.where(is_compton, e * eps, new_e)
        new_u = torch.where(is_compton.unsqueeze(1), rot, new_u)
        # --- pair production: two 511 keV photons back to back
        local = torch.where(is_pair, (e - 2 * ME_C2).clamp_min(0), local)
        new_e = torch.where(is_pair, torch.full_like(e, ME_C2), new_e)
        new_u = torch.where(is_pair.unsqueeze(1), iso, new_u)
        sensitive = active(p) if active is not None else None
        if sensitive is not None:
            local = local * sensitive
        dep.index_add_(0, ev, local)
        spawn_p, spawn_u, spawn_ev = p[is_pair], -iso[is_pair], ev[is_pair]
        keep = alive & (new_e > 1.0)
        # photons below 1 keV are absorbed where they are
        low = alive & ~keep
        if sensitive is not None:
            low = low & sensitive
        if bool(low.any()):
            dep.index_add_(0, ev[low], new_e[low])
        e = torch.cat([new_e[keep], torch.full((spawn_ev.numel(),), ME_C2, device=device)])
        p = torch.cat([p[keep], spawn_p])
        u = torch.cat([new_u[keep], spawn_u])
        ev = torch.cat([ev[keep], spawn_ev])
    if e.numel() > 0:  # still alive after max_steps: absorbed locally (rare, low energy)
        dep.index_add_(0, ev, e)
    return dep


def slab_backscatter(
    energy: torch.Tensor, table: MaterialTable, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Single-interaction return of photons from a semi-infinite slab hit at normal incidence.

    A photon travelling along +z enters the slab; it interacts at depth d ~ Exp(mu). A Compton scatter
    (Klein-Nishina angle) into the backward hemisphere, or a K x-ray of a photoabsorption emitted backwards,
    leaves the slab with probability exp(-mu(E') d / |cos|) (sampled). Returns (returned energy keV, unit
    direction (n, 3), mask of photons that came back).
    """
    device = energy.device
    n = energy.numel()
    mu, kx = table.lookup(energy)
    mu_tot = mu.sum(0).clamp_min(1e-9)
    depth = -torch.log(_rand(n, gen, device).clamp_min(1e-12)) / mu_tot
    r = _rand(n, gen, device) * mu_tot
    is_photo = r < mu[0]
    is_compton = (~is_photo) & (r < mu[0] + mu[1])
    eps = torch.ones_like(energy)
    if bool(is_compton.any()):
        eps[is_compton] = sample_klein_nishina(energy[is_compton], gen)
    cos_c = (1 - (1 / eps - 1) * ME_C2 / energy).clamp(-1, 1)
    u_c = rotate(torch.tensor([0.0, 0.0, 1.0], device=device).expand(n, 3).contiguous(), cos_c, gen)
    e_out = energy * eps
    if kx.shape[0] > 0:
        fluor = is_photo & (_rand(n, gen, device) < kx.sum(0))
        e_x = torch.where(_rand(n, gen, device) < table.kx_beta_share[0], table.kx_beta[0], table.kx_alpha[0])
    else:
        fluor = torch.zeros_like(is_photo)
        e_x = torch.zeros_like(energy)
    iso = isotropic(n, gen, device)
    e_out = torch.where(fluor, e_x.expand(n), e_out)
    u_out = torch.where(fluor.unsqueeze(1), iso, u_c)
    cand = (is_compton | fluor) & (u_out[:, 2] < -1e-3)
    mu_out, _ = table.lookup(e_out)
    p_esc = torch.exp(-mu_out.sum(0) * depth / u_out[:, 2].abs().clamp_min(1e-3))
    back = cand & (_rand(n, gen, device) < p_esc)
    return e_out, u_out, back


def disk_points(n: int, radius: float, z: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Points uniform on the disk of ``radius`` at height ``z``, (n, 3)."""
    rr = radius * torch.sqrt(_rand(n, gen, device))
    phi = 2 * math.pi * _rand(n, gen, device)
    return torch.stack([rr * torch.cos(phi), rr * torch.sin(phi), torch.full_like(rr, z)], dim=1)


def cylinder_points(n: int, radius: float, height: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Points uniform in the cylinder volume, (n, 3)."""
    p = disk_points(n, radius, 0.0, gen, device)
    p[:, 2] = height * _rand(n, gen, device)
    return p
