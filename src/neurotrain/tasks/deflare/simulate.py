"""Labelled flare event streams, simulated in batches on the device.

A scene (:mod:`scene`: background, a 10x-10 000x light source, its glare halo, streaks and
ghosts, all rendered at every time step of ``dt_us``) is seen by a DVS sensor
(:mod:`sensor`: v2e pixel model with threshold mismatch, refractory period, saturation,
leak, shot noise and hot pixels). Every event carries its cause as a label
(:data:`metrics.LABELS`: scene, light, glare, streak, ghost, flicker, noise, hot pixel):

* the causes of an intensity change at a pixel between two steps are the scene's change
  ``ΔS``, the source's ``Δ(L P)``, the flare's motion ``L(t-dt) ΔF_k`` for each flare term
  ``k`` (glare, streak, ghost) and the flare's flicker ``ΔL F(t)`` (``L`` the source's
  modulation); they add up to the total change exactly;
* sensor noise events (shot noise, hot pixels) are labelled by their source, leak events
  through the pixel's leak accumulator.

Targets: the clean stream is the input minus its flare events (same events, same
timestamps), so the seed's pair of folders ``background_with_flare_events`` /
``background_with_light_events`` is consistent with the per-event truth, and a training
target voxel is exactly what a perfect keep/drop decision leaves. Events get integer
timestamps uniform within their step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.tasks.deflare.metrics import FLARE_LABELS
from neurotrain.tasks.deflare.scene import Scenes
from neurotrain.tasks.deflare.sensor import HOT_LABEL, SHOT_LABEL, DVSSensor, NoiseSources
from neurotrain.tasks.deflare.voxel import events_to_voxel

__all__ = ["Scenes", "simulate_events", "simulate_voxel_pairs", "events_to_pair_voxels", "write_pair_dirs", "light_mask_from_attrs", "is_flare"]


def is_flare(label: torch.Tensor) -> torch.Tensor:
    """Bool mask of flare labels (glare, streak, ghost, flicker)."""
    out = torch.zeros(label.shape, dtype=torch.bool, device=label.device)
    for k in FLARE_LABELS:
        out |= label == k
    return out


def _sparse(counts: torch.Tensor, label: torch.Tensor | int, step: int) -> tuple[torch.Tensor, ...]:
    """(scene, pixel, step, count, label) of the nonzero cells of (n, H, W) counts."""
    nz = counts.reshape(counts.shape[0], -1).nonzero()
    b, pix = nz[:, 0], nz[:, 1]
    c = counts.reshape(counts.shape[0], -1)[b, pix]
    lab = label.reshape(label.shape[0], -1)[b, pix] if isinstance(label, torch.Tensor) else torch.full_like(b, label)
    return b, pix, torch.full_like(b, step), c, lab.to(torch.uint8)


def simulate_events(
    sim: Any, n: int, size: tuple[int, int], duration_us: int, gen: torch.Generator, device: torch.device,
    scenes: Scenes | None = None,
) -> dict[str, Any]:
    """Simulate ``n`` scenes for ``duration_us`` µs.

    Returns a dict of 1-D tensors sorted by (scene ``b``, ``t``): ``b``, ``t`` (int64 µs from
    0), ``x``, ``y`` (int64), ``p`` (int8 sign), ``label`` (uint8); plus ``light_mask``
    (n, H, W) bool at mid-time and ``scenes``. A ``sim.warmup_us`` lead-in settles the
    sensor's memory and is discarded.
    """
    dt = int(sim.dt_us)
    if duration_us % dt:
        raise ValueError(f"simulate.dt_us={dt} must divide the duration {duration_us} µs")
    h, w = size
    scenes = scenes or Scenes(sim, n, size, gen, device)
    dvs = DVSSensor(sim, n, size, gen, device)
    noise = NoiseSources(sim, n, size, gen, device)
    warm, steps = int(sim.warmup_us) // dt, duration_us // dt
    parts: list[tuple[torch.Tensor, ...]] = []
    prev: dict[str, torch.Tensor] | None = None
    for i in range(-warm, steps + 1):
        t_us = i * dt
        r = scenes.render(t_us * 1e-6)
        lf = r["L"]
        flare_now = r["glare_raw"] + r["streak_raw"] + r["ghost_raw"]
        total = r["scene"] + r["light"] + lf * flare_now
        if prev is None:
            d = torch.zeros((n, 6, h, w), device=device)
        else:
            pl = prev["L"]
            d = torch.stack([
                r["scene"] - prev["scene"],
                r["light"] - prev["light"],
                pl * (r["glare_raw"] - prev["glare_raw"]),
                pl * (r["streak_raw"] - prev["streak_raw"]),
                pl * (r["ghost_raw"] - prev["ghost_raw"]),
                (lf - pl) * flare_now,
            ], 1)
        prev = r
        ev, lab = dvs.step(total, d, t_us, dt)
        if i >= 1:
            shot, hot = noise.step(total, dt)
            parts.append(_sparse(ev, lab, i - 1))
            parts.append(_sparse(shot, SHOT_LABEL, i - 1))
            parts.append(_sparse(hot, HOT_LABEL, i - 1))
    b, pix, st, c, lab = (torch.cat([p[k] for p in parts]) for k in range(5))
    cnt = c.abs().long()
    total_events = int(cnt.sum())
    rep = lambda a: torch.repeat_interleave(a, cnt, output_size=total_events)  # noqa: E731
    b, pix, st, sgn, lab = rep(b), rep(pix), rep(st), rep(torch.sign(c)), rep(lab)
    u = torch.rand(total_events, generator=gen, device=device, dtype=torch.float64)
    t = st * dt + torch.minimum((u * dt).long(), torch.tensor(dt - 1, device=device))
    order = torch.argsort(b * (steps * dt + 1) + t, stable=True)
    return {
        "b": b[order], "t": t[order], "x": (pix % w)[order], "y": (pix // w)[order],
        "p": sgn[order].to(torch.int8), "label": lab[order],
        "light_mask": scenes.light_mask(duration_us * 0.5e-6), "scenes": scenes,
    }


def events_to_pair_voxels(ev: dict[str, Any], n: int, size: tuple[int, int], vox: Any) -> dict[str, torch.Tensor]:
    """``input`` (all events) and ``target`` (all but flare) voxels (n, 1, B, H, W) of one
    ``segment_duration_us`` segment per scene, and ``light_mask`` (n, 1, 1, H, W)."""
    D, B = vox.segment_duration_us, vox.num_bins
    starts = torch.zeros(n, dtype=torch.int64, device=ev["t"].device)
    keep = ~is_flare(ev["label"])

    def enc(m: torch.Tensor | None) -> torch.Tensor:
        sl = slice(None) if m is None else m
        return events_to_voxel(
            ev["t"][sl], ev["x"][sl], ev["y"][sl], ev["p"][sl], num_bins=B, sensor_size=size, duration_us=D,
            t_start=starts, segment=ev["b"][sl], num_segments=n, method=vox.method,
        ).unsqueeze(1)

    return {"input": enc(None), "target": enc(keep), "light_mask": ev["light_mask"][:, None, None].float()}


def simulate_voxel_pairs(sim: Any, vox: Any, n: int, gen: torch.Generator, device: torch.device, return_events: bool = False) -> dict[str, Any]:
    """One training batch: ``input`` (with flare) and ``target`` (flare events removed) voxels
    (n, 1, B, H, W) and ``light_mask`` (n, 1, 1, H, W); with ``return_events`` also the
    labelled events under ``events``."""
    size = tuple(sim.sensor_size) if sim.sensor_size else tuple(vox.sensor_size)
    ev = simulate_events(sim, n, size, vox.segment_duration_us, gen, device)  # type: ignore[arg-type]
    out: dict[str, Any] = events_to_pair_voxels(ev, n, size, vox)  # type: ignore[arg-type]
    if return_events:
        out["events"] = ev
    return out


def write_pair_dirs(
    sim: Any, vox: Any, root: Path, n: int, *, split: str, start_index: int, seed: int, device: torch.device,
    batch: int = 4, compression_level: int = 1,
) -> list[tuple[Path, Path]]:
    """Write ``n`` file pairs in the seed's layout under ``root``.

    ``split="train"`` writes ``background_with_flare_events/`` and
    ``background_with_light_events/``; ``split="test"`` the ``*_test/`` siblings (any other
    split name, e.g. ``"val"``, gives ``*_<split>/``). Names follow the seed:
    ``composed_<index:05d>_bg_flare.h5`` / ``composed_<index:05d>_bg_light.h5``. The flare
    file holds every event plus ``events/label`` (uint8, :data:`metrics.LABELS`); the light
    file holds the same events minus the flare ones. Each file lasts ``sim.file_duration_us``
    and carries ``sensor_size`` and the light source's geometry as attributes.
    """
    from neurotrain.tasks.deflare.h5write import EventWriter

    suffix = {"train": ""}.get(split, f"_{split}")
    d_f = root / f"background_with_flare_events{suffix}"
    d_c = root / f"background_with_light_events{suffix}"
    size = tuple(sim.sensor_size) if sim.sensor_size else tuple(vox.sensor_size)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out: list[tuple[Path, Path]] = []
    done = 0
    # sensor state ~ 12 float planes per scene: keep a batch under ~1 GiB
    batch = max(1, min(batch, (1 << 30) // max(48 * size[0] * size[1], 1)))
    while done < n:
        m = min(batch, n - done)
        ev = simulate_events(sim, m, size, sim.file_duration_us, gen, device)  # type: ignore[arg-type]
        sc: Scenes = ev["scenes"]
        lxy = sc.light_xy(sim.file_duration_us * 0.5e-6).cpu()
        lr = (3.0 * sc.l_sigma).clamp_min(2.0).cpu()
        cols = {k: ev[k].cpu().numpy() for k in ("b", "t", "x", "y", "p", "label")}
        bounds = np.searchsorted(cols["b"], np.arange(m + 1))
        for j in range(m):
            idx = start_index + done + j
            attrs = {
                "sensor_size": list(size), "light_x": float(lxy[j, 0]), "light_y": float(lxy[j, 1]),
                "light_radius_px": float(lr[j]), "flicker_hz": float(sc.f_hz[j]),
                "light_contrast": float(sc.l_peak[j] / sc.tex_base[j]), "simulator": "neurotrain.deflare",
                "labels": "0 scene, 1 light, 2 glare, 3 streak, 4 ghost, 5 flicker, 6 noise, 7 hot_pixel",
            }
            a, b = int(bounds[j]), int(bounds[j + 1])
            e = {k: v[a:b] for k, v in cols.items()}
            clean = ~np.isin(e["label"], np.array(FLARE_LABELS))
            pf = d_f / f"composed_{idx:05d}_bg_flare.h5"
            pc = d_c / f"composed_{idx:05d}_bg_light.h5"
            for path, m_ in ((pf, slice(None)), (pc, clean)):
                with EventWriter(path, attrs=attrs, compression_opts=compression_level, extra_columns={"label": np.uint8}) as wr:
                    wr.append(e["t"][m_], e["x"][m_], e["y"][m_], e["p"][m_], extra={"label": e["label"][m_]})
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
