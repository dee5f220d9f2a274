"""DVS pixel model with per-event cause attribution, and the sensor's noise sources.

Pixel model as in v2e (Hu, Liu & Delbruck 2021, "v2e: From video frames to realistic DVS
events", CVPRW; defaults of its emulator): each pixel remembers a log intensity and emits
ON/OFF events each time the current value departs from it by the contrast threshold,
``C ~ N(contrast_threshold = 0.2, threshold_sigma = 0.03)`` drawn per pixel and polarity
(v2e's ``pos_thres = neg_thres = 0.2``, ``sigma_thres = 0.03``: the per-pixel threshold
mismatch); after an event the pixel is blind for a refractory period drawn per scene,
log-uniform in ``refractory_us`` = 25-500 µs. 500 µs is v2e's emulator default; the real
Prophesee gen3 recording in ``realdata/events/evt2_sample.raw`` has same-pixel event intervals
of 27 µs (1st percentile), 99 µs (median), 91 % under 500 µs, with 7-25 events per pixel
per 2.5 ms bin where an edge passes (median-99th percentile of occupied cells). A sensor
blind for 500 µs caps a pixel at 5 events per bin, so in training only the light source
made dense event clouds, and a network learned "dense core = source, sparser fringe =
glare" and dropped 20 % of that real, flare-free recording (the fringes of a fast-moving
dot).

* log response with saturation: ``log(I_s + eps)`` with ``I_s = I / (1 + I / I_sat)`` and
  ``I_sat = eps * 10^(dynamic_range_db / 20)``: 120 dB of dynamic range above the dark floor
  ``eps`` (DAVIS346 and Prophesee Gen4 datasheets: >120 dB; Lichtsteiner, Posch & Delbruck
  2008, IEEE JSSC: 120 dB), so a 10 000x source compresses instead of growing without bound.
* leak: the remembered level drifts down by ``leak_rate_hz * C_on`` per second (v2e's leak
  model, ``--leak_rate_hz`` default 0.1 Hz, per-pixel jitter ``leak_jitter_fraction`` 0.1),
  i.e. a stationary pixel emits ON events at ~0.1-0.2 Hz (``leak_rate_hz`` drawn per scene
  in 0.1-0.2 Hz, the issue's range).
* shot noise: Poisson ON/OFF events at ``shot_noise_rate_hz`` (drawn per scene up to 10 Hz,
  the issue's "up to ~10 Hz/px in the dark") times ``(f - 1) I01 + 1`` with ``f = 0.25``
  (v2e's ``SHOT_NOISE_INTEN_FACTOR``: the rate falls to 1/4 for the brightest pixels) and
  ``I01 = clamp(I, 0, 1)`` the linear intensity relative to a white wall.
* hot pixels: a fraction ``hot_pixel_fraction`` of pixels with an abnormal leak current that
  fire ON events at ``hot_pixel_rate_hz`` (both chosen, not measured: a few per 10^4 pixels
  at tens to hundreds of Hz is what hot pixels look like in published DVS recordings).

Cause attribution (the per-event truth): every step's change of log intensity is split
among its causes in proportion to their linear-intensity changes (the secant slope
``Δlog / ΔI`` is common to all of them, so the shares add up exactly), and accumulated per
pixel since its last event. An event takes the cause with the largest accumulated share in
its own direction; after an event the accumulators shrink with the remaining deviation.
"""

from __future__ import annotations

from typing import Any

import torch

# cause index -> event label (metrics.LABELS): scene, light, glare, streak, ghost, flicker, leak->noise
CAUSE_LABELS = (0, 1, 2, 3, 4, 5, 6)
SHOT_LABEL, HOT_LABEL = 6, 7


class DVSSensor:
    """Per-pixel log-intensity change detector with cause accumulators (``n`` scenes, H x W)."""

    def __init__(self, sim: Any, n: int, size: tuple[int, int], gen: torch.Generator, device: torch.device) -> None:
        shape = (n, *size)
        c, sd = sim.contrast_threshold, sim.threshold_sigma
        self.c_on = (c + sd * torch.randn(shape, generator=gen, device=device)).clamp_min(0.05)
        self.c_off = (c + sd * torch.randn(shape, generator=gen, device=device)).clamp_min(0.05)
        lo, hi = (float(v) for v in sim.refractory_us)
        u = torch.rand((n, 1, 1), generator=gen, device=device)
        self.refractory_us = lo * (hi / lo) ** u if hi > lo else torch.full((n, 1, 1), lo, device=device)
        self.eps = sim.log_eps
        self.i_sat = sim.log_eps * 10 ** (sim.dynamic_range_db / 20)
        lo, hi = sim.leak_rate_hz
        leak = lo + (hi - lo) * torch.rand((n, 1, 1), generator=gen, device=device)
        jit = 1 - sim.leak_jitter_fraction * torch.rand(shape, generator=gen, device=device)
        self.leak_per_s = leak * jit * self.c_on  # log units per second
        self.ref: torch.Tensor | None = None
        self.prev_i: torch.Tensor | None = None
        self.prev_log: torch.Tensor | None = None
        self.acc = torch.zeros((n, len(CAUSE_LABELS), *size), device=device)
        self.last_fire = torch.full(shape, -1e12, device=device)
        self.gen = gen

    def response(self, intensity: torch.Tensor) -> torch.Tensor:
        """Log photoreceptor output with saturation (see module doc)."""
        return torch.log(intensity / (1 + intensity / self.i_sat) + self.eps)

    def step(self, intensity: torch.Tensor, d_causes: torch.Tensor, t_us: float, dt_us: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance to ``t_us``: ``intensity`` (n, H, W) total radiance, ``d_causes`` (n, 6, H, W)
        its change since the last step split by cause. Returns signed event counts (n, H, W)
        int16 and their label (n, H, W) uint8."""
        logi = self.response(intensity)
        if self.ref is None:
            # a pixel's memorised level at the start is unknown: a uniform phase of its leak
            # cycle (d in [0, C_on)), so leak events are stationary from the first step; the
            # initial offset is attributed to no cause
            u = torch.rand(logi.shape, generator=self.gen, device=logi.device)
            self.ref, self.prev_i, self.prev_log = logi - u * self.c_on, intensity, logi
            z = torch.zeros(logi.shape, dtype=torch.int16, device=logi.device)
            return z, z.to(torch.uint8)
        assert self.prev_i is not None and self.prev_log is not None
        di = intensity - self.prev_i
        dlog = logi - self.prev_log
        small = di.abs() <= 1e-9 * (intensity + self.eps)
        deriv = 1.0 / ((intensity + self.eps) * (1 + intensity / self.i_sat) ** 2)  # d response / dI (approx.)
        slope = torch.where(small, deriv, dlog / torch.where(small, torch.ones_like(di), di))
        leak = self.leak_per_s * (dt_us * 1e-6)
        self.ref = self.ref - leak
        self.acc[:, :-1] += d_causes * slope[:, None]
        self.acc[:, -1] += leak
        self.prev_i, self.prev_log = intensity, logi
        d = logi - self.ref
        thr = torch.where(d >= 0, self.c_on, self.c_off)
        n = torch.floor(d.abs() / thr)
        # events one step can hold: one per refractory period (at least one; no cap without one)
        max_per_step = torch.where(
            self.refractory_us > 0, torch.floor(dt_us / self.refractory_us.clamp_min(1e-9)).clamp_min(1.0), torch.full_like(self.refractory_us, 1e9)
        )
        ready = (t_us - self.last_fire) >= self.refractory_us
        n = torch.where(ready, torch.minimum(n, max_per_step), torch.zeros_like(n))
        sgn = torch.sign(d)
        label = torch.argmax(self.acc * sgn[:, None], dim=1).to(torch.uint8)
        fired = n > 0
        new_ref = self.ref + sgn * n * thr
        # the causes' shares shrink with the deviation that is left after the events
        rest = torch.where(fired, (logi - new_ref) / torch.where(fired, d, torch.ones_like(d)), torch.ones_like(d))
        self.acc *= rest.clamp(0, 1)[:, None]
        self.ref = new_ref
        self.last_fire = torch.where(fired, torch.full_like(self.last_fire, t_us), self.last_fire)
        return (sgn * n).to(torch.int16), label


class NoiseSources:
    """Shot noise and hot pixels (see module doc) for ``n`` scenes."""

    def __init__(self, sim: Any, n: int, size: tuple[int, int], gen: torch.Generator, device: torch.device) -> None:
        lo, hi = sim.shot_noise_rate_hz
        self.shot_hz = (lo + (hi - lo) * torch.rand((n, 1, 1), generator=gen, device=device))
        self.bright_factor = sim.shot_noise_bright_factor
        self.hot = torch.rand((n, *size), generator=gen, device=device) < sim.hot_pixel_fraction
        hlo, hhi = sim.hot_pixel_rate_hz
        self.hot_hz = torch.where(self.hot, hlo + (hhi - hlo) * torch.rand((n, *size), generator=gen, device=device), torch.zeros((n, *size), device=device))
        self.gen = gen

    def step(self, intensity: torch.Tensor, dt_us: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed shot-noise counts and hot-pixel (ON) counts (n, H, W) int16 for one step."""
        dt = dt_us * 1e-6
        i01 = intensity.clamp(0, 1)
        lam = self.shot_hz * ((self.bright_factor - 1) * i01 + 1) * dt
        k = torch.poisson(lam, generator=self.gen)
        sign = torch.where(torch.rand(lam.shape, generator=self.gen, device=lam.device) < 0.5, -1.0, 1.0)
        hot = torch.poisson(self.hot_hz * dt, generator=self.gen)
        return (k * sign).to(torch.int16), hot.to(torch.int16)
