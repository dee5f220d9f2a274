"""predict's peak list uses the evaluation's peak rule (net area against the input detector's resolution)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotrain.tasks.gamma import simulate as S
from neurotrain.tasks.gamma.postprocess import find_peaks
from neurotrain.tasks.gamma.predict import list_peaks


def _gauss(centres: np.ndarray, e0: float, area: float, fwhm: float, width: float) -> np.ndarray:
    sig = fwhm / 2.3548
    return area * width * np.exp(-0.5 * ((centres - e0) / sig) ** 2) / (sig * np.sqrt(2 * np.pi))


def test_predict_lists_only_peaks_with_net_area_against_input_resolution(lyso_cfg) -> None:
    edges = S.channel_edges(lyso_cfg.simulate).double().numpy()
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = float(edges[1] - edges[0])
    # enhanced spectrum: a strong line at 662 keV and a weak narrow bump at 1200 keV. The bump is significant
    # per channel (found from ~280 counts up) but its net area (370 counts) fails the test against the measured
    # counts within +-1 input FWHM (12 % at 662 keV, power 0.6: ~110 keV at 1200 keV; passes from ~480 up).
    fwhm_in = 0.12 * 662.0 * (np.array([661.7, 1200.0]) / 662.0) ** 0.6
    measured = 1000.0 + _gauss(centres, 661.7, 20000.0, fwhm_in[0], width) + _gauss(centres, 1200.0, 370.0, fwhm_in[1], width)
    enhanced = 1000.0 + _gauss(centres, 661.7, 20000.0, 8.0, width) + _gauss(centres, 1200.0, 370.0, 8.0, width)
    peaks = list_peaks(lyso_cfg, enhanced, measured, 0.12, 0.6)
    energies = [p["energy_kev"] for p in peaks]
    assert any(abs(e - 661.7) < width for e in energies), energies
    assert not any(abs(e - 1200.0) < 3 * width for e in energies), energies
    # significance: net area over sqrt(measured counts within +-1 input FWHM), by hand ~20000 / sqrt(61,000)
    line = next(p for p in peaks if abs(p["energy_kev"] - 661.7) < width)
    beneath = measured[np.abs(centres - 661.7) <= fwhm_in[0] + width].sum()
    assert line["significance_sigma"] == pytest.approx(line["net_area_counts"] / np.sqrt(beneath), rel=0.05)
    assert 60 < line["significance_sigma"] < 100
    # without the resolution rule the bump would be listed: the rule is what removes it
    mask, energy = find_peaks(
        torch.tensor(enhanced, dtype=torch.float32).unsqueeze(0), torch.tensor(measured, dtype=torch.float32).unsqueeze(0),
        torch.tensor(edges, dtype=torch.float32), lyso_cfg.metrics.detect_threshold,
    )
    found = energy[mask].tolist()
    assert any(abs(e - 1200.0) < 3 * width for e in found), found


def test_peak_origins_name_escape_backscatter_and_step_tops() -> None:
    """Found peaks at known features of a larger peak or of the crystal are labelled (LYSO 10 % at 662 keV):
    184.3 keV is Cs-137's backscatter peak 661.657 / (1 + 2 x 661.657 / 511); 821.5 keV Co-60's 1332.5 keV
    single escape; 450 keV lies within half an input FWHM (28.1 keV) below Cs-137's Compton edge 477.3 keV;
    620 keV within half an input FWHM (31.4 keV) above Lu-176's 597 keV onset."""
    from neurotrain.tasks.gamma.metrics import peak_origins, secondary_names

    e = torch.tensor([661.657, 184.3, 450.0, 620.0, 1000.0, 150.7, 1332.5, 821.5])
    a = torch.tensor([1e5, 1e3, 2e3, 3e3, 1.5e3, 8e2, 5e4, 7e2])
    o = peak_origins(e, a, 0.10, 0.5, "LYSO", 3.0, 5.8, 0.5)
    names = secondary_names("LYSO")
    feat, kind, step, skind = o["feature_of_kev"], o["feature_kind"], o["step_of_kev"], o["step_kind"]
    assert names[int(kind[1])] == "backscatter" and feat[1] == pytest.approx(661.657)
    assert names[int(kind[7])] == "single escape" and feat[7] == pytest.approx(1332.5)
    assert int(skind[2]) == 0 and step[2] == pytest.approx(661.657)  # below Cs-137's Compton edge
    assert int(skind[3]) == 1 and step[3] == pytest.approx(596.95)  # above the Lu-176 onset
    # the strongest line, a free-standing peak, and 661.7 - 511 keV (no pair production below 1022 keV)
    for i in (0, 4, 5):
        assert int(kind[i]) == -1 and int(skind[i]) == -1 and torch.isnan(feat[i]) and torch.isnan(step[i])
    # no Lu-176 in NaI; a feature is named only after a larger peak
    o_nai = peak_origins(e, a, 0.07, 0.5, "NaI", 3.0, 5.8, 0.5)
    assert int(o_nai["step_kind"][3]) == -1
    # a negative net area (no peak there) is no parent
    neg = a.clone()
    neg[0] = -1e5
    assert int(peak_origins(e, neg, 0.10, 0.5, "LYSO", 3.0, 5.8, 0.5)["feature_kind"][1]) == -1
    big_backscatter = a.clone()
    big_backscatter[1] = 2e5
    assert int(peak_origins(e, big_backscatter, 0.10, 0.5, "LYSO", 3.0, 5.8, 0.5)["feature_kind"][1]) == -1


def test_impossible_peaks_are_dropped_and_counted(lyso_cfg, monkeypatch) -> None:
    """A found peak whose window measurement gives a negative net area (the enhanced spectrum dips below its
    continuum: Mendocino 608.1 keV, area -28953) or no FWHM (cave pottery 1100.9 keV, FWHM nan) is no emission
    line: it is left out of the list and counted in ``dropped``."""
    from neurotrain.tasks.gamma import predict as P

    edges = S.channel_edges(lyso_cfg.simulate).double().numpy()
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = float(edges[1] - edges[0])
    lines = [(400.0, 3e4), (662.0, 3e4), (1100.0, 3e4)]
    measured = 1000.0 + sum(_gauss(centres, e, a, 0.1 * 662 * (e / 662) ** 0.5, width) for e, a in lines)
    enhanced = 1000.0 + sum(_gauss(centres, e, a, 8.0, width) for e, a in lines)
    honest = P.list_peaks(lyso_cfg, enhanced, measured, 0.10, 0.5)
    assert len(honest) == 3 and sum(honest.dropped.values()) == 0
    # a significance floor drops peaks too, counted on their own
    assert P.list_peaks(lyso_cfg, enhanced, measured, 0.10, 0.5, min_sigma=1e6).dropped["below_min_sigma"] == 3
    real_measure = P.measure_lines

    def corrupt(*args, **kwargs):  # the window measurement of the real cases: one negative area, one NaN FWHM
        m = real_measure(*args, **kwargs)
        m["area"][0, 0] = -28953.0
        m["fwhm"][0, 2] = float("nan")
        return m

    monkeypatch.setattr(P, "measure_lines", corrupt)
    peaks = P.list_peaks(lyso_cfg, enhanced, measured, 0.10, 0.5)
    assert [round(p["energy_kev"]) for p in peaks] == [662]
    assert peaks.dropped == {"negative_area": 1, "fwhm_not_finite": 1, "below_min_sigma": 0}


class _Passthrough(torch.nn.Module):
    """A stand-in network that returns its input counts smoothed by a Gaussian of ``sigma`` channels: the peaks
    predict lists are then the measured file's lines, a few channels wide."""

    def __init__(self, sigma: float = 2.0) -> None:
        super().__init__()
        x = torch.arange(-4 * int(sigma), 4 * int(sigma) + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        self.kernel = torch.nn.Parameter((k / k.sum()).view(1, 1, -1), requires_grad=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv1d(x[:, :1], self.kernel, padding=self.kernel.shape[-1] // 2)  # (B, 1, N)


@pytest.mark.parametrize("name", ["Mendocino_07-10-13_Acq-10-10-13.Spe", "1110C NAA cave pottery.Spe"])
def test_real_hpge_files_refused_then_no_impossible_peak(realdata, tmp_path, lyso_cfg, name) -> None:
    """The two files of the known impossible peaks: refused by default (HPGe for a LYSO model); run anyway, the
    peak list holds no negative area and no NaN FWHM. The network here passes the counts through, so the peaks
    are the file's own lines measured with the LYSO law (the trained model's peaks differ, the rule does not)."""
    from neurotrain.errors import DataError
    from neurotrain.tasks.gamma.predict import predict_files

    p = realdata / name
    if not p.is_file():
        pytest.skip(f"{p} absent")
    model = _Passthrough()
    with pytest.raises(DataError, match="detector: expected a spectrum of the model's input detector .* got HPGe"):
        predict_files(lyso_cfg, model, [p], tmp_path, plot=False, verbose=False)
    assert not any(tmp_path.iterdir())
    predict_files(lyso_cfg, model, [p], tmp_path, plot=False, verbose=False, detector_check="warn")
    lines = [ln for ln in (tmp_path / f"{p.stem}_peaks.csv").read_text().splitlines() if not ln.startswith("#")]
    rows = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    assert len(rows) >= 3  # K-40 1460.8 keV and other strong lines of these spectra
    assert np.all(rows[:, 2] > 0) and np.all(np.isfinite(rows[:, 1])) and np.all(rows[:, 1] > 0)
