"""Classical baselines, and a short end-to-end run: train, evaluate, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.tasks.gamma import baseline as bl
from neurotrain.tasks.gamma import io as gio
from neurotrain.tasks.gamma import simulate as S
from neurotrain.tasks.gamma.postprocess import measure_lines


def _line(edges: torch.Tensor, e: float, fwhm: float, area: float) -> torch.Tensor:
    s = fwhm / 2.3548
    cdf = torch.special.ndtr((edges - e) / s)
    return area * (cdf[1:] - cdf[:-1])


@pytest.mark.parametrize("method", ["richardson_lucy", "gold"])
def test_deconvolution_sharpens_and_keeps_counts(method: str) -> None:
    edges = torch.linspace(0, 2000, 513)
    a = bl.resolution_matrix(edges, 0.10, 0.5)
    fw = 0.10 * 662 * (700 / 662) ** 0.5
    y = _line(edges, 700.0, fw, 1e4) + 5.0
    x = bl.richardson_lucy(y.unsqueeze(0), a, 300) if method == "richardson_lucy" else bl.gold(y.unsqueeze(0), a, 100, 3, 1.2)
    assert x.sum().item() == pytest.approx(y.sum().item(), rel=0.02)
    m_in = measure_lines(y.unsqueeze(0), edges, torch.tensor([[700.0]]), torch.tensor([[100.0]]))
    m_out = measure_lines(x, edges, torch.tensor([[700.0]]), torch.tensor([[100.0]]))
    assert m_out["fwhm"].item() < 0.5 * m_in["fwhm"].item()
    assert m_out["centroid"].item() == pytest.approx(700.0, abs=4.0)


def test_resolution_matrix_columns_are_normalised() -> None:
    a = bl.resolution_matrix(torch.linspace(0, 2000, 257), 0.08, 0.5)
    inner = a[:, 20:230].sum(0)
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-5)


def test_short_training_beats_untrained_then_evaluate_and_predict(tmp_path: Path, gamma_cache: Path, make_small_config) -> None:
    from neurotrain.config import validate_config
    from neurotrain.engine.api import train
    from neurotrain.engine.checkpoint import load_model
    from neurotrain.registry import TASKS
    from neurotrain.tasks.gamma.losses import PeakWeightedLoss
    from neurotrain.tasks.gamma.models import build_model

    base = make_small_config(gamma_cache, train_crystals=["LYSO", "NaI"]).model_dump(mode="json")
    base.update(
        run={"name": "t", "output_dir": str(tmp_path / "runs")},
        trainer={"max_epochs": 2, "accelerator": "cpu", "devices": 1, "progress_bar": False},
        optim={"name": "adamw", "lr": 0.003},
        data={"batch_size": 8, "sim_train_size": 8 * 30, "sim_val_size": 16, "sim_test_size": 16},
        logging={"tensorboard": False, "csv": True, "log_every_n_steps": 5},
    )
    # 8 spectra, so that the headline (mean FWHM of isolated detectable lines) has lines to measure
    base["evaluate"] = {**base["evaluate"], "spectra_per_level": 8}
    cfg = validate_config(base, "test")
    run_dir = train(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cfg2, trained = load_model(ckpt)
    torch.manual_seed(0)
    untrained = build_model(cfg2)
    gen = torch.Generator()
    gen.manual_seed(99)
    batch = S.simulate_batch(cfg2, 16, gen, torch.device("cpu"))
    loss = PeakWeightedLoss()
    trained.eval()
    untrained.eval()
    with torch.no_grad():
        l_tr = loss(trained(batch["input"], batch["fwhm_params"]), batch)["loss"].item()
        l_un = loss(untrained(batch["input"], batch["fwhm_params"]), batch)["loss"].item()
    assert l_tr < 0.7 * l_un, (l_tr, l_un)

    task = TASKS.get("gamma")
    res = task.evaluate(cfg2, trained, run_dir)
    assert res.headline_network is not None and res.headline_baseline is not None
    assert res.report_path is not None and res.report_path.is_file()
    assert (run_dir / "report" / "report.html").is_file()
    levels = res.metrics["levels"]
    assert set(next(iter(levels.values()))) == {"input", "network", "baseline", "target"}
    assert set(next(iter(res.metrics["paired_area_err_pct"].values()))) == {"network", "baseline", "lines"}
    refined = task.evaluate(cfg2.model_copy(update={"refine": cfg2.refine.model_copy(update={"iterations": 10})}), trained, run_dir)
    assert "network_refined" in next(iter(refined.metrics["levels"].values()))
    assert refined.headline_network == res.headline_network  # the headline stays the raw network's
    trade = next(iter(refined.metrics["detection_tradeoff"].values()))
    assert set(trade["curves"]) == {"network", "network_refined", "baseline"}
    assert trade["baseline_recall"] == next(iter(refined.metrics["levels"].values()))["baseline"]["det_recall"]
    assert "Peak search at equal recall" in (run_dir / "report" / "report.md").read_text()
    neg = res.metrics["sets"]["negative_control"]
    assert "peaks_in_180_192_kev" in neg
    assert neg["split_share_180_192_kev"]["target"] == 0.0  # HPGe cannot resolve 185.7 / 186.2 keV either
    assert "unknown_line_shift" in res.metrics["sets"]["unknown_lines"]
    assert "crystal_NaI" in res.metrics["sets"]  # the same model scored on NaI spectra
    json.dumps(res.metrics)  # JSON-able

    # predict on an IEC 1455 file written from a simulated NaI-like spectrum on a different grid
    scene = S.Scene(sources=["Cs-137"], counts=2e5, random_lines=0, environment=False, jitter=False, fwhm_662=0.07, power=0.5)
    b = S.simulate_batch(cfg2, 1, gen, torch.device("cpu"), scene)
    # the file holds only the first 384 of the model's 512 channels: it measures 20-1505 keV of 20-2000 keV
    src = gio.write_iec1455(tmp_path / "cs137.iec", b["counts"][0, :384].numpy(), [20.0, (2000.0 - 20.0) / 512], 100.0, 100.0)
    hi_kev = 20.0 + 384 * (2000.0 - 20.0) / 512
    out = task.predict(cfg2, trained, [src], tmp_path / "pred", fwhm_662=0.07, power=0.5)
    names = {p.name for p in out}
    assert {"cs137_enhanced.csv", "cs137_enhanced.h5", "cs137_peaks.csv", "cs137_enhanced.png"} <= names
    enhanced = gio.read_spectrum(tmp_path / "pred" / "cs137_enhanced.csv")
    assert enhanced.counts.size == 512
    peaks_csv = tmp_path / "pred" / "cs137_peaks.csv"
    header, *rows = [line for line in peaks_csv.read_text().splitlines() if not line.startswith("#")]
    assert header.split(",") == ["energy_kev", "fwhm_kev", "net_area_counts", "significance_sigma", "feature_of_kev", "step_of_kev"]
    assert all(len([float(v) for v in r.split(",")]) == 6 for r in rows)  # numbers only, nan where no label
    import h5py

    with h5py.File(tmp_path / "pred" / "cs137_enhanced.h5") as f:
        assert f["energy_kev"].shape == (512,)
        assert np.isclose(f["enhanced"][...].sum(), f["input"][...].sum(), rtol=1e-6)  # conserve_counts
        # nothing is output or listed above the file's range
        e, covered = f["energy_kev"][...], f["covered"][...]
        assert np.array_equal(covered, e <= hi_kev) and (~covered).sum() == 128
        assert np.all(f["enhanced"][...][~covered] == 0) and f["enhanced"][...][covered].sum() > 0
        assert np.all(f["peaks_energy_kev"][...] < hi_kev)
        n_peaks = f["peaks_energy_kev"].shape[0]
        assert f["peaks_feature_of_kev"].shape == (n_peaks,) and f["peaks_step_of_kev"].shape == (n_peaks,)

    # data-consistency refinement in predict: only when asked for, and it keeps the counts
    from neurotrain.tasks.gamma.predict import enhance

    counts = b["counts"][0].numpy().astype(np.float64)
    raw = enhance(cfg2, trained, counts, 0.07, 0.5)
    def with_refine(in_predict: bool):
        return cfg2.model_copy(update={"refine": cfg2.refine.model_copy(update={"iterations": 10, "in_predict": in_predict})})
    assert np.allclose(enhance(with_refine(False), trained, counts, 0.07, 0.5), raw)
    refined_spec = enhance(with_refine(True), trained, counts, 0.07, 0.5)
    assert not np.allclose(refined_spec, raw, rtol=1e-3)
    assert refined_spec.sum() == pytest.approx(counts.sum(), rel=1e-6)
