"""Fuzz: malformed TIFF movies -> one DataError/ResourceError line naming the file, before any pixel is
used; predict leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurotrain.errors import DataError, NeurotrainError, ResourceError
from neurotrain.tasks.smlm.io import TiffStack

from ._util import assert_one_line, minimal_tiff, raises_one_line, seeded_bytes

TRUNCATE_AT = (1, 4, 8, 16, 40, 100, 200, 300, 500, 1000, 2000, 2600)


def _open_and_read(path: Path) -> None:
    s = TiffStack(path)
    try:
        s[0:len(s)]
    finally:
        s.close()


@pytest.mark.parametrize("cut", TRUNCATE_AT)
def test_truncated_movie(tmp_path: Path, good_movie: bytes, cut: int) -> None:
    assert cut < len(good_movie)
    p = tmp_path / "cut.tif"
    p.write_bytes(good_movie[:cut])
    raises_one_line(lambda: _open_and_read(p), p, DataError)


@pytest.mark.parametrize("seed", range(8))
def test_garbage(tmp_path: Path, seed: int) -> None:
    p = tmp_path / "garbage.tif"
    p.write_bytes(seeded_bytes(seed, 64 + 97 * seed))
    raises_one_line(lambda: _open_and_read(p), p, DataError)


@pytest.mark.parametrize("size", [(200000, 200000), (100000, 300000), (2**31, 4)])
def test_huge_declared_size_fails_before_allocation(tmp_path: Path, size: tuple[int, int]) -> None:
    p = tmp_path / "huge.tif"
    p.write_bytes(minimal_tiff(*size))
    assert p.stat().st_size < 300
    msg = raises_one_line(lambda: TiffStack(p), p, NeurotrainError)
    assert "GiB" in msg or "truncated" in msg


def _write(tmp_path: Path, name: str, arr: np.ndarray, **kw) -> Path:
    import tifffile

    p = tmp_path / name
    tifffile.imwrite(p, arr, **kw)
    return p


@pytest.mark.parametrize("case", ["empty", "rgb", "rgb_planar", "palette", "complex", "nan", "inf", "nan_late",
                                  "header_only", "zero_width"])
def test_wrong_content(tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(1)
    if case == "empty":
        p = tmp_path / "e.tif"
        p.write_bytes(b"")
    elif case == "rgb":
        p = _write(tmp_path, "rgb.tif", rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8), photometric="rgb")
    elif case == "rgb_planar":
        p = _write(tmp_path, "planar.tif", rng.integers(0, 255, (3, 16, 16), dtype=np.uint8), photometric="rgb",
                   planarconfig="separate")
    elif case == "palette":
        p = tmp_path / "pal.tif"
        p.write_bytes(minimal_tiff(16, 16, bits=8, data=b"\0" * 256, photometric=3))
    elif case == "complex":
        p = _write(tmp_path, "c.tif", np.ones((4, 16, 16), np.complex64), photometric="minisblack")
    elif case in ("nan", "inf", "nan_late"):
        a = rng.random((8, 16, 16)).astype(np.float32)
        a[0 if case != "nan_late" else 7, 2, 3] = np.nan if case != "inf" else np.inf
        p = _write(tmp_path, f"{case}.tif", a, photometric="minisblack")
    elif case == "header_only":
        p = tmp_path / "h.tif"
        p.write_bytes(minimal_tiff(16, 16, data=b""))
    else:
        p = tmp_path / "z.tif"
        p.write_bytes(minimal_tiff(0, 16, data=b""))
    raises_one_line(lambda: _open_and_read(p), p, (DataError, ResourceError))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 400), value=st.integers(0, 255))
def test_header_byte_flips_never_crash(tmp_path: Path, good_movie: bytes, pos: int, value: int) -> None:
    """A damaged header either still describes a readable movie (finite frames of the declared shape) or
    stops with our one-line error: never another exception."""
    data = bytearray(good_movie)
    data[pos] = value
    p = tmp_path / "flip.tif"
    p.write_bytes(bytes(data))
    try:
        s = TiffStack(p)
    except NeurotrainError as exc:
        assert_one_line(exc, p)
        return
    try:
        frames = s[0:len(s)]
    except NeurotrainError as exc:
        assert_one_line(exc, p)
        return
    finally:
        s.close()
    assert frames.shape == s.shape and np.isfinite(frames).all()


def test_good_movie_reads(tmp_path: Path, good_movie: bytes) -> None:
    p = tmp_path / "ok.tif"
    p.write_bytes(good_movie)
    s = TiffStack(p)
    assert s.shape == (6, 16, 16) and s.memory_mapped and np.isfinite(s[0:6]).all()
    s.close()
