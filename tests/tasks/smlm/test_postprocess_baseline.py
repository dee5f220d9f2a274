import math

import pytest
import torch

from neurotrain.tasks.smlm.baseline import _model, fit_spots, localise_baseline
from neurotrain.tasks.smlm.camera import camera_backward
from neurotrain.tasks.smlm.config import SMLMConfig
from neurotrain.tasks.smlm.crlb import mortensen_variance
from neurotrain.tasks.smlm.metrics import SMLMMetrics
from neurotrain.tasks.smlm.postprocess import detect, localise
from neurotrain.tasks.smlm.simulate import simulate_movie


def test_localise_reads_offsets_and_scales(tiny_cfg) -> None:
    out = torch.zeros(1, 10, 16, 16)
    out[0, 0, 5, 7] = 0.95
    out[0, 0, 5, 8] = 0.3  # neighbour: integrated into the detection, not a second one
    out[0, 1, 5, 7] = 0.2  # photons / photon_scale
    out[0, 2, 5, 7] = 0.25  # x offset (px)
    out[0, 3, 5, 7] = -0.1
    out[0, 9] = 0.25  # bg / bg_scale
    locs = localise(out, tiny_cfg, frame_offset=4)
    assert locs["frame"].tolist() == [4]
    assert locs["x_nm"].item() == pytest.approx((7 + 0.5 + 0.25) * 100)
    assert locs["y_nm"].item() == pytest.approx((5 + 0.5 - 0.1) * 100)
    assert locs["photons"].item() == pytest.approx(0.2 * tiny_cfg.model.photon_scale)
    assert locs["prob"].item() == pytest.approx(1.0)  # 0.95 + 0.3 capped at 1
    assert locs["bg"].item() == pytest.approx(50.0)
    assert locs["sigma_x_nm"].item() == pytest.approx(0.01 * 100)


def test_spatial_integration_recovers_split_probability() -> None:
    p = torch.zeros(1, 8, 8)
    p[0, 3, 3], p[0, 3, 4] = 0.45, 0.4  # an emitter on a pixel border
    det, p_int = detect(p, "spatial_integration", 0.1, 0.6)
    assert det.sum() == 1 and p_int[det].item() == pytest.approx(0.85)
    det_nms, _ = detect(p, "nms", 0.1, 0.6)
    assert det_nms.sum() == 0


def test_lm_fit_reaches_the_crlb() -> None:
    torch.manual_seed(0)
    n, box = 3000, 7
    th = torch.stack([3.5 + torch.rand(n, dtype=torch.float64) - 0.5, 3.5 + torch.rand(n, dtype=torch.float64) - 0.5,
                      torch.full((n,), 2000.0, dtype=torch.float64), torch.full((n,), 30.0, dtype=torch.float64),
                      torch.full((n,), 1.2, dtype=torch.float64)], 1)
    mu, _ = _model(th, box, False)
    fit, _ = fit_spots(torch.poisson(mu).view(n, box, box), 1.2, 20)
    err_nm = (fit[:, 0] - th[:, 0]).std().item() * 100
    bound = math.sqrt(mortensen_variance(120.0, 100.0, 2000.0, 30.0))
    assert err_nm == pytest.approx(bound, rel=0.2)
    assert (fit[:, 2] / 2000.0).median().item() == pytest.approx(1.0, abs=0.03)


def test_baseline_localises_a_sparse_movie() -> None:
    cfg = SMLMConfig(simulate={"frame_size": (32, 32), "density_per_um2": 0.3, "photons": {"mean": 4000, "std": 500}})
    adu, truth, _ = next(simulate_movie(cfg, 60, torch.Generator().manual_seed(0), "cpu"))
    locs = localise_baseline(camera_backward(adu, cfg.camera), cfg)
    # score against the emitters the method can see: bright, and whose fitting box lies on the chip
    easy = truth[(truth.photons > 1000) & truth.x_nm.between(400, 2800) & truth.y_nm.between(400, 2800)]
    m = SMLMMetrics(threshold=-math.inf)
    m.update(locs, {k: torch.as_tensor(easy[k].to_numpy().copy()) for k in ("frame", "x_nm", "y_nm", "z_nm", "photons")})
    r = m.compute()
    assert len(easy) > 20
    assert r["recall"] > 0.85 and r["rmse_lat_nm"] < 25
