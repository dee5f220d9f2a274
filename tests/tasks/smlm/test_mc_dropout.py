"""Monte-Carlo dropout at predict time: MC spread columns, zero cost when off, memory accounting."""

import numpy as np
import pandas as pd
import pytest
import torch

from neurotrain.errors import ConfigError
from neurotrain.registry import TASKS
from neurotrain.tasks.smlm.infer import NetworkLocaliser, WindowSource, localise_movie
from neurotrain.tasks.smlm.postprocess import MC_COLUMNS, PSF_COLUMNS

N_FRAMES = 4


@pytest.fixture
def mc_cfg(tiny_cfg):
    return tiny_cfg.model_copy(update={"model": tiny_cfg.model.model_copy(
        update={"name": "SigmaMUNetWithUncertainty", "dropout": 0.3})})


@pytest.fixture
def movie() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return 100 + 60 * torch.rand(N_FRAMES, 16, 16, generator=g)


def untrained(cfg):
    torch.manual_seed(0)
    return TASKS.get("smlm").build_model(cfg).eval()


def test_mc_columns_present_and_positive_on_untrained_uncertainty_model(mc_cfg, movie) -> None:
    model = untrained(mc_cfg)
    locs = localise_movie(movie, mc_cfg, model, threshold=0.0, device="cpu", mc_samples=4)
    assert len(locs) > 0 and locs.frame.between(0, N_FRAMES - 1).all()
    for c in MC_COLUMNS + PSF_COLUMNS:
        assert c in locs and np.isfinite(locs[c]).all(), c
        assert (locs[c] > 0).all(), c
    # dropout sampling is switched back off: the network is left as it was
    assert not model.training and not any(m.training for m in model.modules())


def test_mc_is_sampled_in_one_vectorised_call_and_absent_when_off(mc_cfg, movie, monkeypatch) -> None:
    model = untrained(mc_cfg)
    batches: list[int] = []
    unions: list[int] = []
    original, original_union = model.heads, model.union_features

    def counting(u: torch.Tensor) -> torch.Tensor:
        batches.append(u.shape[0])
        return original(u)

    def counting_union(feats: torch.Tensor) -> torch.Tensor:
        unions.append(feats.shape[0])
        return original_union(feats)

    monkeypatch.setattr(model, "heads", counting)
    monkeypatch.setattr(model, "union_features", counting_union)
    src = WindowSource(movie, 1)
    with torch.inference_mode():
        off = NetworkLocaliser(model, mc_cfg, threshold=0.0)(src[0:N_FRAMES])
        assert batches == [N_FRAMES]
        assert not set(MC_COLUMNS) & set(off)
        on = NetworkLocaliser(model, mc_cfg, threshold=0.0, mc_samples=5)(src[0:N_FRAMES])
    assert batches == [N_FRAMES, 5 * N_FRAMES]  # all samples of all windows in one heads call
    assert unions == [N_FRAMES, N_FRAMES]  # the deterministic union U-Net is not repeated
    assert set(MC_COLUMNS) <= set(on)


def test_mc_off_table_is_unchanged_by_the_knob(mc_cfg, movie) -> None:
    model = untrained(mc_cfg)
    a = localise_movie(movie, mc_cfg, model, threshold=0.0, device="cpu")
    b = localise_movie(movie, mc_cfg, model, threshold=0.0, device="cpu", mc_samples=0)
    pd.testing.assert_frame_equal(a, b)
    assert not set(MC_COLUMNS) & set(a.columns)


def test_mc_spread_grows_with_dropout_rate(mc_cfg, movie) -> None:
    spreads = []
    for p in (0.05, 0.5):
        cfg = mc_cfg.model_copy(update={"model": mc_cfg.model.model_copy(update={"dropout": p})})
        torch.manual_seed(1)
        locs = localise_movie(movie, cfg, untrained(cfg), threshold=0.0, device="cpu", mc_samples=6)
        spreads.append(float(locs["x_mc_sigma_nm"].median()))
    assert spreads[1] > 2 * spreads[0]


def test_batch_size_estimate_accounts_for_the_samples(mc_cfg, movie) -> None:
    from neurotrain.engine.inference import choose_batch_size

    model = untrained(mc_cfg)
    src = WindowSource(movie, 1)
    off = choose_batch_size(NetworkLocaliser(model, mc_cfg), src, max_memory_gb=1e-3, device="cpu")
    on = choose_batch_size(NetworkLocaliser(model, mc_cfg, mc_samples=8), src, max_memory_gb=1e-3, device="cpu")
    assert off.method == on.method == "module-hooks"
    # the U-Nets run once, the heads once per sample: 7 extra copies of the heads' activations
    heads = (model.p_head, model.phot_xyz_mu_head, model.phot_xyz_sig_head, model.bg_head)
    h, w = movie.shape[-2:]
    head_bytes = 4 * h * w * sum(hd[0].out_channels * 2 + hd[2].out_channels for hd in heads)  # conv, ELU, 1x1
    assert on.per_sample_bytes > off.per_sample_bytes + 3 * head_bytes  # several sampled copies are counted
    assert on.batch_size < off.batch_size


def test_bad_mc_requests_are_config_errors(tiny_cfg, mc_cfg, movie) -> None:
    with pytest.raises(ConfigError, match="SigmaMUNetWithUncertainty"):
        localise_movie(movie, tiny_cfg, untrained(tiny_cfg), device="cpu", mc_samples=4)
    with pytest.raises(ConfigError, match=">= 2"):
        localise_movie(movie, mc_cfg, untrained(mc_cfg), device="cpu", mc_samples=1)
    no_drop = mc_cfg.model_copy(update={"model": mc_cfg.model.model_copy(update={"dropout": 0.0})})
    with pytest.raises(ConfigError, match="no dropout"):
        localise_movie(movie, no_drop, untrained(no_drop), device="cpu", mc_samples=4)
    with pytest.raises(ConfigError, match="baseline"):
        localise_movie(movie, mc_cfg, None, device="cpu", mc_samples=4)


def test_predict_set_override_writes_mc_columns_in_every_format(mc_cfg, tmp_path) -> None:
    """``neurotrain predict CKPT movie --set predict.mc_samples=3``: the override reaches the table."""
    from neurotrain.engine import api
    from neurotrain.tasks.smlm.io import read_locs

    task = TASKS.get("smlm")
    model = untrained(mc_cfg)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": mc_cfg.model_dump(mode="json")}}, ckpt)
    movie = task.simulate(mc_cfg, tmp_path / "movie.tif", 3, device="cpu")
    for suffix in (".h5", ".csv", ".hdf5"):
        out = api.predict(ckpt, [movie], tmp_path / f"locs{suffix}", ["predict.mc_samples=3", "predict.render=false"],
                          threshold=0.0, progress=False)
        locs = read_locs(out[0])
        assert len(locs) > 0
        for c in MC_COLUMNS:
            assert (locs[c] > 0).all(), (suffix, c)
    plain = read_locs(api.predict(ckpt, [movie], tmp_path / "plain.h5", ["predict.render=false"],
                                  threshold=0.0, progress=False)[0])
    assert len(plain) > 0 and not set(MC_COLUMNS) & set(plain.columns)
