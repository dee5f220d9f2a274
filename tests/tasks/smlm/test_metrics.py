import math

import numpy as np
import pytest
import torch

from neurotrain.tasks.smlm.config import PSFSection
from neurotrain.tasks.smlm.crlb import crlb, mortensen_variance
from neurotrain.tasks.smlm.metrics import SMLMMetrics, average_precision, efficiency, match_frame, match_localisations


def _t(**kw):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()}


def test_hungarian_beats_greedy_within_tolerance() -> None:
    truth = np.array([[0.0, 0, 0], [200.0, 0, 0]])
    pred = np.array([[110.0, 0, 0], [300.0, 0, 0]])
    i, j = match_frame(pred, truth, 250.0, 500.0, use_z=False)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 0), (1, 1)]  # greedy would match only 110->200


def test_tolerances_lateral_and_axial() -> None:
    truth = np.array([[0.0, 0, 0], [1000.0, 0, 0]])
    pred = np.array([[251.0, 0, 0], [1000.0, 0, 600.0]])
    assert len(match_frame(pred, truth, 250.0, 500.0, use_z=False)[0]) == 1  # axial ignored in 2D
    assert len(match_frame(pred, truth, 250.0, 500.0, use_z=True)[0]) == 0


def test_matching_is_per_frame() -> None:
    i, j = match_localisations(np.array([0, 1]), np.zeros((2, 3)), np.array([1, 2]), np.zeros((2, 3)))
    assert i.tolist() == [1] and j.tolist() == [0]


def test_efficiency_formula() -> None:
    assert efficiency(80.0, 30.0, 1.0) == pytest.approx(100 - math.sqrt(20**2 + 30**2))
    assert efficiency(100.0, 0.0, 0.5) == pytest.approx(100.0)
    assert efficiency(50.0, 40.0, 0.5) == pytest.approx(100 - math.sqrt(50**2 + 20**2))


def test_metric_hand_case() -> None:
    m = SMLMMetrics(threshold=0.5)
    pred = _t(frame=[0, 0, 0, 1], x_nm=[30.0, 500.0, 2000.0, 0.0], y_nm=[40.0, 0, 0, 0], z_nm=[0.0] * 4,
              photons=[1100.0, 1.0, 1.0, 1.0], prob=[0.9, 0.9, 0.2, 0.8])
    truth = _t(frame=[0, 0, 1], x_nm=[0.0, 1000.0, 0.0], y_nm=[0.0, 0, 0], z_nm=[0.0] * 3, photons=[1000.0, 1000, 500],
               crlb_x_nm=[10.0, 10, 10], crlb_y_nm=[10.0, 10, 10])
    m.update(pred, truth)
    r = m.compute()
    # at p >= 0.5: 3 predictions, matches (30,40)->(0,0) d=50 and frame-1 exact; 500 is 500 nm from both truths
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["jaccard"] == pytest.approx(50.0)
    assert r["recall"] == pytest.approx(2 / 3) and r["precision"] == pytest.approx(2 / 3)
    assert r["rmse_lat_nm"] == pytest.approx(math.sqrt((50**2 + 0) / 2))
    assert r["efficiency_lat"] == pytest.approx(efficiency(50.0, r["rmse_lat_nm"], 1.0))
    assert r["photon_mae"] == pytest.approx((100 + 499) / 2)
    # per-emitter normalised: errors 50 nm and 0 nm over a bound of sqrt(10^2 + 10^2) each
    assert r["rmse_over_crlb_lat"] == pytest.approx(math.sqrt((50**2 / 200 + 0) / 2))
    assert r["crlb_lat_nm"] == pytest.approx(math.sqrt(200.0))


def test_average_precision() -> None:
    ap, prec, rec = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 4)
    assert prec.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert ap == pytest.approx(0.25 * 1.0 + 0.25 * 2 / 3)


def test_crlb_matches_mortensen_closed_form() -> None:
    psf = PSFSection(kind="gaussian", sigma_nm=120.0)
    for bg, n in [(0.0, 2000.0), (10.0, 1000.0), (50.0, 5000.0), (200.0, 1000.0)]:
        c = crlb(torch.tensor([10.4]), torch.tensor([8.7]), torch.zeros(1), torch.tensor([n]), torch.tensor([bg]), psf, 100.0,
                 excess_noise=1.0)
        assert c["x_nm"].item() ** 2 == pytest.approx(mortensen_variance(120.0, 100.0, n, bg), rel=0.06)
    # no background: the bound is sigma_a^2 / N (Mortensen eq. 4)
    c0 = crlb(torch.tensor([10.5]), torch.tensor([10.5]), torch.zeros(1), torch.tensor([1000.0]), torch.zeros(1), psf, 100.0,
              excess_noise=1.0)
    assert c0["x_nm"].item() ** 2 == pytest.approx((120.0**2 + 100.0**2 / 12) / 1000.0, rel=0.01)


def test_crlb_emccd_doubles_variance_and_3d_is_finite() -> None:
    args = (torch.tensor([10.4]), torch.tensor([8.7]), torch.zeros(1), torch.tensor([1500.0]), torch.tensor([40.0]))
    psf = PSFSection()
    one = crlb(*args, psf, 100.0, excess_noise=1.0)["x_nm"].item()
    two = crlb(*args, psf, 100.0, excess_noise=2.0)["x_nm"].item()
    assert two**2 == pytest.approx(2 * one**2, rel=1e-6)
    c3 = crlb(*args, PSFSection(kind="astigmatic"), 100.0)
    assert 0 < c3["z_nm"].item() < 200 and math.isnan(crlb(*args, psf, 100.0)["z_nm"].item())
