import math

import pytest
import torch

from neurotrain.tasks.smlm.camera import camera_backward, camera_forward
from neurotrain.tasks.smlm.config import CameraSection, PSFSection, SMLMConfig
from neurotrain.tasks.smlm.psf import astig_sigma, integrated_gaussian_1d, psf_sigmas, render_emitters
from neurotrain.tasks.smlm.simulate import sample_background, sample_emissions, simulate_batch
from neurotrain.tasks.smlm.tensors import pad_by_group, sample_gamma


def test_psf_integrates_to_photon_count_and_is_centred() -> None:
    psf = PSFSection(kind="gaussian", sigma_nm=130.0)
    x = torch.tensor([10.3, 20.8, 12.5], dtype=torch.float64)
    y = torch.tensor([12.6, 17.1, 19.2], dtype=torch.float64)
    ph = torch.tensor([1000.0, 2500.0, 400.0], dtype=torch.float64)
    img = render_emitters(torch.tensor([0, 1, 2]), 3, x, y, torch.zeros(3, dtype=torch.float64), ph, 32, 32, psf, 100.0)
    assert torch.allclose(img.sum((1, 2)), ph, rtol=1e-6)
    centres = torch.arange(32, dtype=torch.float64) + 0.5
    cx = (img.sum(1) * centres).sum(1) / img.sum((1, 2))
    cy = (img.sum(2) * centres).sum(1) / img.sum((1, 2))
    assert torch.allclose(cx, x, atol=1e-4) and torch.allclose(cy, y, atol=1e-4)


def test_pixel_integral_matches_closed_form() -> None:
    e = integrated_gaussian_1d(torch.tensor([2.5]), torch.tensor([1.0]), 5)[0]
    # centre pixel [2, 3): erf(0.5/sqrt2)
    assert e[2].item() == pytest.approx(math.erf(0.5 / math.sqrt(2)), rel=1e-6)
    assert e.sum().item() == pytest.approx(math.erf(2.5 / math.sqrt(2)), rel=1e-6)


def test_astigmatic_widths_cross_at_focus_and_swap_with_z() -> None:
    psf = PSFSection(kind="astigmatic", sigma_nm=100.0, focal_offset_nm=300.0, depth_nm=400.0)
    z = torch.tensor([-300.0, 0.0, 300.0])
    sx, sy = psf_sigmas(psf, z, 100.0)
    assert sx[1].item() == pytest.approx(sy[1].item())
    assert sx[2].item() == pytest.approx(1.0) and sy[0].item() == pytest.approx(1.0)  # each in focus at its c
    assert sx[0] > sy[0] and sx[2] < sy[2]
    assert astig_sigma(torch.tensor(700.0), 1.0, 300.0, 400.0).item() == pytest.approx(math.sqrt(2.0))


def test_gamma_sampler_moments_and_reproducibility() -> None:
    g = torch.Generator().manual_seed(1)
    k = torch.full((200_000,), 3.0)
    s = sample_gamma(k, g)
    assert s.mean().item() == pytest.approx(3.0, rel=0.01)
    assert s.var().item() == pytest.approx(3.0, rel=0.03)
    small = sample_gamma(torch.full((200_000,), 0.5), torch.Generator().manual_seed(2))
    assert small.mean().item() == pytest.approx(0.5, rel=0.02)
    again = sample_gamma(k, torch.Generator().manual_seed(1))
    assert torch.equal(s, again)


@pytest.mark.parametrize("lam", [2.0, 30.0])
def test_emccd_mean_and_variance(lam: float) -> None:
    cam = CameraSection(kind="emccd", quantize=False)
    g = torch.Generator().manual_seed(0)
    adu = camera_forward(torch.full((400, 500), lam, dtype=torch.float64), cam, g)
    m = cam.qe * lam + cam.spurious_charge
    mean = cam.baseline_adu + cam.em_gain * m / cam.e_per_adu
    var = (2 * cam.em_gain**2 * m + cam.read_noise_e**2) / cam.e_per_adu**2  # excess-noise factor 2
    assert adu.mean().item() == pytest.approx(mean, rel=0.01)
    assert adu.var().item() == pytest.approx(var, rel=0.03)
    photons = camera_backward(adu, cam)
    assert photons.mean().item() == pytest.approx(lam + cam.spurious_charge / cam.qe, rel=0.01)


def test_scmos_mean_variance_and_maps(tmp_path) -> None:
    import numpy as np

    noise = np.full((8, 8), 2.0, np.float32)
    np.save(tmp_path / "rn.npy", noise)
    cam = CameraSection(kind="scmos", qe=0.8, read_noise_e=1.5, e_per_adu=0.5, baseline_adu=100.0, quantize=False,
                        read_noise_map=tmp_path / "rn.npy")
    g = torch.Generator().manual_seed(0)
    adu = camera_forward(torch.full((20000, 8, 8), 10.0, dtype=torch.float64), cam, g)
    assert adu.mean().item() == pytest.approx(100 + 8.0 / 0.5, rel=1e-3)
    assert adu.var().item() == pytest.approx((8.0 + 4.0) / 0.25, rel=0.02)  # Poisson + map read noise 2 e-


def test_quantised_camera_output_is_integer_adu() -> None:
    adu = camera_forward(torch.full((4, 4), 50.0), CameraSection(), torch.Generator().manual_seed(0))
    assert torch.equal(adu, adu.round()) and adu.min() >= 0


def test_emission_density_and_blinking() -> None:
    cfg = SMLMConfig(simulate={"frame_size": (64, 64), "density_per_um2": 0.5, "on_lifetime_frames": 2.0})
    e = sample_emissions(cfg, 400, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    per_frame = e["frame"].numel() / (400 * 3)
    assert per_frame == pytest.approx(0.5 * 64 * 64 * 0.01, rel=0.05)  # visible emitters per frame
    # the same emitter shines in consecutive frames with the same position
    key = e["seq"] * 10**6 + e["emitter"]
    _, counts = torch.unique(key, return_counts=True)
    assert (counts > 1).float().mean() > 0.3
    assert ((e["photons"] > 0) & (e["photons"] <= cfg.simulate.photons.max)).all()


def test_background_is_smooth_and_in_range() -> None:
    cfg = SMLMConfig(simulate={"frame_size": (32, 32), "bg_photons": (50.0, 50.0), "bg_variation": 0.3})
    bg = sample_background(cfg, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert bg.min() >= 50 * 0.7 - 1e-3 and bg.max() <= 50 * 1.3 + 1e-3
    assert bg.std() > 1.0
    assert (bg[:, 1:] - bg[:, :-1]).abs().max() < 5.0  # smooth: small pixel-to-pixel steps


def test_simulate_batch_shapes_targets_and_seed(tiny_cfg) -> None:
    b1 = simulate_batch(tiny_cfg, 6, torch.Generator().manual_seed(3), "cpu")
    b2 = simulate_batch(tiny_cfg, 6, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(b1["input"], b2["input"])
    assert b1["input"].shape == (6, 3, 16, 16) and b1["target"].shape == (6, 6, 16, 16)
    n = b1["em_mask"].sum(1)
    p = b1["target"][:, 0].sum((1, 2))
    assert (p <= n).all() and (p >= n - 2).all()  # one target pixel per emitter (rare collisions)
    off = b1["target"][:, 2:4][b1["target"][:, :1].expand(-1, 2, -1, -1) > 0]
    assert off.abs().max() <= 0.5
    em = b1["em"][b1["em_mask"]]
    assert (em[:, 0] >= 0).all() and (em[:, 0] < 16).all() and (em[:, 3] > 0).all()


def test_pad_by_group() -> None:
    (v,), mask = pad_by_group(torch.tensor([2, 0, 2, 2]), 3, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert v.tolist() == [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, 4.0]]
    assert mask.sum(1).tolist() == [1, 0, 3]


def test_spline_psf_from_calibration_matches_analytic(tmp_path) -> None:
    from neurotrain.tasks.smlm.spline import gaussian_calibration, write_calibration

    astig = PSFSection(kind="astigmatic")
    stack, dz, z0 = gaussian_calibration(astig, 100.0)
    spline = PSFSection(kind="spline", calibration=write_calibration(tmp_path / "cal.h5", stack, dz, z0))
    x = torch.tensor([10.3, 20.7, 15.5], dtype=torch.float64)
    y = torch.tensor([12.2, 17.9, 8.5], dtype=torch.float64)
    z = torch.tensor([-410.0, 0.0, 333.0], dtype=torch.float64)
    ph = torch.tensor([1000.0, 2000.0, 3000.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 1])
    a = render_emitters(g, 2, x, y, z, ph, 32, 32, astig, 100.0)
    s = render_emitters(g, 2, x, y, z, ph, 32, 32, spline, 100.0)
    assert torch.allclose(s.sum((1, 2)), a.sum((1, 2)), rtol=1e-3)  # photons conserved
    assert (s - a).abs().max() < 0.02 * a.max()  # cubic interpolation of the sampled stack
    cfg = SMLMConfig(simulate={"frame_size": (16, 16)}, psf=spline.model_dump())
    b = simulate_batch(cfg, 2, torch.Generator().manual_seed(0), "cpu")
    assert torch.isfinite(b["input"]).all() and b["em"][..., 2].abs().max() > 0  # 3D: z simulated


def test_spline_needs_a_calibration() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="calibration"):
        PSFSection(kind="spline")
