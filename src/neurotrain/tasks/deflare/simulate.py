"""Paired flare / no-flare event streams of the same scene, simulated in batches on the device.

Scene (linear intensity, arbitrary units; a mid-grey wall is ~0.5):

* background: a textured plane (sum of ``texture_components`` random sinusoidal gratings,
  spatial frequency 0.02-0.15 cycles/px) translating with the camera's ego-motion
  (``ego_speed_px_s``), with ``num_shapes`` discs/squares (soft 0.7 px edges) moving on top
  (``shape_speed_px_s``); reflectances 0.05-1.
* light source: a Gaussian blob (sigma ``light_sigma_px``) with a peak of
  ``light_peak`` x the mean background, moving with the ego-motion. Mains-powered lamps
  flicker at twice the mains frequency, 100 Hz (50 Hz grid) or 120 Hz (60 Hz grid):
  ``L(t) = 1 - m + m sin^2(pi f t + phi)`` with modulation depth ``m`` drawn from
  ``flicker_depth`` (incandescent ~0.1-0.3, LED/fluorescent up to 1), with probability
  ``flicker_probability``.
* flare (Wu et al. 2021, "How to train neural networks for flare removal", ICCV; Dai et
  al. 2022, "Flare7K"): scattering flare = a glare halo ``A_h / (1 + (r/r_h)^2)^1.5`` plus
  ``streaks`` thin rays (angular width 0.01-0.04 rad, exponential radial decay), and
  reflective flare = ``ghosts`` soft discs on the line through the light source and the
  optical centre (at ``c + k (l - c)``, ``k`` in [-1.2, -0.2] U [0.2, 0.6]). All flare
  scales with the source's instantaneous intensity ``L(t)``, so it flickers with it.

Sensor (a DVS pixel model as in v2e, Hu, Liu & Delbruck 2021, "v2e: From video frames to
realistic DVS events", CVPRW): each pixel remembers a log intensity ``log(I + eps)`` and
emits ON/OFF events each time the current value departs from it by the contrast
threshold, ``C ~ N(contrast_threshold=0.2, threshold_sigma=0.03)`` per pixel and
polarity (v2e's defaults); after an event it is blind for ``refractory_us`` (v2e default
0.5 ms); background-activity noise is Poisson at ``noise_rate_hz`` per pixel (DAVIS346
background activity is of order 0.1-1 Hz per pixel; v2e paper, Sec. 3). Time advances
in steps of ``dt_us``; events get integer timestamps uniform within their step.

The "with flare" and "without flare" streams share the scene, the threshold map and the
noise events; only the flare term differs, exactly the pairing of the seed's
``background_with_flare_events`` / ``background_with_light_events``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from neurotrain.tasks.deflare.voxel import events_to_voxel, voxel_to_events


def _u(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


class Scenes:
    """Random scene parameters for ``n`` scenes (all tensors on ``device``, first dim ``n``)."""

    def __init__(self, sim: Any, n: int, size: tuple[int, int], gen: torch.Generator, device: torch.device) -> None:
        h, w = size
        s = min(h, w)
        self.n, self.size, self.device = n, size, device
        K, M, S, G = sim.texture_components, sim.num_shapes, sim.streaks, sim.ghosts
        # background texture
        ang = _u(gen, (n, K), 0, math.pi, device)
        freq = _u(gen, (n, K), 0.02, 0.15, device)
        self.tex_kx, self.tex_ky = freq * torch.cos(ang), freq * torch.sin(ang)
        self.tex_amp = _u(gen, (n, K), 0.0, 0.5 / max(K, 1), device) * 2
        self.tex_phase = _u(gen, (n, K), 0, 2 * math.pi, device)
        self.tex_base = _u(gen, (n,), 0.25, 0.6, device)
        ego = _u(gen, (n,), *sim.ego_speed_px_s, device)
        ego_dir = _u(gen, (n,), 0, 2 * math.pi, device)
        self.ego_v = torch.stack([ego * torch.cos(ego_dir), ego * torch.sin(ego_dir)], -1)  # px/s (vx, vy)
        # shapes
        self.sh_xy = torch.stack([_u(gen, (n, M), 0, w, device), _u(gen, (n, M), 0, h, device)], -1)
        sp = _u(gen, (n, M), *sim.shape_speed_px_s, device)
        sd = _u(gen, (n, M), 0, 2 * math.pi, device)
        self.sh_v = torch.stack([sp * torch.cos(sd), sp * torch.sin(sd)], -1)
        self.sh_r = _u(gen, (n, M), 0.05 * s, 0.2 * s, device)
        self.sh_val = _u(gen, (n, M), 0.05, 1.0, device)
        self.sh_disc = (torch.rand((n, M), generator=gen, device=device) < 0.5).float()
        # light source
        margin = 0.15
        self.l_xy = torch.stack([_u(gen, (n,), margin * w, (1 - margin) * w, device), _u(gen, (n,), margin * h, (1 - margin) * h, device)], -1)
        self.l_sigma = _u(gen, (n,), *sim.light_sigma_px, device) * (s / 120.0) ** 0.5
        self.l_peak = _u(gen, (n,), *sim.light_peak, device)
        flick = torch.rand((n,), generator=gen, device=device) < sim.flicker_probability
        self.f_hz = torch.tensor(sim.flicker_hz, device=device, dtype=torch.float32)[
            torch.randint(len(sim.flicker_hz), (n,), generator=gen, device=device)
        ]
        self.f_depth = torch.where(flick, _u(gen, (n,), *sim.flicker_depth, device), torch.zeros((n,), device=device))
        self.f_phase = _u(gen, (n,), 0, math.pi, device)
        # flare
        self.has_flare = (torch.rand((n,), generator=gen, device=device) < sim.flare_probability).float()
        self.halo_amp = _u(gen, (n,), *sim.halo_amplitude, device)
        self.halo_r = _u(gen, (n,), 0.05 * s, 0.15 * s, device)
        self.st_n = torch.randint(S // 2, S + 1, (n,), generator=gen, device=device) if S else torch.zeros((n,), device=device)
        self.st_theta0 = _u(gen, (n,), 0, 2 * math.pi, device)
        self.st_width = _u(gen, (n, max(S, 1)), 0.01, 0.04, device)
        self.st_len = _u(gen, (n, max(S, 1)), 0.15 * s, 0.5 * s, device)
        self.st_amp = _u(gen, (n,), *sim.streak_amplitude, device)
        kk = torch.where(
            torch.rand((n, max(G, 1)), generator=gen, device=device) < 0.6,
            _u(gen, (n, max(G, 1)), -1.2, -0.2, device),
            _u(gen, (n, max(G, 1)), 0.2, 0.6, device),
        )
        self.gh_k = kk
        self.gh_r = _u(gen, (n, max(G, 1)), 0.02 * s, 0.12 * s, device)
        self.gh_amp = _u(gen, (n, max(G, 1)), *sim.ghost_amplitude, device) * (G > 0)
        yy = torch.arange(h, device=device, dtype=torch.float32)
        xx = torch.arange(w, device=device, dtype=torch.float32)
        self.yy, self.xx = torch.meshgrid(yy, xx, indexing="ij")
        self.num_streaks = S

    # ---------------------------------------------------------------- rendering
    def light_xy(self, t_s: float) -> torch.Tensor:
        return self.l_xy + self.ego_v * t_s

    def flicker(self, t_s: torch.Tensor | float) -> torch.Tensor:
        """Source intensity factor L(t) in [1-m, 1], shape (n,)."""
        return 1 - self.f_depth + self.f_depth * torch.sin(math.pi * self.f_hz * t_s + self.f_phase) ** 2

    def background(self, t_s: float) -> torch.Tensor:
        """Background radiance (n, H, W) at time ``t_s`` (seconds)."""
        sh = self.ego_v * t_s  # (n, 2)
        x = self.xx[None, None] - sh[:, 0, None, None, None]
        y = self.yy[None, None] - sh[:, 1, None, None, None]
        arg = 2 * math.pi * (self.tex_kx[..., None, None] * x + self.tex_ky[..., None, None] * y) + self.tex_phase[..., None, None]
        tex = self.tex_base[:, None, None] + (self.tex_amp[..., None, None] * torch.sin(arg)).sum(1)
        c = self.sh_xy + (self.sh_v + self.ego_v[:, None]) * t_s  # (n, M, 2)
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

    def flare_profile(self, t_s: float) -> torch.Tensor:
        """Unmodulated flare radiance (n, H, W): halo + streaks + ghosts."""
        h, w = self.size
        lxy = self.light_xy(t_s)
        dx = self.xx[None] - lxy[:, 0, None, None]
        dy = self.yy[None] - lxy[:, 1, None, None]
        r = torch.sqrt(dx * dx + dy * dy)
        halo = self.halo_amp[:, None, None] / (1 + (r / self.halo_r[:, None, None]) ** 2) ** 1.5
        out = halo
        if self.num_streaks:
            S = self.num_streaks
            j = torch.arange(S, device=self.device, dtype=torch.float32)
            theta = self.st_theta0[:, None] + 2 * math.pi * j[None] / self.st_n[:, None].clamp_min(1)
            on = (j[None] < self.st_n[:, None]).float()
            phi = torch.atan2(dy, dx)[:, None]
            dth = torch.remainder(phi - theta[..., None, None] + math.pi, 2 * math.pi) - math.pi
            ray = torch.exp(-0.5 * (dth / self.st_width[..., None, None]) ** 2) * torch.exp(-r[:, None] / self.st_len[..., None, None])
            out = out + self.st_amp[:, None, None] * (on[..., None, None] * ray).sum(1)
        c = torch.tensor([w / 2, h / 2], device=self.device)
        gxy = c + self.gh_k[..., None] * (lxy[:, None] - c)  # (n, G, 2)
        gd = torch.sqrt((self.xx[None, None] - gxy[..., 0, None, None]) ** 2 + (self.yy[None, None] - gxy[..., 1, None, None]) ** 2)
        ghost = torch.sigmoid((self.gh_r[..., None, None] - gd) / 1.5) * self.gh_amp[..., None, None]
        out = out + ghost.sum(1)
        return out * self.has_flare[:, None, None]

    def light_mask(self, t_s: float, radius_sigmas: float = 3.0) -> torch.Tensor:
        """(n, H, W) bool: pixels within ``radius_sigmas`` sigma (at least 2 px) of the source."""
        lxy = self.light_xy(t_s)
        r2 = (self.xx[None] - lxy[:, 0, None, None]) ** 2 + (self.yy[None] - lxy[:, 1, None, None]) ** 2
        rad = (radius_sigmas * self.l_sigma).clamp_min(2.0)
        return r2 <= rad[:, None, None] ** 2


class DVSSensor:
    """Per-pixel log-intensity change detector (state for ``n`` scenes of size H x W)."""

    def __init__(self, sim: Any, n: int, size: tuple[int, int], gen: torch.Generator, device: torch.device) -> None:
        shape = (n, *size)
        c, sd = sim.contrast_threshold, sim.threshold_sigma
        self.c_on = (c + sd * torch.randn(shape, generator=gen, device=device)).clamp_min(0.05)
        self.c_off = (c + sd * torch.randn(shape, generator=gen, device=device)).clamp_min(0.05)
        self.refractory_us = float(sim.refractory_us)
        self.eps = sim.log_eps
        self.ref: torch.Tensor | None = None
        self.last_fire = torch.full(shape, -1e12, device=device)

    def reset(self, intensity: torch.Tensor) -> None:
        self.ref = torch.log(intensity + self.eps)

    def step(self, intensity: torch.Tensor, t_us: float, dt_us: float) -> torch.Tensor:
        """Signed event counts (n, H, W) int16 emitted during ``(t_us - dt_us, t_us]``."""
        logi = torch.log(intensity + self.eps)
        if self.ref is None:
            self.ref = logi
            return torch.zeros(logi.shape, dtype=torch.int16, device=logi.device)
        d = logi - self.ref
        thr = torch.where(d >= 0, self.c_on, self.c_off)
        n = torch.floor(d.abs() / thr)
        max_per_step = max(1.0, math.floor(dt_us / self.refractory_us)) if self.refractory_us > 0 else 1e9
        ready = (t_us - self.last_fire) >= self.refractory_us
        n = torch.where(ready, n.clamp(max=max_per_step), torch.zeros_like(n))
        sgn = torch.sign(d)
        self.ref = self.ref + sgn * n * thr
        self.last_fire = torch.where(n > 0, torch.full_like(self.last_fire, t_us), self.last_fire)
        return (sgn * n).to(torch.int16)


def simulate_counts(
    sim: Any,
    n: int,
    size: tuple[int, int],
    duration_us: int,
    gen: torch.Generator,
    device: torch.device,
    scenes: Scenes | None = None,
) -> dict[str, Any]:
    """Simulate ``n`` scenes for ``duration_us``; signed event counts per time step.

    Returns:
        dict with ``with_flare`` and ``without_flare`` (n, T, H, W) int16 signed counts per
        step of ``sim.dt_us`` (T = duration / dt), ``light_mask`` (n, H, W) bool at mid-time,
        and ``scenes``. A ``sim.warmup_us`` lead-in is simulated and discarded so the
        sensor's memory is settled when recording starts.
    """
    dt = int(sim.dt_us)
    if duration_us % dt:
        raise ValueError(f"simulate.dt_us={dt} must divide the duration {duration_us} µs")
    scenes = scenes or Scenes(sim, n, size, gen, device)
    dvs_f = DVSSensor(sim, n, size, gen, device)
    dvs_c = DVSSensor(sim, n, size, gen, device)
    dvs_c.c_on, dvs_c.c_off = dvs_f.c_on, dvs_f.c_off
    t_mid = duration_us * 0.5e-6
    light = scenes.light_profile(t_mid)
    flare = scenes.flare_profile(t_mid)
    warm = int(sim.warmup_us) // dt
    steps = duration_us // dt
    out_f = torch.zeros((n, steps, *size), dtype=torch.int16, device=device)
    out_c = torch.zeros_like(out_f)
    lam = torch.full((n, *size), sim.noise_rate_hz * dt * 1e-6, device=device)
    for i in range(-warm, steps + 1):
        t_us = i * dt
        t_s = t_us * 1e-6
        bg = scenes.background(t_s)
        lf = scenes.flicker(t_s)[:, None, None]
        clean = bg + light * lf
        with_flare = clean + flare * lf
        ef = dvs_f.step(with_flare, t_us, dt)
        ec = dvs_c.step(clean, t_us, dt)
        if i >= 1:
            if sim.noise_rate_hz > 0:  # background activity, the same events in both streams
                k = torch.poisson(lam, generator=gen)
                sign = torch.where(torch.rand(lam.shape, generator=gen, device=device) < 0.5, -1.0, 1.0)
                noise = (k * sign).to(torch.int16)
                ef = ef + noise
                ec = ec + noise
            out_f[:, i - 1] = ef
            out_c[:, i - 1] = ec
    return {"with_flare": out_f, "without_flare": out_c, "light_mask": scenes.light_mask(t_mid), "scenes": scenes}


def counts_to_voxel(counts: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Sum (n, T, H, W) step counts into (n, 1, B, H, W) voxel bins (T divisible by B)."""
    n, t, h, w = counts.shape
    if t % num_bins:
        raise ValueError(f"{t} simulation steps per segment are not divisible by num_bins={num_bins}")
    return counts.view(n, num_bins, t // num_bins, h, w).sum(2, dtype=torch.float32).unsqueeze(1)


def simulate_voxel_pairs(
    sim: Any, vox: Any, n: int, gen: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """One training batch: ``input`` (flare) and ``target`` (clean) voxels (n, 1, B, H, W) and
    ``light_mask`` (n, 1, 1, H, W) for one ``segment_duration_us`` segment each."""
    size = tuple(sim.sensor_size) if sim.sensor_size else tuple(vox.sensor_size)
    r = simulate_counts(sim, n, size, vox.segment_duration_us, gen, device)  # type: ignore[arg-type]
    return {
        "input": counts_to_voxel(r["with_flare"], vox.num_bins),
        "target": counts_to_voxel(r["without_flare"], vox.num_bins),
        "light_mask": r["light_mask"][:, None, None].float(),
    }


def counts_to_events(counts: torch.Tensor, dt_us: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Events (t µs from 0, x, y, p sign) of one scene's (T, H, W) step counts, time-sorted."""
    t_steps = counts.shape[0]
    ev = voxel_to_events(counts.float(), duration_us=t_steps * dt_us, generator=gen)
    ev.pop("segment")
    return ev


def write_pair_dirs(
    sim: Any,
    vox: Any,
    root: Path,
    n: int,
    *,
    split: str,
    start_index: int,
    seed: int,
    device: torch.device,
    batch: int = 4,
    compression_level: int = 1,
) -> list[tuple[Path, Path]]:
    """Write ``n`` file pairs in the seed's layout under ``root``.

    ``split="train"`` writes ``background_with_flare_events/`` and
    ``background_with_light_events/``; ``split="test"`` writes the ``*_test/`` siblings.
    File names follow the seed: ``composed_<index:05d>_bg_flare.h5`` and
    ``composed_<index:05d>_bg_light.h5``. Each file lasts ``sim.file_duration_us`` and
    carries ``sensor_size`` and the light source's mask geometry as attributes.
    """
    from neurotrain.tasks.deflare.io import EventWriter

    suffix = "_test" if split == "test" else ""
    d_f = root / f"background_with_flare_events{suffix}"
    d_c = root / f"background_with_light_events{suffix}"
    size = tuple(sim.sensor_size) if sim.sensor_size else tuple(vox.sensor_size)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out: list[tuple[Path, Path]] = []
    done = 0
    # two int16 count volumes (n, T, H, W) per batch: keep them under ~1 GiB
    per_scene = 4 * (sim.file_duration_us // sim.dt_us) * size[0] * size[1]
    batch = max(1, min(batch, (1 << 30) // max(per_scene, 1)))
    while done < n:
        m = min(batch, n - done)
        r = simulate_counts(sim, m, size, sim.file_duration_us, gen, device)  # type: ignore[arg-type]
        sc: Scenes = r["scenes"]
        lxy = sc.light_xy(sim.file_duration_us * 0.5e-6).cpu()
        lr = (3.0 * sc.l_sigma).clamp_min(2.0).cpu()
        for j in range(m):
            idx = start_index + done + j
            attrs = {
                "sensor_size": list(size),
                "light_x": float(lxy[j, 0]),
                "light_y": float(lxy[j, 1]),
                "light_radius_px": float(lr[j]),
                "flicker_hz": float(sc.f_hz[j]),
                "simulator": "neurotrain.deflare",
            }
            pf = d_f / f"composed_{idx:05d}_bg_flare.h5"
            pc = d_c / f"composed_{idx:05d}_bg_light.h5"
            for key, path in (("with_flare", pf), ("without_flare", pc)):
                ev = counts_to_events(r[key][j], int(sim.dt_us), gen)
                with EventWriter(path, attrs=attrs, compression_opts=compression_level) as w:
                    w.append(ev["t"], ev["x"], ev["y"], ev["p"])
            out.append((pf, pc))
        done += m
    return out


def light_mask_from_attrs(attrs: dict[str, Any], size: tuple[int, int]) -> torch.Tensor | None:
    """(H, W) bool mask of the light source stored by :func:`write_pair_dirs`, or ``None``."""
    if not all(k in attrs for k in ("light_x", "light_y", "light_radius_px")):
        return None
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r2 = (xx - float(attrs["light_x"])) ** 2 + (yy - float(attrs["light_y"])) ** 2
    return r2 <= float(attrs["light_radius_px"]) ** 2


def encode_counts(counts: torch.Tensor, dt_us: int, vox: Any) -> torch.Tensor:
    """Re-encode step counts through events (used by tests to check the file path)."""
    gen = torch.Generator(device=counts.device).manual_seed(0)
    ev = counts_to_events(counts, dt_us, gen)
    return events_to_voxel(
        ev["t"], ev["x"], ev["y"], ev["p"], num_bins=vox.num_bins, sensor_size=tuple(counts.shape[-2:]),
        duration_us=vox.segment_duration_us,
    )
