"""Readers and writers: small files written here, and the real sample spectra when present."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from neurotrain.errors import DataError
from neurotrain.tasks.gamma import io as gio


def _counts(n: int = 256) -> np.ndarray:
    x = np.arange(n)
    return (5 + 200 * np.exp(-0.5 * ((x - 120) / 3) ** 2)).round()


def write_spe(path: Path, counts: np.ndarray, cal: list[float] | None) -> Path:
    lines = ["$SPEC_ID:", "test spectrum", "$DATE_MEA:", "01/02/2020 10:00:00", "$MEAS_TIM:", "100 110", "$DATA:", f"0 {len(counts) - 1}"]
    lines += [f"{int(c):8d}" for c in counts]
    if cal is not None:
        lines += ["$ENER_FIT:", " ".join(f"{c:f}" for c in cal[:2]), "$MCA_CAL:", "3", " ".join(f"{c:E}" for c in (cal + [0.0, 0.0])[:3]) + " keV"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_spe_roundtrip_with_calibration(tmp_path: Path) -> None:
    c = _counts()
    s = gio.read_spectrum(write_spe(tmp_path / "a.spe", c, [1.0, 2.0]))
    assert np.array_equal(s.counts, c)
    assert s.edges_kev[0] == pytest.approx(1.0) and s.edges_kev[1] == pytest.approx(3.0)
    assert s.livetime_s == pytest.approx(100.0)


def test_spe_zero_and_missing_calibration_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"z\.spe: energy calibration is zero") as e:
        gio.read_spectrum(write_spe(tmp_path / "z.spe", _counts(), [0.0, 0.0]))
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"m\.spe: energy calibration is missing"):
        gio.read_spectrum(write_spe(tmp_path / "m.spe", _counts(), None))
    # a calibration given by the user rescues the file
    s = gio.read_spectrum(tmp_path / "m.spe", calibration=[0.0, 1.5])
    assert s.edges_kev[-1] == pytest.approx(1.5 * 256)


def test_wrong_channel_count_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected 1024 channels, got 256"):
        gio.read_spectrum(write_spe(tmp_path / "a.spe", _counts(), [0.0, 1.0]), expected_channels=1024)
    g = tmp_path / "garbage.spe"
    g.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="garbage.spe: cannot parse as SPE"):
        gio.read_spectrum(g)
    with pytest.raises(DataError, match="unknown spectrum format '.xyz'"):
        (tmp_path / "a.xyz").write_text("1\n")
        gio.read_spectrum(tmp_path / "a.xyz")
    with pytest.raises(DataError, match="file not found"):
        gio.read_spectrum(tmp_path / "none.spe")
    short = tmp_path / "short.csv"
    short.write_text("1\n2\n3\n")
    with pytest.raises(DataError, match="at least 64 channels"):
        gio.read_spectrum(short, calibration=[0, 1])


def test_iec1455_roundtrip(tmp_path: Path) -> None:
    c = _counts(512)
    p = gio.write_iec1455(tmp_path / "s.iec", c, [0.5, 3.0], 100.0, 101.0)
    s = gio.read_spectrum(p)
    assert np.array_equal(s.counts, c)
    assert s.edges_kev[:3] == pytest.approx([0.5, 3.5, 6.5])
    z = gio.write_iec1455(tmp_path / "z.iec", c, [0.0, 0.0], 100.0, 101.0)
    with pytest.raises(DataError, match="energy calibration is missing"):
        gio.read_spectrum(z)


def test_csv_variants(tmp_path: Path) -> None:
    c = _counts()
    e = 10.0 + 2.0 * np.arange(c.size)
    gio.write_csv(tmp_path / "e.csv", {"energy_kev": e, "counts": c})
    s = gio.read_spectrum(tmp_path / "e.csv")
    assert np.array_equal(s.counts, c)
    assert s.centers_kev == pytest.approx(e)
    (tmp_path / "c.csv").write_text("\n".join(str(int(v)) for v in c))
    with pytest.raises(DataError, match="calibration is missing"):
        gio.read_spectrum(tmp_path / "c.csv")
    assert gio.read_spectrum(tmp_path / "c.csv", calibration=[0, 1]).counts.sum() == c.sum()
    bad = tmp_path / "neg.csv"
    bad.write_text("energy_kev,counts\n" + "\n".join(f"{i},{-1 if i == 5 else 1}" for i in range(100)))
    with pytest.raises(DataError, match="negative values"):
        gio.read_spectrum(bad)
    txt = tmp_path / "txt.csv"
    txt.write_text("energy_kev,counts\n1,2\n2,abc\n")
    with pytest.raises(DataError, match="line 3: expected numbers"):
        gio.read_spectrum(txt)


def test_hdf5(tmp_path: Path) -> None:
    c = _counts()
    e = np.linspace(0, 512, c.size + 1)
    gio.write_h5(tmp_path / "s.h5", {"counts": c, "bin_edges_kev": e})
    s = gio.read_spectrum(tmp_path / "s.h5")
    assert np.array_equal(s.counts, c) and np.array_equal(s.edges_kev, e)
    with h5py.File(tmp_path / "nocal.h5", "w") as f:
        f["counts"] = c
    with pytest.raises(DataError, match="calibration is missing"):
        gio.read_spectrum(tmp_path / "nocal.h5")
    with h5py.File(tmp_path / "zero.h5", "w") as f:
        f["counts"] = c
        f.attrs["calibration"] = [0.0, 0.0]
    with pytest.raises(DataError, match="calibration is zero"):
        gio.read_spectrum(tmp_path / "zero.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot open as HDF5"):
        gio.read_spectrum(tmp_path / "junk.h5")


def test_resample_conserves_counts() -> None:
    c = _counts(300)
    src = np.linspace(0, 3000, 301)
    dst = np.linspace(0, 3000, 1025)
    out = gio.resample(c, src, dst)
    assert out.sum() == pytest.approx(c.sum())
    assert 0.5 * (dst[out.argmax()] + dst[out.argmax() + 1]) == pytest.approx(1205, abs=10)


REAL = {
    "01122014152731-GT01122014182338-GA37.4963000N-GO122.4633000W.cnf": 4096,
    "Alcatraz14.Spc": 8192,
    "1110C NAA cave pottery.Spe": 16384,
    "Mendocino_07-10-13_Acq-10-10-13.Spe": 8192,
}


@pytest.mark.parametrize("name,channels", sorted(REAL.items()))
def test_real_hpge_files(realdata: Path, name: str, channels: int) -> None:
    p = realdata / name
    if not p.is_file():
        pytest.skip(f"{p} absent")
    s = gio.read_spectrum(p)
    assert s.counts.size == channels
    assert 2800 < s.edges_kev[-1] < 3200  # all cover about 0-3 MeV
    # the K-40 line at 1460.8 keV stands out in every one of these HPGe spectra
    c = s.centers_kev
    sel = (c > 1440) & (c < 1480)
    assert abs(c[sel][s.counts[sel].argmax()] - 1460.8) < 3.0


def test_real_invalid_and_uncalibrated(realdata: Path) -> None:
    d = realdata / "digibase_5min_30_1.spe"
    if d.is_file():
        with pytest.raises(DataError, match="energy calibration is zero"):
            gio.read_spectrum(d)
    s = realdata / "SGM102432.spe"
    if s.is_file():
        with pytest.raises(DataError, match="energy calibration is missing"):
            gio.read_spectrum(s)
        assert gio.read_spectrum(s, calibration=[0.0, 0.7]).counts.size == 4094
    n = realdata / "nai_detector.spe"
    if n.is_file():
        assert gio.read_spectrum(n, calibration=[0.0, 3.0]).counts.size == 1001
