"""Scenes for the deflare simulator: background, a bright light source and its lens flare,
rendered per time step on the device (batch-first, seeded).

Radiance in linear units where a white wall is 1 and a mid-grey one ~0.5.

* background: a textured plane (``texture_components`` random sinusoidal gratings, spatial
  frequency 0.02-0.15 cycles/px) translating with the camera's ego-motion
  (``ego_speed_px_s``), with ``num_shapes`` discs/squares (soft 0.7 px edges) moving on top
  (``shape_speed_px_s``; a share ``fast_shape_fraction`` of them fast, log-uniform in
  ``fast_shape_speed_px_s`` = 2 000-15 000 px/s: a fan blade or a spinning disc, like the
  dot of the real recording ``realdata/events/evt2_sample.raw`` at ~10^4 px/s, whose
  dense event clouds must not look like a light source to the network); reflectances 0.05-1.
* light source: a Gaussian blob (sigma ``light_sigma_px``) whose peak is ``light_contrast``
  times the scene's mean radiance, drawn log-uniformly in 10x-10 000x (a lamp or headlamp
  against a dusk street up to the sun's disc against a lit scene: the issue's HDR range).
  It moves with the ego-motion. Mains-powered lamps flicker at twice the mains frequency,
  100 Hz (50 Hz grid) or 120 Hz (60 Hz grid): ``L(t) = 1 - m + m sin^2(pi f t + phi)``, depth
  ``m`` from ``flicker_depth`` (incandescent ~0.1-0.3, LED/fluorescent up to 1), with
  probability ``flicker_probability``.
* flare (Wu et al. 2021, "How to train neural networks for flare removal", ICCV; Dai et
  al. 2022, "Flare7K", NeurIPS): scattering flare = a glare halo ``A_h / (1 + (r/r_h)^2)^1.5``
  plus ``streaks`` thin rays (angular width 0.01-0.04 rad, exponential radial decay); and
  reflective flare = ``ghosts`` soft discs on the line through the source and the optical
  centre (at ``c + k (l - c)``, ``k`` in [-1.2, -0.2] U [0.2, 0.6]). Flare is light of the
  source spread by the lens, so its amplitudes are fractions of the source's peak
  (``halo_fraction``, ``streak_fraction``, ``ghost_fraction``; chosen so that a 10x source
  gives a faint halo and a 10 000x source floods a large part of the frame, not taken from a
  measurement). Flare follows the source at every time step - ego-motion moves the source,
  and the ghosts move the opposite way through the optical centre - and scales with the
  source's instantaneous intensity ``L(t)``, so it flickers with it.

Components (for the per-event truth): ``scene``, ``light`` and the three flare terms
``glare`` (halo), ``streak``, ``ghost``, each ``(n, H, W)``; :meth:`Scenes.render` returns
them separately so the sensor can attribute every intensity change to its cause.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _u(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def _logu(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.exp(_u(gen, shape, math.log(lo), math.log(hi), device))


class Scenes:
    """Random scene parameters for ``n`` scenes (all tensors on ``device``, first dim ``n``)."""

    def __init__(self, sim: Any, n: int, size: tuple[int, int], gen: torch.Generator, device: torch.device) -> None:
        h, w = size
        s = min(h, w)
        self.n, self.size, self.device = n, size, device
        K, M, S, G = sim.texture_components, sim.num_shapes, sim.streaks, sim.ghosts
        ang = _u(gen, (n, K), 0, math.pi, device)
        freq = _u(gen, (n, K), 0.02, 0.15, device)
        self.tex_kx, self.tex_ky = freq * torch.cos(ang), freq * torch.sin(ang)
        self.tex_amp = _u(gen, (n, K), 0.0, 0.5 / max(K, 1), device) * 2
        self.tex_phase = _u(gen, (n, K), 0, 2 * math.pi, device)
        self.tex_base = _u(gen, (n,), 0.25, 0.6, device)
        ego = _u(gen, (n,), *sim.ego_speed_px_s, device)
        ego_dir = _u(gen, (n,), 0, 2 * math.pi, device)
        self.ego_v = torch.stack([ego * torch.cos(ego_dir), ego * torch.sin(ego_dir)], -1)  # px/s (vx, vy)
        self.sh_xy = torch.stack([_u(gen, (n, M), 0, w, device), _u(gen, (n, M), 0, h, device)], -1)
        sp = _u(gen, (n, M), *sim.shape_speed_px_s, device)
        fast = torch.rand((n, M), generator=gen, device=device) < sim.fast_shape_fraction
        sp = torch.where(fast, _logu(gen, (n, M), *sim.fast_shape_speed_px_s, device), sp)
        sd = _u(gen, (n, M), 0, 2 * math.pi, device)
        self.sh_v = torch.stack([sp * torch.cos(sd), sp * torch.sin(sd)], -1)
        self.sh_r = _u(gen, (n, M), 0.05 * s, 0.2 * s, device)
        self.sh_val = _u(gen, (n, M), 0.05, 1.0, device)
        self.sh_disc = (torch.rand((n, M), generator=gen, device=device) < 0.5).float()
        margin = 0.15
        self.l_xy = torch.stack([_u(gen, (n,), margin * w, (1 - margin) * w, device), _u(gen, (n,), margin * h, (1 - margin) * h, device)], -1)
        self.l_sigma = _u(gen, (n,), *sim.light_sigma_px, device) * (s / 120.0) ** 0.5
        self.l_peak = _logu(gen, (n,), *sim.light_contrast, device) * self.tex_base
        flick = torch.rand((n,), generator=gen, device=device) < sim.flicker_probability
        self.f_hz = torch.tensor(sim.flicker_hz, device=device, dtype=torch.float32)[
            torch.randint(len(sim.flicker_hz), (n,), generator=gen, device=device)
        ]
        self.f_depth = torch.where(flick, _u(gen, (n,), *sim.flicker_depth, device), torch.zeros((n,), device=device))
        self.f_phase = _u(gen, (n,), 0, math.pi, device)
        self.has_flare = (torch.rand((n,), generator=gen, device=device) < sim.flare_probability).float()
        self.halo_amp = _logu(gen, (n,), *sim.halo_fraction, device) * self.l_peak
        self.halo_r = _u(gen, (n,), 0.05 * s, 0.15 * s, device)
        self.st_n = torch.randint(S // 2, S + 1, (n,), generator=gen, device=device) if S else torch.zeros((n,), device=device)
        self.st_theta0 = _u(gen, (n,), 0, 2 * math.pi, device)
        self.st_width = _u(gen, (n, max(S, 1)), 0.01, 0.04, device)
        self.st_len = _u(gen, (n, max(S, 1)), 0.15 * s, 0.5 * s, device)
        self.st_amp = _logu(gen, (n,), *sim.streak_fraction, device) * self.l_peak
        kk = torch.where(
            torch.rand((n, max(G, 1)), generator=gen, device=device) < 0.6,
            _u(gen, (n, max(G, 1)), -1.2, -0.2, device),
            _u(gen, (n, max(G, 1)), 0.2, 0.6, device),
        )
        self.gh_k = kk
        self.gh_r = _u(gen, (n, max(G, 1)), 0.02 * s, 0.12 * s, device)
        self.gh_amp = _logu(gen, (n, max(G, 1)), *sim.ghost_fraction, device) * self.l_peak[:, None] * (G > 0)
        yy = torch.arange(h, device=device, dtype=torch.float32)
        xx = torch.arange(w, device=device, dtype=torch.float32)
        self.yy, self.xx = torch.meshgrid(yy, xx, indexing="ij")
        self.num_streaks = S

    def light_xy(self, t_s: float) -> torch.Tensor:
        return self.l_xy + self.ego_v * t_s

    def flicker(self, t_s: torch.Tensor | float) -> torch.Tensor:
        """Source intensity factor L(t) in [1-m, 1], shape (n,)."""
        return 1 - self.f_depth + self.f_depth * torch.sin(math.pi * self.f_hz * t_s + self.f_phase) ** 2

    def background(self, t_s: float) -> torch.Tensor:
        """Background radiance (n, H, W) at time ``t_s`` (seconds)."""
        sh = self.ego_v * t_s
        x = self.xx[None, None] - sh[:, 0, None, None, None]
        y = self.yy[None, None] - sh[:, 1, None, None, None]
        arg = 2 * math.pi * (self.tex_kx[..., None, None] * x + self.tex_ky[..., None, None] * y) + self.tex_phase[..., None, None]
        tex = self.tex_base[:, None, None] + (self.tex_amp[..., None, None] * torch.sin(arg)).sum(1)
        c = self.sh_xy + (self.sh_v + self.ego_v[:, None]) * t_s
        dx = self.xx[None, None] - c[..., 0, None, None]
        dy = self.yy[None, None] - c[..., 1, None, None]
        d_disc = torch.sqrt(dx * dx + dy * dy)
        d_sq = torch.maximum(dx.abs(), dy.abs())
        disc = self.sh_disc[..., None, None]
        dist = disc * d_disc + (1 - disc) * d_sq
        mask = torch.sigmoid((self.sh_r[..., None, None] - dist) / 0.7)
        alpha = 1 - torch.prod(1 - mask, dim=1)
        color = (mask * self.sh_val[..., None, None]).sum(1) / mask.sum(1).clamp_min(1e-6)
        return (tex * (1 - alpha) + color * alpha).clamp(0.05, 1.0)

    def light_profile(self, t_s: float) -> torch.Tensor:
        """Unmodulated light-source radiance (n, H, W) (multiply by :meth:`flicker`)."""
        lxy = self.light_xy(t_s)
        r2 = (self.xx[None] - lxy[:, 0, None, None]) ** 2 + (self.yy[None] - lxy[:, 1, None, None]) ** 2
        return self.l_peak[:, None, None] * torch.exp(-r2 / (2 * self.l_sigma[:, None, None] ** 2))

    def flare_components(self, t_s: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unmodulated flare radiance (glare halo, streaks, ghosts), each (n, H, W), at ``t_s``."""
        h, w = self.size
        lxy = self.light_xy(t_s)
        on = self.has_flare[:, None, None]
        dx = self.xx[None] - lxy[:, 0, None, None]
        dy = self.yy[None] - lxy[:, 1, None, None]
        r = torch.sqrt(dx * dx + dy * dy)
        halo = self.halo_amp[:, None, None] / (1 + (r / self.halo_r[:, None, None]) ** 2) ** 1.5
        streak = torch.zeros_like(halo)
        if self.num_streaks:
            S = self.num_streaks
            j = torch.arange(S, device=self.device, dtype=torch.float32)
            theta = self.st_theta0[:, None] + 2 * math.pi * j[None] / self.st_n[:, None].clamp_min(1)
            act = (j[None] < self.st_n[:, None]).float()
            phi = torch.atan2(dy, dx)[:, None]
            dth = torch.remainder(phi - theta[..., None, None] + math.pi, 2 * math.pi) - math.pi
            ray = torch.exp(-0.5 * (dth / self.st_width[..., None, None]) ** 2) * torch.exp(-r[:, None] / self.st_len[..., None, None])
            streak = self.st_amp[:, None, None] * (act[..., None, None] * ray).sum(1)
        c = torch.tensor([w / 2, h / 2], device=self.device)
        gxy = c + self.gh_k[..., None] * (lxy[:, None] - c)
        gd = torch.sqrt((self.xx[None, None] - gxy[..., 0, None, None]) ** 2 + (self.yy[None, None] - gxy[..., 1, None, None]) ** 2)
        ghost = (torch.sigmoid((self.gh_r[..., None, None] - gd) / 1.5) * self.gh_amp[..., None, None]).sum(1)
        return halo * on, streak * on, ghost * on

    def flare_profile(self, t_s: float) -> torch.Tensor:
        """Unmodulated total flare radiance (n, H, W)."""
        a, b, c = self.flare_components(t_s)
        return a + b + c

    def render(self, t_s: float) -> dict[str, torch.Tensor]:
        """Every radiance term at ``t_s``: ``scene``, ``light`` (modulated), ``glare``,
        ``streak``, ``ghost`` (modulated, unmodulated in ``*_raw``) and ``L`` (n, 1, 1)."""
        lf = self.flicker(t_s)[:, None, None]
        halo, streak, ghost = self.flare_components(t_s)
        return {
            "scene": self.background(t_s), "light": self.light_profile(t_s) * lf, "L": lf,
            "glare_raw": halo, "streak_raw": streak, "ghost_raw": ghost,
        }

    def light_mask(self, t_s: float, radius_sigmas: float = 3.0) -> torch.Tensor:
        """(n, H, W) bool: pixels within ``radius_sigmas`` sigma (at least 2 px) of the source."""
        lxy = self.light_xy(t_s)
        r2 = (self.xx[None] - lxy[:, 0, None, None]) ** 2 + (self.yy[None] - lxy[:, 1, None, None]) ** 2
        rad = (radius_sigmas * self.l_sigma).clamp_min(2.0)
        return r2 <= rad[:, None, None] ** 2
