"""The formats gamma spectroscopists use: N42-2012 round trip (InterSpec's reader, SandiaSpecUtils, reads what we
write), the SpecUtils formats (N42-2006, PCF, CHN, SPC), every real sample file, the detector each declares or
shows, and predict's N42 output and detector check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.gamma import detector_check as dc
from neurotrain.tasks.gamma import io as gio

su = pytest.importorskip("SpecUtils")


def _counts(n: int = 1024, seed: int = 0) -> np.ndarray:
    """Integer counts: a continuum, a 662 keV-like line at channel 400 (sigma 12 channels) and large values."""
    rng = np.random.default_rng(seed)
    x = np.arange(n)
    lam = 200 * np.exp(-x / 300) + 3000 * np.exp(-0.5 * ((x - 400) / 12) ** 2) + 5
    c = rng.poisson(lam).astype(np.float64)
    c[7] = 4_000_000  # a large count stays exact (float32 holds integers to 2^24)
    return c


def test_n42_round_trip_counts_calibration_times(tmp_path: Path) -> None:
    c = _counts()
    cal = [12.345678, 0.7312345, 1.25e-7]
    p = gio.write_n42(tmp_path / "s.n42", c, cal, livetime_s=123.25, realtime_s=130.5, title="t", remarks=["r1"])
    s = gio.read_spectrum(p)
    assert np.array_equal(s.counts, c)
    assert s.edges_kev == pytest.approx(gio.polynomial_edges(cal, c.size), rel=1e-6, abs=1e-4)  # float32 precision
    assert s.meta["calibration"] == pytest.approx(cal, rel=1e-6)
    assert s.livetime_s == pytest.approx(123.25) and s.realtime_s == pytest.approx(130.5)
    assert s.meta["format"] == "specutils"
    # the file is N42-2012 XML, written atomically (no temporary file left)
    text = p.read_text()
    assert 'xmlns="http://physics.nist.gov/N42/2011/N42"' in text and "<ChannelData" in text
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.n42"]


def _specfile(c: np.ndarray, cal: list[float], detector: str | None = None):
    m = su.Measurement.new()
    m.setGammaCounts(c.tolist(), 100.0, 101.0)
    m.setEnergyCalibration(su.EnergyCalibration.fromPolynomial(int(c.size), cal))
    sf = su.SpecFile()
    sf.addMeasurement(m, True)
    if detector is not None:
        sf.setDetectorType(getattr(su.DetectorType, detector))
    return sf


@pytest.mark.parametrize("fmt,suffix", [("N42_2006", ".n42"), ("Pcf", ".pcf"), ("SpcBinaryInt", ".spc"), ("Chn", ".chn")])
def test_specutils_formats_read(tmp_path: Path, fmt: str, suffix: str) -> None:
    c, cal = _counts(), [1.5, 2.9]
    sf = _specfile(c, cal)
    p = tmp_path / f"s{suffix}"
    sf.writeToFile(str(p), sf.sampleNumbers(), sf.detectorNames(), getattr(su.SaveSpectrumAsType, fmt))
    s = gio.read_spectrum(p)
    # CHN stores the first and last two channels as zero (ORTEC convention): compare the rest
    inner = slice(2, -2) if fmt == "Chn" else slice(None)
    assert np.array_equal(s.counts[inner], c[inner])
    assert s.edges_kev == pytest.approx(gio.polynomial_edges(cal, c.size), rel=1e-5, abs=1e-3)
    assert s.livetime_s == pytest.approx(100.0)


def test_declared_detector_and_measured_resolution(tmp_path: Path) -> None:
    c = _counts()
    sf = _specfile(c, [0.0, 1.6], detector="Falcon5000")  # Canberra's Falcon 5000 is an HPGe instrument
    p = tmp_path / "ge.n42"
    sf.writeToFile(str(p), sf.sampleNumbers(), sf.detectorNames(), su.SaveSpectrumAsType.N42_2012)
    s = gio.read_spectrum(p)
    assert s.detector_kind == "HPGe"
    ev = dc.identify(s.counts, s.edges_kev, s.detector_kind)
    assert ev.source == "file" and ev.resolution_class == "semiconductor"
    # measured: the line is 12 channels sigma x 1.6 keV = 45 keV FWHM at 640 keV: ~7 % at 662 keV
    r662, n = dc.measure_resolution(s.counts, s.edges_kev)
    assert n >= 1 and 0.05 < r662 < 0.09
    assert dc.identify(s.counts, s.edges_kev, None).resolution_class == "scintillator"

    from neurotrain.tasks.gamma.specutils_io import detector_kind

    assert detector_kind("RadiaCodeCsI10") == "CsI" and detector_kind("HPGe") == "HPGe"
    assert detector_kind("RadHunterNaI") == "NaI" and detector_kind("RadionuclideIdentifier", "Ortec") is None


@pytest.fixture
def realfiles(realdata: Path) -> list[Path]:
    files = sorted(p for p in realdata.iterdir() if p.is_file() and p.suffix.lower() != ".md")
    if not files:
        pytest.skip("no real gamma files")
    return files


def test_every_real_file_reads(realfiles: list[Path]) -> None:
    """Every sample file reads; the three without a usable calibration say so in one line and read with one."""
    for p in realfiles:
        try:
            s = gio.read_spectrum(p)
        except DataError as e:
            assert "\n" not in str(e) and str(p) in str(e) and "energy calibration is" in str(e), str(e)
            s = gio.read_spectrum(p, calibration=[0.0, 3000.0 / 4096])
        assert s.counts.size >= 1000 and s.counts.sum() > 1e5 and np.all(np.diff(s.edges_kev) > 0)


def test_spe_parser_agrees_with_specutils(realfiles: list[Path]) -> None:
    """Two independent readers of each SPE file: our parser and SpecUtils give the same counts and times, and
    the same calibration where the file has one."""
    from neurotrain.tasks.gamma.text_formats import read_spe

    spe = [p for p in realfiles if p.suffix.lower() == ".spe"]
    for p in spe:
        ours = read_spe(p, gio.MAX_CHANNELS)
        sf = su.SpecFile()
        sf.loadFile(str(p), su.ParserType.SpeIaea, "")
        m = sf.measurement(0)
        assert np.array_equal(ours.counts, np.asarray(m.gammaCounts(), dtype=np.float64)), p.name
        assert ours.livetime_s == pytest.approx(m.liveTime(), rel=1e-6)
        if ours.calibration is not None:
            edges = gio.polynomial_edges(ours.calibration, ours.counts.size)
            assert edges == pytest.approx(np.asarray(m.channelEnergies()), rel=1e-5, abs=1e-3), p.name


def test_real_detectors_identified(realdata: Path) -> None:
    hpge = ["Mendocino_07-10-13_Acq-10-10-13.Spe", "1110C NAA cave pottery.Spe", "Alcatraz14.Spc",
            "01122014152731-GT01122014182338-GA37.4963000N-GO122.4633000W.cnf"]
    scint = {"SGM102432.spe": [0.0, 0.7], "digibase_5min_30_1.spe": [0.0, 2.93]}
    for name in hpge:
        p = realdata / name
        if p.is_file():
            s = gio.read_spectrum(p)
            ev = dc.identify(s.counts, s.edges_kev, s.detector_kind)
            assert ev.resolution_class == "semiconductor" and ev.kind == "HPGe", (name, ev)
            assert ev.r662 < 0.006  # 0.2-0.3 % at 662 keV
    for name, cal in scint.items():
        p = realdata / name
        if p.is_file():
            s = gio.read_spectrum(p, calibration=cal)
            assert dc.identify(s.counts, s.edges_kev, s.detector_kind).resolution_class == "scintillator", name


# ---------------------------------------------------------------- predict: N42 output and the detector check
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """An untrained small model on the small test grid (512 channels, 20-2000 keV): predict's plumbing only."""
    from neurotrain.tasks.gamma.models import build_model

    from .conftest import small_config

    cfg = small_config(tmp_path_factory.mktemp("cache"))
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _scint_file(tmp_path: Path) -> Path:
    """A NaI-like Cs-137 spectrum (7 % FWHM at 662 keV) as IEC 1455 on 1024 channels of 2 keV."""
    e = 1.0 + 2.0 * np.arange(1024)
    sig = 0.07 * 662 / 2.3548
    lam = 400 * np.exp(-e / 400) + 5000 * np.exp(-0.5 * ((e - 662) / sig) ** 2) + 20
    c = np.random.default_rng(1).poisson(lam).astype(np.float64)
    return gio.write_iec1455(tmp_path / "cs.iec", c, [0.0, 2.0], 100.0, 100.0)


def test_predict_writes_n42_that_reads_back(tmp_path: Path, tiny) -> None:
    from neurotrain.tasks.gamma.predict import predict_files

    cfg, model = tiny
    out = predict_files(cfg, model, [_scint_file(tmp_path)], tmp_path / "out" / "x.n42", plot=False, verbose=False)
    names = sorted(p.name for p in out)
    assert names == ["x.n42", "x_enhanced.csv", "x_enhanced.h5", "x_peaks.csv"]
    s = gio.read_spectrum(tmp_path / "out" / "x.n42")
    edges = np.linspace(cfg.simulate.e_min_kev, cfg.simulate.e_max_kev, cfg.simulate.n_channels + 1)
    assert s.edges_kev == pytest.approx(edges, rel=1e-5)
    assert s.livetime_s == pytest.approx(100.0)
    import h5py

    with h5py.File(tmp_path / "out" / "x_enhanced.h5") as f:
        assert s.counts == pytest.approx(f["enhanced"][...], rel=1e-5, abs=1e-3)  # float32 in N42
        assert "scintillator" in f.attrs["detector"]
    with pytest.raises(ConfigError, match=r"an \.n42 output takes one input file"):
        predict_files(cfg, model, [tmp_path / "cs.iec", tmp_path / "cs.iec"], tmp_path / "y.n42", plot=False, verbose=False)
    with pytest.raises(ConfigError, match="crystl: unknown option"):
        predict_files(cfg, model, [tmp_path / "cs.iec"], tmp_path / "o", crystl="CsI")
    with pytest.raises(ConfigError, match="detector_check"):
        predict_files(cfg, model, [tmp_path / "cs.iec"], tmp_path / "o", detector_check="maybe")


def test_predict_refuses_hpge_file_for_scintillator_model(tmp_path: Path, tiny) -> None:
    from neurotrain.tasks.gamma.predict import predict_files

    cfg, model = tiny
    c = _counts(4096)
    sf = _specfile(c, [0.0, 0.5], detector="Falcon5000")
    good = _scint_file(tmp_path)
    ge = tmp_path / "ge.n42"
    sf.writeToFile(str(ge), sf.sampleNumbers(), sf.detectorNames(), su.SaveSpectrumAsType.N42_2012)
    with pytest.raises(DataError, match=r"ge\.n42: detector: expected a spectrum of the model's input detector \(LYSO") as e:
        predict_files(cfg, model, [good, ge], tmp_path / "out", plot=False, verbose=False)
    assert "\n" not in str(e.value) and "HPGe (declared in the file" in str(e.value)
    assert not (tmp_path / "out").exists()  # every input is checked before the first output is written
    out = predict_files(cfg, model, [ge], tmp_path / "out", plot=False, verbose=False, detector_check="warn")
    assert "HPGe" in (tmp_path / "out" / "ge_peaks.csv").read_text().splitlines()[0] and len(out) == 4
    # the user naming a scintillator crystal does not make an HPGe file one
    with pytest.raises(DataError, match="detector"):
        predict_files(cfg, model, [ge], tmp_path / "o2", plot=False, verbose=False, crystal="NaI")


def test_n42_with_several_records(tmp_path: Path) -> None:
    """A background record is left out; two foreground detectors are summed (SpecUtils' sum)."""
    c = _counts()
    sf = su.SpecFile()
    for name, counts, kind in (("A", c, su.SourceType.Foreground), ("B", c * 2, su.SourceType.Foreground),
                               ("A", c * 100, su.SourceType.Background)):
        m = su.Measurement.new()
        m.setGammaCounts(counts.tolist(), 10.0, 10.0)
        m.setEnergyCalibration(su.EnergyCalibration.fromPolynomial(int(c.size), [0.0, 3.0]))
        m.setDetectorName(name)
        m.setSourceType(kind)
        m.setSampleNumber(2 if kind == su.SourceType.Background else 1)
        sf.addMeasurement(m, True)
    p = tmp_path / "multi.n42"
    sf.writeToFile(str(p), sf.sampleNumbers(), sf.detectorNames(), su.SaveSpectrumAsType.N42_2012)
    s = gio.read_spectrum(p)
    assert s.meta["records"] == 2
    assert s.counts == pytest.approx(3 * c, rel=1e-6)


def test_predict_input_folder_and_output_in_the_way(tmp_path: Path, tiny) -> None:
    from neurotrain.tasks.gamma.predict import expand_inputs, predict_files

    cfg, model = tiny
    src = tmp_path / "in"
    src.mkdir()
    _scint_file(src)
    (src / "notes.txt").write_text("not a spectrum")
    assert [p.name for p in expand_inputs([src])] == ["cs.iec"]
    with pytest.raises(DataError, match="empty: folder: expected spectrum files"):
        (tmp_path / "empty").mkdir()
        expand_inputs([tmp_path / "empty"])
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match="an existing file is in the way"):
        predict_files(cfg, model, [src], tmp_path / "taken", plot=False, verbose=False)
    out = predict_files(cfg, model, [src], tmp_path / "out", plot=False, verbose=False)
    assert sorted(p.name for p in out) == ["cs_enhanced.csv", "cs_enhanced.h5", "cs_enhanced.n42", "cs_peaks.csv"]


def test_default_law_far_from_the_files_peaks_gets_a_notice(tmp_path: Path, tiny) -> None:
    from neurotrain.tasks.gamma.predict import check_inputs

    cfg, _ = tiny
    e = 1.0 + 2.0 * np.arange(1024)
    lam = 300 * np.exp(-e / 500) + 20
    for line, amp in ((662.0, 3000.0), (1173.0, 2000.0), (1332.0, 2000.0)):  # 25 % FWHM at 662 keV (E^0.5 law)
        sig = 0.25 * 662 * (line / 662) ** 0.5 / 2.3548
        lam = lam + amp * np.exp(-0.5 * ((e - line) / sig) ** 2)
    wide = gio.write_iec1455(tmp_path / "wide.iec", np.random.default_rng(2).poisson(lam).astype(float), [0.0, 2.0], 100.0, 100.0)
    (spec, ev, note), = check_inputs(cfg, [wide], tmp_path / "o")
    assert ev.n_peaks >= 2 and 0.17 < ev.r662 < 0.33
    assert note is not None and "the model is told 10.0 % (the default law)" in note
    (_, _, note2), = check_inputs(cfg, [wide], tmp_path / "o", fwhm_662=0.25)
    assert note2 is None  # the user set the law: no notice
    (_, _, note3), = check_inputs(cfg, [_scint_file(tmp_path)], tmp_path / "o")
    assert note3 is None  # 7 % peaks with the 10 % default: close enough
