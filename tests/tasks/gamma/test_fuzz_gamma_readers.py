"""Fuzz every gamma reader (SPE, IEC 1455, CSV, HDF5, N42, PCF, CHN, CNF, SPC) with malformed files made here:
empty, whitespace, binary garbage, truncation at many offsets, corrupted header words (huge declared sizes),
NaN / inf / negative / text counts, one channel, ten million channels, zero, decreasing and 1e30 keV/channel
calibrations, wrong HDF5 dtypes and shapes.

Each case must end in :class:`DataError` with one line that starts with the file's path - or, where a format
cannot tell (a text file cut inside its last number, a binary word in a spare field), in a spectrum that passes
every check of ``read_spectrum`` with exactly the original counts (for a corrupted binary word: with the original
channel count, since a corrupted count is still a count). Nothing else: no other exception, no silently
shorter or different spectrum, no allocation of a declared huge size.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from neurotrain.errors import DataError
from neurotrain.tasks.gamma import io as gio

su = pytest.importorskip("SpecUtils")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

N = 256
TEN_MILLION = 10_000_000


def _counts() -> np.ndarray:
    x = np.arange(N)
    return (20 + 500 * np.exp(-0.5 * ((x - 120) / 4) ** 2)).round()


def _spe_text(counts: np.ndarray | list[str], cal: list[float] | None = (0.5, 3.0), date: bool = True,
              data_range: str | None = None) -> str:
    toks = [str(c) for c in counts] if not isinstance(counts, np.ndarray) else [f"{int(c):8d}" for c in counts]
    lines = ["$SPEC_ID:", "fuzz"] + (["$DATE_MEA:", "01/02/2020 10:00:00"] if date else [])
    lines += ["$MEAS_TIM:", "100 110", "$DATA:", data_range or f"0 {len(toks) - 1}", *toks]
    if cal is not None:
        lines += ["$ENER_FIT:", f"{cal[0]} {cal[1]}", "$MCA_CAL:", "2", f"{cal[0]:E} {cal[1]:E} keV"]
    lines += ["$SHAPE_CAL:", "3", "1.0E+000 0.0E+000 0.0E+000"]
    return "\n".join(lines) + "\n"


def _specutils_file(path: Path, fmt: str, counts: np.ndarray, cal: list[float]) -> Path:
    path.unlink(missing_ok=True)  # SpecUtils does not overwrite
    m = su.Measurement.new()
    m.setGammaCounts(counts.tolist(), 100.0, 101.0)
    m.setEnergyCalibration(su.EnergyCalibration.fromPolynomial(int(counts.size), cal))
    sf = su.SpecFile()
    sf.addMeasurement(m, True)
    sf.writeToFile(str(path), sf.sampleNumbers(), sf.detectorNames(), getattr(su.SaveSpectrumAsType, fmt))
    return path


def _valid(fmt: str, d: Path) -> Path:
    """A valid file of ``fmt`` holding :func:`_counts` with 0.5 + 3.0 ch keV."""
    c = _counts()
    if fmt == "spe":
        (d / "v.spe").write_text(_spe_text(c))
        return d / "v.spe"
    if fmt == "iec":
        return gio.write_iec1455(d / "v.iec", c, [0.5, 3.0], 100.0, 110.0)
    if fmt == "csv":
        return gio.write_csv(d / "v.csv", {"energy_kev": 2.0 + 3.0 * np.arange(N), "counts": c})
    if fmt == "h5":
        return gio.write_h5(d / "v.h5", {"counts": c, "bin_edges_kev": 0.5 + 3.0 * np.arange(N + 1)}, {"livetime": 100.0})
    if fmt == "n42":
        return gio.write_n42(d / "v.n42", c, [0.5, 3.0], 100.0, 110.0)
    suffix, writer = {"pcf": (".pcf", "Pcf"), "chn": (".chn", "Chn"), "cnf": (".cnf", "Cnf"), "spc": (".spc", "SpcBinaryInt")}[fmt]
    return _specutils_file(d / f"v{suffix}", writer, c, [0.5, 3.0])


def _write(d: Path, name: str, data: bytes | str) -> Path:
    p = d / name
    p.write_bytes(data.encode("latin-1") if isinstance(data, str) else data)
    return p


def _generic_cases(fmt: str, d: Path, rng: np.random.Generator) -> list[Path]:
    """Empty, whitespace, garbage, truncations at 24 offsets and corrupted 4-byte words (huge sizes) of a valid file."""
    valid = _valid(fmt, d).read_bytes()
    sfx = "." + fmt
    cases = [_write(d, f"empty{sfx}", b""), _write(d, f"blank{sfx}", b" \n\n  \r\n"),
             _write(d, f"zeros{sfx}", bytes(4096)), _write(d, f"text{sfx}", "hello, spectrum\n" * 20)]
    cases += [_write(d, f"garbage{i}{sfx}", rng.bytes(int(n))) for i, n in enumerate([1, 17, 512, 4096, len(valid)])]
    body = len(valid.rstrip())
    for i, k in enumerate(np.unique(np.linspace(1, body - 1, 24).astype(int))):
        cases.append(_write(d, f"trunc{i}{sfx}", valid[:k]))
    for i in range(8):  # a header word set to 0x7fffffff / 0xffffffff: a huge declared size or offset
        b = bytearray(valid)
        at = int(rng.integers(0, min(len(b) - 4, 1024)))
        b[at:at + 4] = b"\xff\xff\xff\x7f" if i % 2 else b"\xff\xff\xff\xff"
        cases.append(_write(d, f"word{i}{sfx}", bytes(b)))
    return cases


def _specific_cases(fmt: str, d: Path) -> list[Path]:
    """Content errors written in each format's own layout."""
    c, sfx = _counts(), "." + fmt
    bad = c.copy()
    out: list[Path] = []
    if fmt == "spe":
        out += [_write(d, f"nan{sfx}", _spe_text([*map(str, c[:50].astype(int)), "nan", *map(str, c[51:].astype(int))])),
                _write(d, f"inf{sfx}", _spe_text([*map(str, c[:-1].astype(int)), "inf"])),
                _write(d, f"neg{sfx}", _spe_text([*map(str, c[:9].astype(int)), "-5", *map(str, c[10:].astype(int))])),
                _write(d, f"word{sfx}", _spe_text([*map(str, c[:9].astype(int)), "ten", *map(str, c[10:].astype(int))])),
                _write(d, f"one{sfx}", _spe_text(c[:1])),
                _write(d, f"tenmillion{sfx}", _spe_text(c, data_range=f"0 {TEN_MILLION - 1}")),
                _write(d, f"reversed{sfx}", _spe_text(c, data_range="255 0")),
                _write(d, f"zerocal{sfx}", _spe_text(c, cal=[0.0, 0.0])),
                _write(d, f"nocal{sfx}", _spe_text(c, cal=None)),
                _write(d, f"deccal{sfx}", _spe_text(c, cal=[3000.0, -3.0])),
                _write(d, f"hugecal{sfx}", _spe_text(c, cal=[0.0, 1e30])),
                _write(d, f"badtime{sfx}", _spe_text(c).replace("100 110", "abc"))]
    elif fmt == "iec":
        v = _valid("iec", d).read_text()
        recs = v.splitlines()
        out += [gio.write_iec1455(d / f"neg{sfx}", np.where(np.arange(N) == 7, -5, c), [0.5, 3.0], 100.0, 110.0),
                gio.write_iec1455(d / f"one{sfx}", c[:1], [0.5, 3.0], 100.0, 110.0),
                gio.write_iec1455(d / f"zerocal{sfx}", c, [0.0, 0.0], 100.0, 110.0),
                gio.write_iec1455(d / f"deccal{sfx}", c, [3000.0, -3.0], 100.0, 110.0),
                gio.write_iec1455(d / f"hugecal{sfx}", c, [0.0, 1e30], 100.0, 110.0),
                _write(d, f"tenmillion{sfx}", "\n".join([recs[0], recs[1].replace(f"{N:8d}", f"{TEN_MILLION:8d}"), *recs[2:]])),
                _write(d, f"nan{sfx}", "\n".join(recs[:60] + [recs[60][:14] + "       nan" + recs[60][24:]] + recs[61:])),
                _write(d, f"prefix{sfx}", "\n".join(recs[:30] + ["B004 nothing"] + recs[31:]))]
    elif fmt == "csv":
        e = 2.0 + 3.0 * np.arange(N)
        bad[5] = np.nan
        out += [gio.write_csv(d / f"nan{sfx}", {"energy_kev": e, "counts": bad}),
                gio.write_csv(d / f"neg{sfx}", {"energy_kev": e, "counts": np.where(np.arange(N) == 3, -1.0, c)}),
                gio.write_csv(d / f"one{sfx}", {"energy_kev": e[:1], "counts": c[:1]}),
                gio.write_csv(d / f"dec{sfx}", {"energy_kev": e[::-1], "counts": c}),
                gio.write_csv(d / f"hugecal{sfx}", {"energy_kev": 1e30 * np.arange(1, N + 1), "counts": c}),
                gio.write_csv(d / f"flat{sfx}", {"energy_kev": np.full(N, 5.0), "counts": c}),
                _write(d, f"tenmillion{sfx}", "counts\n" + "1\n" * TEN_MILLION),
                _write(d, f"ragged{sfx}", "energy_kev,counts\n1,2\n2,3,4\n"),
                _write(d, f"word{sfx}", "energy_kev,counts\n" + "".join(f"{i},{'x' if i == 70 else 1}\n" for i in range(100)))]
    elif fmt == "h5":
        edges = 0.5 + 3.0 * np.arange(N + 1)

        def h5(name: str, fill: Callable[[h5py.File], None]) -> Path:
            with h5py.File(d / name, "w") as f:
                fill(f)
            return d / name

        bad[9] = np.inf
        out += [h5(f"strings{sfx}", lambda f: (f.create_dataset("counts", data=np.array([b"1"] * N)), f.create_dataset("bin_edges_kev", data=edges))),
                h5(f"ustrings{sfx}", lambda f: (f.create_dataset("counts", data=["a"] * N, dtype=h5py.string_dtype()), f.create_dataset("bin_edges_kev", data=edges))),
                h5(f"compound{sfx}", lambda f: f.create_dataset("counts", data=np.zeros(N, dtype=[("a", "f4"), ("b", "i4")]))),
                h5(f"group{sfx}", lambda f: f.create_group("counts")),
                h5(f"inf{sfx}", lambda f: (f.create_dataset("counts", data=bad), f.create_dataset("bin_edges_kev", data=edges))),
                h5(f"neg{sfx}", lambda f: (f.create_dataset("counts", data=-c), f.create_dataset("bin_edges_kev", data=edges))),
                h5(f"one{sfx}", lambda f: (f.create_dataset("counts", data=c[:1]), f.create_dataset("bin_edges_kev", data=edges[:2]))),
                h5(f"tenmillion{sfx}", lambda f: f.create_dataset("counts", shape=(TEN_MILLION,), dtype="f8")),
                h5(f"twod{sfx}", lambda f: (f.create_dataset("counts", data=np.ones((3, N))), f.create_dataset("bin_edges_kev", data=edges))),
                h5(f"decedges{sfx}", lambda f: (f.create_dataset("counts", data=c), f.create_dataset("bin_edges_kev", data=edges[::-1]))),
                h5(f"wrongedges{sfx}", lambda f: (f.create_dataset("counts", data=c), f.create_dataset("bin_edges_kev", data=edges[:10]))),
                h5(f"hugecal{sfx}", lambda f: (f.create_dataset("counts", data=c), f.attrs.__setitem__("calibration", [0.0, 1e30]))),
                h5(f"zerocal{sfx}", lambda f: (f.create_dataset("counts", data=c), f.attrs.__setitem__("calibration", [0.0, 0.0]))),
                h5(f"textcal{sfx}", lambda f: (f.create_dataset("counts", data=c), f.attrs.__setitem__("calibration", "0,1"))),
                h5(f"strtime{sfx}", lambda f: (f.create_dataset("counts", data=c), f.create_dataset("bin_edges_kev", data=edges), f.attrs.__setitem__("livetime", "long"))),
                h5(f"nocounts{sfx}", lambda f: f.create_dataset("other", data=c))]
    elif fmt == "n42":
        v = _valid("n42", d).read_text()
        coeff = re.search(r"<CoefficientValues>([^<]*)</CoefficientValues>", v).group(1)
        data = re.search(r"(<ChannelData[^>]*>)([^<]*)(</ChannelData>)", v)
        toks = data.group(2).split()

        def chan(name: str, new: list[str]) -> Path:
            return _write(d, name, v.replace(data.group(0), data.group(1) + " ".join(new) + data.group(3)))

        out += [chan(f"nan{sfx}", toks[:100] + ["NaN"] + toks[101:]), chan(f"inf{sfx}", toks[:-1] + ["inf"]),
                chan(f"word{sfx}", toks[:100] + ["ten"] + toks[101:]), chan(f"neg{sfx}", toks[:3] + ["-7"] + toks[4:]),
                chan(f"one{sfx}", toks[:1]), chan(f"empty_data{sfx}", []),
                _write(d, f"tenmillion{sfx}", v.replace(data.group(0), '<ChannelData compressionCode="CountedZeroes">5 0 ' + str(TEN_MILLION) + " 5</ChannelData>")),
                _write(d, f"zerocal{sfx}", v.replace(coeff, "0 0")), _write(d, f"deccal{sfx}", v.replace(coeff, "3000 -3")),
                _write(d, f"hugecal{sfx}", v.replace(coeff, "0 1e30")), _write(d, f"textcal{sfx}", v.replace(coeff, "zero one")),
                _write(d, f"noroot{sfx}", "<?xml version='1.0'?>\n<!-- nothing -->\n")]
    else:  # pcf / chn / cnf / spc: content errors through SpecUtils' own writer
        writer = {"pcf": "Pcf", "chn": "Chn", "cnf": "Cnf", "spc": "SpcBinaryInt"}[fmt]
        out += [_specutils_file(d / f"allzero{sfx}", writer, np.zeros(N), [0.5, 3.0]),
                _specutils_file(d / f"few{sfx}", writer, c[:8], [0.5, 3.0])]  # SpecUtils writes no 1-channel file
        if fmt in ("pcf",):  # float counts: PCF stores float32
            out.append(_specutils_file(d / f"neg{sfx}", writer, -c, [0.5, 3.0]))
    return out


def _check(path: Path, original: np.ndarray, strict: bool = True) -> str | None:
    """None when ``path`` is refused with one line naming it, or reads as exactly ``original`` (not ``strict``:
    as a valid spectrum of as many channels); else why not."""
    try:
        s = gio.read_spectrum(path)
    except DataError as e:
        msg = str(e)
        if "\n" in msg or not msg.startswith(f"{path}: ") or len(msg) > 400:
            return f"{path.name}: message not one line naming the file: {msg!r}"
        return None
    except Exception as e:  # noqa: BLE001 - any other exception is the finding
        return f"{path.name}: {type(e).__name__}: {e}"
    if not strict or path.name.startswith("word"):  # a corrupted binary word in a data field is a valid (odd) count
        return None if s.counts.shape == original.shape else f"{path.name}: accepted with {s.counts.size} channels"
    if s.counts.shape != original.shape or not np.array_equal(s.counts, original):
        return f"{path.name}: accepted as a different spectrum ({s.counts.size} channels, sum {s.counts.sum():g})"
    return None


FORMATS = ["spe", "iec", "csv", "h5", "n42", "pcf", "chn", "cnf", "spc"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_refuses_malformed_files(fmt: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(zlib.crc32(fmt.encode()))  # seeded per format, the same every run
    original = gio.read_spectrum(_valid(fmt, tmp_path)).counts
    if fmt == "chn":  # CHN keeps the first and last two channels zero (ORTEC convention)
        assert np.array_equal(original[2:-2], _counts()[2:-2])
    else:
        assert np.array_equal(original, _counts())
    cases = _generic_cases(fmt, tmp_path, rng) + _specific_cases(fmt, tmp_path)
    assert len(cases) >= 30
    problems = [p for p in (_check(c, original) for c in cases) if p]
    assert not problems, "\n".join(problems)


def test_spe_without_date_is_accepted_and_zero_byte_spe_says_empty(tmp_path: Path) -> None:
    p = _write(tmp_path, "nodate.spe", _spe_text(_counts(), date=False))
    s = gio.read_spectrum(p)
    assert np.array_equal(s.counts, _counts()) and s.livetime_s == 100.0
    with pytest.raises(DataError, match=r"empty\.spe: file is empty \(0 bytes"):
        gio.read_spectrum(_write(tmp_path, "empty.spe", b""))
    with pytest.raises(DataError, match=r"hugecal\.spe: calibration: expected a gain of 0\.0001-1000 keV/channel .*\(got 1e\+30"):
        gio.read_spectrum(_write(tmp_path, "hugecal.spe", _spe_text(_counts(), cal=[0.0, 1e30])))
    with pytest.raises(DataError, match=r"strings\.h5: counts: expected numbers \(got dtype"):
        with h5py.File(tmp_path / "strings.h5", "w") as f:
            f["counts"] = np.array([b"12"] * N)
        gio.read_spectrum(tmp_path / "strings.h5")


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1), noise=st.binary(max_size=64), fmt=st.sampled_from(FORMATS))
def test_hypothesis_truncate_and_append(tmp_path_factory: pytest.TempPathFactory, cut: int, noise: bytes, fmt: str) -> None:
    """A valid file cut anywhere: refused in one line, or read unchanged. With arbitrary bytes appended (which
    can complete a cut record or number with other values): refused, or a valid spectrum of as many channels."""
    d = tmp_path_factory.mktemp("h")
    valid = _valid(fmt, d)
    raw = valid.read_bytes()
    original = gio.read_spectrum(valid).counts
    p = _write(d, f"cut.{fmt}", raw[: cut % len(raw.rstrip())] + noise)
    problem = _check(p, original, strict=not noise)
    assert problem is None, problem


def test_predict_leaves_no_output_for_a_malformed_input(tmp_path: Path, lyso_cfg) -> None:
    """A malformed file among good ones stops predict before anything is written."""
    import torch

    from neurotrain.tasks.gamma.models import build_model
    from neurotrain.tasks.gamma.predict import predict_files

    good = _valid("spe", tmp_path)
    cut = _write(tmp_path, "cut.spe", good.read_bytes()[:300])
    torch.manual_seed(0)
    with pytest.raises(DataError, match=r"cut\.spe: \$DATA: expected 256 counts"):
        predict_files(lyso_cfg, build_model(lyso_cfg).eval(), [good, cut], tmp_path / "out", plot=False, verbose=False)
    assert not (tmp_path / "out").exists()
