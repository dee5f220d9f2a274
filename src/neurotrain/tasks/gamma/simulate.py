"""Physics simulator of scintillator (LYSO/NaI/CsI/LaBr3) input spectra and HPGe target spectra of one source.

Pipeline (batched torch on the training device; units keV, cm, counts). Rooms: ``response.py`` (Monte Carlo
detector responses), ``hpge.py`` (the germanium detector), ``cascade.py`` (coincidence summing, pile-up),
``scene.py`` (which lines), ``resolution.py`` (grids, resolution laws, broadening).

1. **Responses** (once per geometry, cached): the scintillator of ``simulate.detector`` and, with
   ``simulate.target: hpge``, the germanium crystal of ``simulate.hpge``, each by the same photon transport from
   its own seed. For LYSO also the intrinsic Lu-176 spectrum (input only).
2. **Lines of a spectrum** (``scene.py``): library sources, random lines, environment (K-40, Th-232, Ra-226) plus
   a scattered E^-1 continuum, and for LYSO the Lu-176 activity of 37 Bq/g times the crystal mass (~39 Bq/g of
   LYSO; Alva-Sanchez et al., Sci. Rep. 8, 17310 (2018)). Both detectors receive the same photons per decay
   through their front faces (the HPGe at the distance where it subtends the scintillator's solid angle).
3. **Per detector**: full-energy peaks and continuum from its response, true-coincidence summing of cascades with
   its own efficiencies (``cascade.py``; source at ``source_distance_cm``), random pile-up at its own count rate
   and resolving time (first order).
4. **Input**: scintillator deposits broadened with FWHM(E) = r662 x 662 keV x (E / 662)^p (r662 8-12 % for LYSO,
   p 0.45-0.65), gain / offset jitter, Poisson counts with 1e3-1e7 recorded in total.
5. **Target** (noiseless expected counts, in the input's calibration): ``hpge``: the germanium detector's own
   spectrum of the same source and live time, at FWHM^2 = noise^2 + 2.355^2 F w E + (c E)^2 (``hpge.py``);
   ``resolution_only``: the scintillator's deposits at the ``hpge_fwhm_anchors`` law (the former target: keeps
   the scintillator's continuum, escapes and Lu-176).

Per batch only matrix products, cumulative-sum resampling, FFT convolutions and Poisson draws run: the responses,
resolution matrices and summing tables are precomputed (``simulate_throughput`` times it).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from neurotrain.tasks.gamma import cascade, hpge
from neurotrain.tasks.gamma.resolution import (  # noqa: F401  (public names of this module)
    apply_band, batched_interp, bin_lines, broaden, channel_centers, channel_edges, gaussian_lines, hpge_coefficients, hpge_fwhm,
    measured_energy, resample, resolution_band, resolution_matrix, room_return, scint_fwhm, true_energy,
)
from neurotrain.tasks.gamma.response import (  # noqa: F401
    _MEMO, RESPONSE_VERSION, Response, build_response, default_cache_dir, get_response, line_deposit_energies,
    response_key, smooth_deposits, smooth_response,
)
from neurotrain.tasks.gamma.scene import Scene, _log_uniform, _uniform, draw_lines, merge_lines  # noqa: F401

_RES_MATRIX: dict[tuple[str, tuple[float, float, float], str], torch.Tensor] = {}


#: the public names (several live in response.py / resolution.py / scene.py and are re-exported here)
__all__ = [
    "Response",
    "Scene",
    "batched_interp",
    "bin_lines",
    "broaden",
    "build_response",
    "channel_centers",
    "channel_edges",
    "default_cache_dir",
    "gaussian_lines",
    "get_response",
    "hpge_coefficients",
    "hpge_fwhm",
    "line_deposit_energies",
    "measured_energy",
    "merge_lines",
    "resample",
    "resolution_matrix",
    "response_key",
    "room_matrix",
    "room_return",
    "scint_fwhm",
    "simulate_batch",
    "simulate_throughput",
    "smooth_deposits",
    "smooth_response",
    "target_band",
    "target_matrix",
    "true_energy",
    "RESPONSE_VERSION",
    "_MEMO",
]

_ROOM: dict[tuple[int, float, float, str], torch.Tensor] = {}


def room_matrix(edges: torch.Tensor) -> torch.Tensor:
    """(N, N) :func:`room_return` of one photon at each channel centre (cached per grid)."""
    key = (edges.numel(), float(edges[0]), float(edges[-1]), str(edges.device))
    if key not in _ROOM:
        _ROOM[key] = room_return((0.5 * (edges[1:] + edges[:-1])).unsqueeze(0), edges)[0]
    return _ROOM[key]


_BAND: dict[tuple[str, tuple[float, float, float], str], tuple[torch.Tensor, int]] = {}


def target_band(resp: Response, coeffs: tuple[float, float, float]) -> tuple[torch.Tensor, int]:
    """:func:`resolution.resolution_band` of the target law on ``resp``'s grid (cached): the target's resolution
    costs (2h+1) N per spectrum (h ~ 9 at 4096 channels over 3 MeV), not an N^2 matrix product."""
    key = (resp.key, tuple(coeffs), str(resp.edges.device))
    if key not in _BAND:
        _BAND[key] = resolution_band(resp.edges, hpge_fwhm(resp.incident, coeffs))
    return _BAND[key]


_DERIVED: dict[tuple[str, str, float, bool], dict[str, Any]] = {}


def _derived(resp: Response, env_share: float, room: bool) -> dict[str, Any]:
    """Per-response constants of every batch, computed once: total detection probability, the environment's
    scattered E^-1 continuum (30-2614.5 keV, ``env_continuum_share`` photons per line photon) and its deposits,
    the Lu-176 deposits per decay, and with room return the detection probability of scattered photons."""
    key = (resp.key, str(resp.edges.device), float(env_share), room)
    if key not in _DERIVED:
        centers = resp.incident
        total = resp.total()
        env = (centers.clamp_min(30.0) ** -1.0) * (centers <= 2614.5)
        env = env / env.sum() * env_share
        d: dict[str, Any] = {
            "det_total": total, "env_cont_inc": env, "env_cont_det": float((env * total).sum()),
            "env_vec": env @ resp.continuum + env * resp.full_energy, "lu_det": float(resp.lu176.sum()),
        }
        if room:
            d["rr_det"] = room_matrix(resp.edges) @ total
        _DERIVED[key] = d
    return _DERIVED[key]


def target_matrix(resp: Response, coeffs: tuple[float, float, float]) -> torch.Tensor:
    """(N, N) resolution matrix of the target law on ``resp``'s grid (cached)."""
    key = (resp.key, tuple(coeffs), str(resp.edges.device))
    if key not in _RES_MATRIX:
        _RES_MATRIX[key] = resolution_matrix(resp.edges, hpge_fwhm(resp.incident, coeffs))
    return _RES_MATRIX[key]


def _detector(resp, lines_e, lines_w, scat, k_env, env_vec, sc, g, summing):  # noqa: ANN001, ANN202
    """Expected deposits of one detector: (peak areas (B, L), sum-line areas (B, Q), continuum (B, N))."""
    b, n = lines_e.shape[0], resp.incident.numel()
    centers, edges = resp.incident, resp.edges
    fe = batched_interp(lines_e, centers, resp.full_energy)
    idx = torch.bucketize(lines_e, edges).sub(1).clamp(0, n - 1)
    inc = torch.zeros(b, n, device=lines_e.device).scatter_add_(1, idx, lines_w)
    cont = (inc + scat) @ resp.continuum + scat * resp.full_energy + k_env * env_vec.unsqueeze(0)
    area = lines_w * fe
    sum_area = torch.zeros_like(sc["w"])
    if summing and sc["tables"] is not None:
        t = sc["tables"]
        w = sc["w"] * g  # (B, Q) coincident pairs reaching the face with both photons
        gi = sc["idx"]
        p1, p2, t1, t2 = t.eps_p1[gi], t.eps_p2[gi], t.eps_t1[gi], t.eps_t2[gi]
        for slot, loss in ((sc["slot1"], w * p1 * t2), (sc["slot2"], w * p2 * t1)):
            area = area - torch.zeros_like(area).scatter_add_(1, slot.clamp_min(0), loss * (slot >= 0))
        sum_area = w * p1 * p2
        w_glob = torch.zeros(b, t.continuum.shape[0], device=w.device).scatter_add_(1, gi, w)
        cont = cont + w_glob @ t.continuum
    return area.clamp_min(0), sum_area, cont


def simulate_batch(
    cfg: Any, batch_size: int, generator: torch.Generator, device: torch.device, scene: Scene | None = None
) -> dict[str, torch.Tensor]:
    """One batch of (input, target) spectra. See the module docstring for the physics.

    Returns a dict of tensors with leading dimension ``batch_size``:

    * ``input`` (B, 3, N): counts / scale, log1p of that, and the energy axis E / e_max.
    * ``target`` (B, 1, N): expected target-detector counts / scale (``simulate.target``).
    * ``fwhm_params`` (B, 2): the input law (r662, power) - the network's conditioning.
    * ``scale`` (B, 1): counts per unit of the normalised spectra (mean input counts per channel).
    * ``counts`` (B, N): the Poisson input counts; ``clean_input`` (B, N): their expectation;
      ``clean_target`` (B, N): the target in counts.
    * ``line_energy``, ``line_area``, ``line_area_input``, ``line_mask``, ``line_detectable`` (B, L):
      true lines (sum peaks included when summing is on) at the energies the spectrum's (jittered) calibration
      shows them (keV), expected net full-energy counts in target (/ scale) and input (counts), validity and
      detectability.
    * ``lu_fraction``, ``live_time_s``, ``pileup_input``, ``pileup_target`` (B,): Lu-176 share, live time,
      pile-up probabilities r tau; ``calibration`` (B, 2): gain and offset (keV), measured = gain x true + offset.

    With ``simulate.train_crystals`` set, each training batch (no ``scene``) uses one crystal drawn from it.
    """
    sim = cfg.simulate
    scene = scene or Scene()
    b, gen = batch_size, generator
    if scene.crystal is not None or (scene.sources is None and sim.train_crystals):
        pool = [scene.crystal] if scene.crystal is not None else list(sim.train_crystals)
        pick = int(torch.randint(0, len(pool), (1,), generator=gen, device=device).item())
        sim = sim.model_copy(update={"detector": sim.detector.model_copy(update={"crystal": pool[pick]})})
    resp = get_response(sim, device)
    hp = sim.target == "hpge"
    resp_t = hpge.get_hpge_response(sim, device) if hp else resp
    edges, centers = resp.edges, resp.incident
    n = centers.numel()
    width = float(edges[1] - edges[0])
    e_lo, e_hi = sim.e_min_kev, sim.e_max_kev

    sl = draw_lines(sim, scene, b, gen, device)
    lines_e = torch.cat([sl.src_e, sl.env_e], 1)

    # photons scattered once by the surroundings (simulate.room_return_fraction): extra continuum, from the
    # room-return matrix of the channel centres (a line moved to its channel centre: < 1 channel on a continuum)
    f_lo, f_hi = sim.room_return_fraction
    room = f_hi > 0
    dv = _derived(resp, sim.env_continuum_share, room)
    det_total = dv["det_total"]
    if room:
        frac = (_uniform(f_lo, f_hi, b, gen, device) if f_hi > f_lo else torch.full((b,), f_lo, device=device)).view(b, 1)
        rr_mat, rr_det = room_matrix(edges), dv["rr_det"]

    def line_det(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        d = batched_interp(e, centers, det_total)
        if room:
            d = d + frac * batched_interp(e, centers, rr_det)
        return (w * d).sum(1).clamp_min(1e-12)

    src_det = line_det(sl.src_e, sl.src_w)
    env_line_det = line_det(sl.env_e, sl.env_w)
    env_cont_det = dv["env_cont_det"]

    # ---------------- rates (counts per second) and live time of the input detector
    env_on = sim.environment if scene.environment is None else scene.environment
    src_rate = _log_uniform(sim.source_rate_cps[0], sim.source_rate_cps[1], b, gen, device)
    env_rate = torch.full((b,), sim.env_rate_cps_per_cm3 * resp.volume_cm3 if env_on else 0.0, device=device)
    lu_det = dv["lu_det"]
    lu_rate = torch.full((b,), sim.lu176_bq_per_g * resp.mass_g * lu_det, device=device)
    total_rate = src_rate + env_rate + lu_rate
    total = torch.full((b,), float(scene.counts), device=device) if scene.counts is not None else _log_uniform(
        sim.counts_range[0], sim.counts_range[1], b, gen, device)
    rate_in = torch.full_like(total_rate, sim.pileup_rate_cps) if sim.pileup_rate_cps else total_rate
    p_in = rate_in * sim.detector.pileup_resolving_time_us * 1e-6 if sim.pileup else torch.zeros_like(total_rate)
    live = total / (total_rate * (1 - p_in))  # recorded counts = requested total after the pile-up losses

    k_src = (src_rate * live / src_det).unsqueeze(1)
    k_env = (env_rate * live).unsqueeze(1) / (env_line_det + env_cont_det).unsqueeze(1)
    lines_w = torch.cat([sl.src_w * k_src, sl.env_w * k_env], 1)  # photons reaching the crystal face
    if room:
        idx = torch.bucketize(lines_e, edges).sub(1).clamp(0, n - 1)
        scat = frac * (torch.zeros(b, n, device=device).scatter_add_(1, idx, lines_w) @ rr_mat)
    else:
        scat = torch.zeros(b, n, device=device)
    g = hpge.solid_angle_fraction(sim.source_distance_cm, sim.detector.radius_cm)
    # a cascade sums only when both photons are on the grid (the responses know no other energies)
    on_grid = (sl.pair_e1 >= e_lo) & (sl.pair_e1 < e_hi) & (sl.pair_e2 >= e_lo) & (sl.pair_e2 < e_hi)
    sc: dict[str, Any] = {"w": sl.pair_w * k_src * on_grid, "idx": sl.pair_idx, "slot1": sl.slot1, "slot2": sl.slot2,
                          "tables": None}
    summing = sim.coincidence_summing and bool(sl.cascades)
    sum_e = sl.pair_e1 + sl.pair_e2

    def per_detector(r: Response) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sc["tables"] = cascade.summing_tables(r, sl.cascades) if summing else None
        env_vec = _derived(r, sim.env_continuum_share, room)["env_vec"] if env_on else torch.zeros(n, device=device)
        return _detector(r, lines_e, lines_w, scat, k_env, env_vec, sc, g, summing)

    area_in, sum_in, dep_in = per_detector(resp)
    if lu_det > 0:
        dep_in = dep_in + (lu_rate * live / lu_det).unsqueeze(1) * resp.lu176.unsqueeze(0)
    if hp:
        area_t, sum_t, dep_t = per_detector(resp_t)
    else:
        area_t, sum_t, dep_t = area_in, sum_in, dep_in
    all_e = torch.cat([lines_e, sum_e], 1)
    inside = (all_e >= e_lo) & (all_e < e_hi)
    all_in, all_t = torch.cat([area_in, sum_in], 1) * inside, torch.cat([area_t, sum_t], 1) * inside

    # ---------------- pile-up (first order) on each detector's deposits, lines included
    peaks_in = bin_lines(all_e, all_in, edges)
    rec_in = cascade.pileup(dep_in + peaks_in, p_in, e_lo, width) if sim.pileup else dep_in + peaks_in
    all_in = all_in * (1 - 2 * p_in).unsqueeze(1)
    if hp:
        rate_t = torch.full_like(total_rate, sim.pileup_rate_cps) if sim.pileup_rate_cps else (
            (dep_t.sum(1) + all_t.sum(1)) / live)
        p_t = rate_t * sim.hpge.pileup_resolving_time_us * 1e-6 if sim.pileup else torch.zeros_like(p_in)
    else:
        p_t = p_in
    peaks_t = bin_lines(all_e, all_t, edges)
    piled_t = cascade.pileup(dep_t + peaks_t, p_t, e_lo, width) - (1 - 2 * p_t).unsqueeze(1) * peaks_t if sim.pileup else dep_t
    all_t = all_t * (1 - 2 * p_t).unsqueeze(1)

    # ---------------- input: broadened with the scintillator law, gain/offset jitter
    r662 = torch.full((b,), scene.fwhm_662, device=device) if scene.fwhm_662 is not None else _uniform(*sim.fwhm_662_range, b, gen, device)
    power = torch.full((b,), scene.power, device=device) if scene.power is not None else _uniform(*sim.power_range, b, gen, device)
    jit = scene.jitter
    gain = 1 + sim.gain_jitter * (2 * torch.rand(b, generator=gen, device=device) - 1) if jit and sim.gain_jitter > 0 else torch.ones(b, device=device)
    offset = sim.offset_jitter_kev * (2 * torch.rand(b, generator=gen, device=device) - 1) if jit and sim.offset_jitter_kev > 0 else torch.zeros(b, device=device)
    fwhm_in = scint_fwhm(centers.unsqueeze(0), r662.unsqueeze(1), power.unsqueeze(1))
    true_edges = (edges.unsqueeze(0) - offset.unsqueeze(1)) / gain.unsqueeze(1)
    clean_in = broaden(rec_in, edges, fwhm_in, true_edges).clamp_min(0)
    meas_e = all_e * gain.unsqueeze(1) + offset.unsqueeze(1)

    # ---------------- target: fixed law as one matrix product, then the input's calibration
    coeffs = hpge.target_fwhm_coefficients(sim)
    tg_cont = resample(apply_band(piled_t, *target_band(resp_t, coeffs)), edges, true_edges)
    tg_peaks = gaussian_lines(meas_e, all_t, hpge_fwhm(all_e, coeffs) * gain.unsqueeze(1), edges)
    clean_t = (tg_cont + tg_peaks).clamp_min(0)

    counts = torch.poisson(clean_in, generator=gen)
    scale = (counts.sum(1, keepdim=True) / n).clamp_min(1e-6)
    x = counts / scale
    axis = (centers / e_hi).unsqueeze(0).expand(b, -1)
    inp = torch.stack([x, torch.log1p(x), axis], 1)

    # ---------------- line bookkeeping for the metrics (padded to max_lines, strongest first)
    win = scint_fwhm(all_e, r662.unsqueeze(1), power.unsqueeze(1))
    lo_idx = torch.bucketize(meas_e - win, edges).clamp(1, n) - 1
    hi_idx = torch.bucketize(meas_e + win, edges).clamp(1, n) - 1
    cum = torch.cat([torch.zeros(b, 1, device=device), torch.cumsum(clean_in, 1)], 1)
    under = (cum.gather(1, hi_idx + 1) - cum.gather(1, lo_idx) - all_in).clamp_min(0)  # continuum under the peak
    detectable = (all_in >= sim.detect_sigma * torch.sqrt(under + all_in).clamp_min(1.0)) & (all_in >= 10)
    # one grouping for both detectors (a line the germanium's dead layer hides is no truth line of the target)
    m_e, m_a, m_d, m_ai = merge_lines(meas_e, all_t * inside, detectable & inside, sim.line_merge_kev, all_in * inside)
    lm = sim.max_lines
    order = torch.argsort(m_a, dim=1, descending=True)[:, :lm]
    le, la, ld, lai = (t.gather(1, order) for t in (m_e, m_a, m_d, m_ai))
    mask = la > 0
    pad = lm - le.shape[1]
    if pad > 0:
        le, la, ld, lai, mask = (torch.nn.functional.pad(t, (0, pad)) for t in (le, la, ld, lai, mask))
    return {
        "input": inp.float(),
        "target": (clean_t / scale).unsqueeze(1).float(),
        "fwhm_params": torch.stack([r662, power], 1).float(),
        "scale": scale.float(),
        "counts": counts.float(),
        "clean_input": clean_in.float(),
        "clean_target": clean_t.float(),
        "line_energy": le.float(),
        "line_area": (la / scale).float(),
        "line_area_input": lai.float(),
        "line_mask": mask,
        "line_detectable": ld & mask,
        "lu_fraction": (lu_rate / total_rate).float(),
        "live_time_s": live.float(),
        "pileup_input": p_in.float(),
        "pileup_target": p_t.float(),
        "calibration": torch.stack([gain, offset], 1).float(),
    }


def simulate_throughput(cfg: Any, batch_size: int = 1024, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """Training spectra per second of :func:`simulate_batch` at ``cfg``'s size on ``device``: the responses and
    tables of every ``train_crystals`` entry are built first, then one warm-up batch and ``repeats`` timed batches
    (synchronised on CUDA).

    GPU measurement (H200, 4096 channels, the train.yaml simulator; the photon count only sets the untimed
    response build)::

        python -c "from neurotrain.config import load_config; from neurotrain.tasks.gamma.simulate import \\
            simulate_throughput as t; print(t(load_config('configs/gamma/train.yaml', \\
            ['simulate.response_photons=4000']), 1024, 'cuda', 20))"
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        for crystal in cfg.simulate.train_crystals:  # every training crystal's responses and tables, untimed
            simulate_batch(cfg, 2, gen, device, Scene(crystal=crystal))
        simulate_batch(cfg, batch_size, gen, device)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            simulate_batch(cfg, batch_size, gen, device)
        sync()
    return batch_size * repeats / (time.perf_counter() - t0)
