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
from neurotrain.tasks.gamma.peak_rules import EXEMPTION_RULES
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

    # resolution-only target: 60 CPU steps take the loss below 0.7x untrained against the scintillator's own
    # deposits, not yet against the HPGe detector's spectrum (another detector's efficiencies, no Lu-176: 0.93x)
    base = make_small_config(gamma_cache, train_crystals=["LYSO", "NaI"], target="resolution_only").model_dump(mode="json")
    base.update(
        run={"name": "t", "output_dir": str(tmp_path / "runs")},
        trainer={"max_epochs": 2, "accelerator": "cpu", "devices": 1, "progress_bar": False},
        optim={"name": "adamw", "lr": 0.003},
        data={"batch_size": 8, "sim_train_size": 8 * 30, "sim_val_size": 16, "sim_test_size": 16},
        logging={"tensorboard": False, "csv": True, "log_every_n_steps": 5},
    )
    # 8 spectra, so that the paired lines exist; small evaluation responses (the check runs, but is not the
    # point here), two crystals, the baselines tuned on 4 validation spectra over short sweeps
    base["evaluate"] = {**base["evaluate"], "spectra_per_level": 8, "response_photons": 600, "crystals": ["LYSO", "NaI"],
                        "validation_spectra": 4, "spectra_per_set": 4}
    base["baseline"] = {**base["baseline"], "rl_iterations": [10, 50], "gold_iterations": [20], "gold_repetitions": 2}
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
    assert res.report_path is not None and res.report_path.is_file()
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "report" / "table.json").is_file()
    table = res.metrics["table"]
    assert set(table) == {"LYSO", "NaI"}  # the same model scored on NaI spectra
    rows = table["LYSO"]["1e+05"]
    assert set(rows) == {"input", "network", "rl_tuned", "gold_tuned", "target"}
    for r in rows.values():
        assert r["raw_false"] == pytest.approx(sum(r[k] for k in EXEMPTION_RULES) + r["unexplained"], abs=1e-3)
        assert 0 <= r["miss_rate"] <= 1 and r["dropped"] >= 0
    # every compared row on the same lines
    assert len({r["fwhm_lines"] for n, r in rows.items() if n != "input"}) == 1
    assert res.metrics["tuning"]["LYSO"]["1e+05"]["budget"] is not None  # the network's false-peak rate
    assert set(res.metrics["mc_noise"]["1e+05"]) == {"photons", "r_target", "r_input", "passed"}
    assert {"fwhm_law_plus20", "doublet_ba133", "lu176_600_900"} <= set(res.metrics["sets"])
    assert res.metrics["sets"]["doublet_ba133"]["peak_to_valley"]["target"] >= 3  # HPGe resolves 356 / 384 keV
    refined = task.evaluate(cfg2.model_copy(update={"refine": cfg2.refine.model_copy(update={"iterations": 10})}), trained, run_dir)
    assert "network_refined" in refined.metrics["table"]["LYSO"]["1e+05"]
    assert "## Summary" in (run_dir / "report" / "report.md").read_text()
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
