"""The true-line list of a simulated spectrum holds every line the library can put in it."""

from __future__ import annotations

import torch

from neurotrain.tasks.gamma import library
from neurotrain.tasks.gamma import simulate as S
from neurotrain.tasks.gamma.config import GammaConfig, SimulateSection


def test_default_max_lines_holds_the_worst_case_of_the_library() -> None:
    from neurotrain.tasks.gamma.cascade import load_cascades

    sim = SimulateSection()
    env = sum(len(library.lines_of(s)) for s in library.ENVIRONMENT)
    # each source's lines plus its true-coincidence sum lines (one per cascade of data/cascades.csv)
    per = [len(library.lines_of(s)) + sum(c.source == s for c in load_cascades()) for s in sim.sources]
    largest = sorted(per, reverse=True)[: sim.max_sources]
    worst = env + sum(largest) + sim.max_random_lines  # no merging, every line inside the energy range
    assert worst <= sim.max_lines, (worst, sim.max_lines)


def test_no_line_is_dropped_with_the_full_environment_and_four_sources(gamma_cache, gen: torch.Generator) -> None:
    cfg = GammaConfig(simulate={
        "n_channels": 512, "e_min_kev": 20.0, "e_max_kev": 3000.0, "response_photons": 200, "lu176_events": 5000,
        "cache_dir": str(gamma_cache), "detector": {"crystal": "NaI"}, "line_merge_kev": 0.0,
    })
    sources = ["Eu-152", "Ba-133", "Cd-109", "Y-88"]
    scene = S.Scene(sources=sources, counts=1e6, environment=True, random_lines=0, jitter=False)
    b = S.simulate_batch(cfg, 2, gen, torch.device("cpu"), scene)
    expected = {
        round(line.energy_kev, 3)
        for s in [*sources, *library.ENVIRONMENT] for line in library.lines_of(s) if 20.0 <= line.energy_kev < 3000.0
    }
    for i in range(2):
        got = {round(e, 3) for e in b["line_energy"][i][b["line_mask"][i]].tolist()}
        assert len(got) >= len(expected) - 2, (len(got), len(expected))  # exact duplicates across sources merge
        assert b["line_mask"][i].sum() < cfg.simulate.max_lines  # a free slot: nothing was cut


def test_target_keeps_the_input_calibration_so_no_line_is_moved(gamma_cache, gen: torch.Generator) -> None:
    """Gain/offset jitter is the user's calibration error: input peak, target peak and the listed line energy
    all sit at gain * E + offset, never at the library energy the network could otherwise learn to snap to."""
    cfg = GammaConfig(simulate={
        "n_channels": 1024, "e_min_kev": 20.0, "e_max_kev": 3000.0, "response_photons": 200, "lu176_events": 5000,
        "cache_dir": str(gamma_cache), "detector": {"crystal": "NaI"}, "gain_jitter": 0.02, "offset_jitter_kev": 5.0,
    })
    scene = S.Scene(sources=["Cs-137"], counts=1e6, environment=False, random_lines=0, jitter=True)
    b = S.simulate_batch(cfg, 6, gen, torch.device("cpu"), scene)
    edges = S.channel_edges(cfg.simulate)
    centres = 0.5 * (edges[1:] + edges[:-1])
    near = (b["line_energy"] - 661.657).abs() < 30
    line_e = torch.where(near & b["line_mask"], b["line_energy"], torch.zeros_like(b["line_energy"])).sum(1)
    width = float(edges[1] - edges[0])
    shifts = []
    for i in range(6):
        wide = (centres - line_e[i]).abs() < 60
        peak_target = float(centres[torch.argmax(b["target"][i, 0] * wide)])
        peak_input = float(centres[torch.argmax(b["clean_input"][i] * wide)])
        assert abs(peak_target - float(line_e[i])) <= width, (i, peak_target, float(line_e[i]))
        assert abs(peak_input - float(line_e[i])) <= width, (i, peak_input, float(line_e[i]))
        shifts.append((float(line_e[i]) - 661.657) / width)
    assert max(abs(s) for s in shifts) > 2.5, shifts  # channels: the jitter really moved the calibration


def test_simulate_throughput_times_batches_after_the_responses_are_built(gamma_cache) -> None:
    """The CPU quick check of the simulator's speed (the GPU command is in simulate_throughput's docstring):
    responses and tables come from the cache, the timed batches run only products, FFTs and Poisson draws."""
    cfg = GammaConfig(simulate={
        "n_channels": 256, "e_min_kev": 20.0, "e_max_kev": 3000.0, "response_photons": 100, "lu176_events": 2000,
        "cache_dir": str(gamma_cache), "room_return_fraction": (0.0, 2.0),
    })
    rate = S.simulate_throughput(cfg, batch_size=32, device="cpu", repeats=2)
    assert 0 < rate < float("inf")
