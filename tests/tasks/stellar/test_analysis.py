"""analyze: a toy linear 'network' reading [Mg/Fe] only from the Mg b window and Teff only from H alpha; the
top regions must say so, by either attribution method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from neurotrain.tasks.stellar.analysis import analyze, occlusion_pixels, top_regions
from neurotrain.tasks.stellar.config import StellarConfig

WAVE = torch.pow(10.0, torch.arange(3.70, 3.83, 1e-4, dtype=torch.float64))  # ~5010-6760 A
MG_B = (5165.0, 5190.0)
H_ALPHA = (6560.0, 6570.0)


class ToyLinear(nn.Module):
    """label_j = sum over its window of (1 - flux): line depth in that window; log variance 0."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(2, WAVE.numel())
        w[0, (WAVE >= H_ALPHA[0]) & (WAVE <= H_ALPHA[1])] = 1.0
        w[1, (WAVE >= MG_B[0]) & (WAVE <= MG_B[1])] = 1.0
        self.register_buffer("w", w)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        mean = (1.0 - x[:, 0]) @ self.w.T
        return torch.cat([self.drop(mean), torch.zeros_like(mean)], 1)

    def to_physical(self, out):
        return out[:, :2], torch.ones_like(out[:, :2])


def _spectra(n: int = 12):
    g = torch.Generator().manual_seed(0)
    flux = 1.0 - 0.3 * torch.rand(n, WAVE.numel(), generator=g)  # absorption everywhere
    x = torch.stack([flux, torch.ones_like(flux)], 1)
    target = ToyLinear()(x)[:, :2] + 0.1 * torch.randn(n, 2, generator=g)
    return {"input": x, "target": target}


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_top_region_names_the_line_the_label_reads(tmp_path: Path, method: str) -> None:
    cfg = StellarConfig.model_validate({
        "labels": {"names": ["TEFF", "MG_FE"]},
        "analyze": {"method": method, "n_spectra": 12, "ig_steps": 4, "top_regions": 3},
        "inference": {"device": "cpu"},
    })
    out = analyze(cfg, ToyLinear(), tmp_path, spectra=_spectra(), wave=WAVE, figures=(method == "occlusion"))
    mg = out["labels"]["MG_FE"]["top_regions"][0]
    assert any(f.startswith("Mg b") for f in mg["features"]), mg
    # occlusion spreads a window's effect over the window, so its region holds a little less
    assert mg["lo_aa"] <= 5175 <= mg["hi_aa"] and mg["share"] > (0.9 if method == "integrated_gradients" else 0.7)
    teff = out["labels"]["TEFF"]["top_regions"][0]
    assert "H alpha" in teff["features"], teff
    text = (tmp_path / "analysis.md").read_text()
    assert "Mg b 5173" in text and "## Residuals" in text
    assert out["residuals"]["rmse"]["MG_FE"] == pytest.approx(0.1, rel=0.5)
    rows = (tmp_path / "importance.csv").read_text().splitlines()
    assert rows[0] == "wavelength_aa,TEFF,MG_FE" and len(rows) == WAVE.numel() + 1
    if method == "occlusion":
        for f in ("importance_MG_FE.png", "importance_TEFF.png", "residuals_MG_FE.png"):
            assert (tmp_path / f).stat().st_size > 1000


def test_top_regions_on_a_hand_curve() -> None:
    wave = torch.linspace(5000.0, 6000.0, 1001, dtype=torch.float64)  # 1 A per pixel
    curve = torch.zeros(1001)
    curve[170:180] = 5.0  # 5170-5179 A: Mg b
    curve[890:896] = 2.0  # 5890-5895 A: Na D
    regs = top_regions(curve, wave, 3, window_px=4)
    assert len(regs) == 2  # nothing else carries importance
    assert any(f.startswith("Mg b") for f in regs[0]["features"])
    assert any(f.startswith("Na D") for f in regs[1]["features"])
    assert regs[0]["share"] == pytest.approx(50 / 62) and regs[1]["share"] == pytest.approx(12 / 62)
    assert occlusion_pixels(wave, 20.0) == 20


def test_unknown_label_is_a_config_error(tmp_path: Path) -> None:
    from neurotrain.errors import ConfigError

    cfg = StellarConfig.model_validate({"labels": {"names": ["TEFF", "MG_FE"]}, "inference": {"device": "cpu"}})
    with pytest.raises(ConfigError, match="NA_FE"):
        analyze(cfg, ToyLinear(), tmp_path, spectra=_spectra(), wave=WAVE, labels=["NA_FE"])


def test_prepared_file_rows_and_label_order(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    import numpy as np

    from neurotrain.tasks.stellar.analysis import prepared_spectra

    p = tmp_path / "prep.h5"
    with h5py.File(p, "w") as f:
        f["input"] = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
        f["target"] = np.array([[i, 10 * i] for i in range(5)], dtype=np.float32)
        f["split"] = np.array([0, 2, 1, 2, 2], dtype=np.int8)
        f.attrs["label_names"] = ["FE_H", "MG_FE"]
    d = prepared_spectra(p, ["MG_FE", "FE_H"], 2)
    assert d["input"].shape == (2, 2, 3) and d["input"][0, 0, 0] == 6.0  # rows 1 and 3 (test split)
    assert d["target"].tolist() == [[10.0, 1.0], [30.0, 3.0]]
