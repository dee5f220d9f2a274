"""SMAP/DECODE ``*_3dcal.mat`` cubic-spline calibrations: reading (v5 and v7.3) and exact evaluation.

The synthetic files follow SMAP's layout: ``SXY.cspline.coeff`` ``[Na, Nb, Nz, 64]`` in MATLAB
axis order with term ``16 p_z + 4 p_b + p_a`` (``Spline3D_interp``), ``x0`` 1-based, ``z0`` the
z voxel coordinate of focus, ``dz`` nm. Axis ``a`` is the camera row (our y).
"""

from math import comb

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.smlm.config import PSFSection
from neurotrain.tasks.smlm.psf import render_emitters
from neurotrain.tasks.smlm.simulate import simulate_batch
from neurotrain.tasks.smlm.spline import gaussian_calibration, render_spline, tricubic, write_calibration
from neurotrain.tasks.smlm.spline_mat import evaluate_cspline, read_smap_calibration, render_cspline

# --- writers of MATLAB-layout files ---------------------------------------------------------------


def _write_v5(path, coeff, dz, z0, x0, *, cell=False, second=None, struct_array=False, pixel_um=None):
    if cell or second is not None:
        c = np.empty((1, 1 if second is None else 2), dtype=object)
        c[0, 0] = coeff
        if second is not None:
            c[0, 1] = second
        coeff = c
    cs = {"coeff": coeff, "dz": float(dz), "z0": float(z0), "x0": float(x0)}
    if struct_array:  # SXY(1) is the one used; SXY(2) differs
        sxy = np.zeros((1, 2), dtype=[("cspline", object)])
        sxy[0, 0]["cspline"] = cs
        sxy[0, 1]["cspline"] = {**cs, "dz": 2 * float(dz)}
    else:
        sxy = {"cspline": cs}
    mdict = {"SXY": sxy}
    if pixel_um is not None:
        mdict["parameters"] = {"cam_pixelsize_um": np.asarray(pixel_um, dtype=float)}
    scipy.io.savemat(path, mdict)
    return path


def _write_v73(path, coeff, dz, z0, x0, *, cell=True, second=None):
    """As MATLAB ``save -v7.3``: HDF5 behind a 512-byte header, axes reversed, cells as references."""
    def matlab(ds, cls):
        ds.attrs["MATLAB_class"] = np.bytes_(cls)
        return ds

    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        sxy = f.create_group("SXY")
        sxy.attrs["MATLAB_class"] = np.bytes_("struct")
        cs = sxy.create_group("cspline")
        cs.attrs["MATLAB_class"] = np.bytes_("struct")
        if cell:
            chans = [coeff] if second is None else [coeff, second]
            r = [matlab(refs.create_dataset(f"c{i}", data=np.asarray(c, np.float32).T), "single").ref
                 for i, c in enumerate(chans)]
            matlab(cs.create_dataset("coeff", data=np.array(r, dtype=h5py.ref_dtype).reshape(-1, 1)), "cell")
        else:
            matlab(cs.create_dataset("coeff", data=np.asarray(coeff, np.float32).T), "single")
        for name, v in (("dz", dz), ("z0", z0), ("x0", x0)):
            matlab(cs.create_dataset(name, data=np.array([[float(v)]])), "double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    return path


WRITERS = {"v5": _write_v5, "v73": _write_v73}

# --- a known tricubic polynomial as SMAP coefficients -----------------------------------------------


def _shift_matrix(n: int) -> np.ndarray:
    """``M[v, i, p] = C(i, p) v^(i-p)``: (v + t)^i = sum_p M[v, i, p] t^p."""
    m = np.zeros((n, 4, 4))
    for v in range(n):
        for i in range(4):
            for p in range(i + 1):
                m[v, i, p] = comb(i, p) * float(v) ** (i - p)
    return m


def _poly_coeff(poly: np.ndarray, na: int, nb: int, nz: int) -> np.ndarray:
    """SMAP coefficients of f(s_a, s_b, s_z) = sum poly[i, j, k] s_a^i s_b^j s_z^k on an
    ``na x nb x nz`` voxel grid, each voxel's Taylor expansion in its offsets."""
    c = np.einsum("ijk,aip,bjq,ckr->abcpqr", poly, _shift_matrix(na), _shift_matrix(nb), _shift_matrix(nz))
    return c.transpose(0, 1, 2, 5, 4, 3).reshape(na, nb, nz, 64)  # term 16 p_z + 4 p_b + p_a


def _poly_value(poly: np.ndarray, sa, sb, sz):
    pa = np.stack([np.ones_like(sa), sa, sa**2, sa**3], -1)
    pb = np.stack([np.ones_like(sb), sb, sb**2, sb**3], -1)
    pz = np.stack([np.ones_like(sz), sz, sz**2, sz**3], -1)
    return np.einsum("ijk,...i,...j,...k->...", poly, pa, pb, pz)


@pytest.fixture
def poly() -> np.ndarray:
    # positive and deliberately different along a, b and z, so any swap of axes or term order shows
    rng = np.random.default_rng(7)
    return rng.uniform(0.1, 1.0, (4, 4, 4)) * np.array([1.0, 0.3, 0.05, 0.004])[:, None, None] \
        * np.array([1.0, 0.6, 0.02, 0.001])[None, :, None] * np.array([1.0, 0.5, 0.1, 0.03])[None, None, :]


# --- SMAP's Spline3D_interp on a PSF stack, for the Gaussian comparisons ------------------------------


def _smap_coefficients(psf: np.ndarray) -> np.ndarray:
    """SMAP ``Spline3D_interp``: upsample ``psf`` ``[Na, Nb, Nz]`` 3x with a not-a-knot cubic spline
    per axis (MATLAB ``interp3(..., 'spline')``), then solve each voxel's 4x4x4 samples for its 64
    coefficients. Returns ``[Na-1, Nb-1, Nz-1, 64]``."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.interpolate import make_interp_spline

    up = psf.astype(np.float64)
    for ax in range(3):
        n = psf.shape[ax]
        up = make_interp_spline(np.arange(n), up, k=3, axis=ax)(np.arange(3 * n - 2) / 3)
    vinv = np.linalg.inv(np.array([[(i / 3) ** p for p in range(4)] for i in range(4)]))
    win = sliding_window_view(up, (4, 4, 4))[::3, ::3, ::3]  # [Na-1, Nb-1, Nz-1, i_a, i_b, i_z]
    c = np.einsum("abcijk,pi,qj,rk->abcpqr", win, vinv, vinv, vinv, optimize=True)
    return c.transpose(0, 1, 2, 5, 4, 3).reshape(*c.shape[:3], 64).astype(np.float32)


@pytest.fixture(scope="module")
def gauss_cal(tmp_path_factory):
    """The astigmatic Gaussian PSF as our HDF5 z-stack and as SMAP v5 / v7.3 calibrations."""
    d = tmp_path_factory.mktemp("gauss")
    astig = PSFSection(kind="astigmatic")
    stack, dz, z0_nm = gaussian_calibration(astig, 100.0, dz_nm=50.0)  # [Nz, Ny, Nx], 21 px
    stack = stack / stack.sum((1, 2), keepdims=True)
    h5 = write_calibration(d / "cal.h5", stack, dz, z0_nm)
    coeff = _smap_coefficients(stack.transpose(1, 2, 0))  # MATLAB order [rows, cols, z]
    x0 = (stack.shape[1] - 1) / 2 + 1  # 1-based centre pixel
    z0 = -z0_nm / dz
    return {"astig": astig, "h5": h5, "v5": _write_v5(d / "cal_v5.mat", coeff, dz, z0, x0),
            "v73": _write_v73(d / "cal_v73.mat", coeff, dz, z0, x0)}


def _render(path, x, y, z, ph, size=40, pixel_size_nm=None):
    g = torch.arange(x.numel())
    return render_spline(g, x.numel(), x, y, z, ph, size, size, PSFSection(kind="spline", calibration=path),
                         pixel_size_nm)


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["v5", "v73"])
@pytest.mark.parametrize("cell", [False, True])
def test_rendering_equals_the_known_polynomial(tmp_path, poly, fmt, cell) -> None:
    na, nb, nz, dz, z0, x0 = 5, 7, 4, 25.0, 1.5, 3
    path = WRITERS[fmt](tmp_path / "p.mat", _poly_coeff(poly, na, nb, nz), dz, z0, x0, cell=cell)
    x = torch.tensor([6.3, 9.81, 4.5], dtype=torch.float64)
    y = torch.tensor([8.7, 5.05, 6.5], dtype=torch.float64)
    z = torch.tensor([-20.0, 33.0, 0.0], dtype=torch.float64)
    ph = torch.tensor([100.0, 250.0, 10.0], dtype=torch.float64)
    img = _render(path, x, y, z, ph, size=16).numpy()
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    for e in range(3):
        sa = r + 0.5 - y[e].item() + (x0 - 1)  # rows are SMAP's first axis
        sb = c + 0.5 - x[e].item() + (x0 - 1)
        sz = np.full_like(sa, z[e].item() / dz + z0)
        inside = (sa >= 0) & (sa < na) & (sb >= 0) & (sb < nb)
        want = np.where(inside, _poly_value(poly, sa, sb, sz), 0.0) * ph[e].item()
        assert inside.sum() == na * nb
        np.testing.assert_allclose(img[e], want, rtol=2e-5, atol=1e-6 * want.max())


def test_point_evaluation_equals_the_polynomial_and_c000_at_voxel_corners(tmp_path, poly) -> None:
    na, nb, nz = 4, 6, 5
    cal = read_smap_calibration(_write_v5(tmp_path / "p.mat", _poly_coeff(poly, na, nb, nz), 10.0, 2.0, 2))
    coeff = torch.as_tensor(cal.coeff, dtype=torch.float64)
    rng = np.random.default_rng(1)
    s = rng.uniform(0, 1, (200, 3)) * [nz, na, nb]
    got = evaluate_cspline(coeff, *torch.as_tensor(s).unbind(1)).numpy()
    np.testing.assert_allclose(got, _poly_value(poly, s[:, 1], s[:, 2], s[:, 0]), rtol=2e-5)
    # integer coordinates: exactly the constant terms c_000 of random coefficients
    rnd = rng.uniform(0, 1, (na, nb, nz, 64)).astype(np.float32)
    cal = read_smap_calibration(_write_v5(tmp_path / "r.mat", rnd, 10.0, 2.0, 2))
    a, b, k = np.meshgrid(np.arange(na), np.arange(nb), np.arange(nz), indexing="ij")
    got = evaluate_cspline(torch.as_tensor(cal.coeff), *(torch.as_tensor(v, dtype=torch.float32) for v in (k, a, b)))
    np.testing.assert_array_equal(got.numpy(), rnd[..., 0])
    assert evaluate_cspline(torch.as_tensor(cal.coeff), *torch.tensor([[1.0], [-0.5], [na - 1.0]])).item() == 0.0


def test_emitter_on_a_voxel_corner_renders_c000(tmp_path) -> None:
    rnd = np.random.default_rng(2).uniform(0, 1, (6, 6, 5, 64)).astype(np.float32)
    path = _write_v5(tmp_path / "r.mat", rnd, 40.0, 2.0, 4)  # emitter at voxel (3, 3)
    # pixel centre (r + 0.5) - y + 3 is an integer, z = (1 - z0) dz: voxel 1 at offset 0
    img = _render(path, torch.tensor([10.5]), torch.tensor([7.5]), torch.tensor([-40.0]), torch.tensor([1.0]), 20)[0]
    np.testing.assert_allclose(img[7 - 3:7 + 3, 10 - 3:10 + 3].numpy(), rnd[:, :, 1, 0], rtol=1e-6)
    assert img.sum().item() == pytest.approx(rnd[:, :, 1, 0].sum(), rel=1e-5)


def test_hdf5_stack_as_coefficients_equals_direct_catmull_rom(tmp_path) -> None:
    stack = np.random.default_rng(3).uniform(0.5, 1.0, (6, 7, 9))
    path = write_calibration(tmp_path / "s.h5", stack, 30.0, -90.0)
    vol = torch.as_tensor(stack / stack.sum((1, 2), keepdims=True))
    x = torch.tensor([6.3, 9.0, 4.71], dtype=torch.float64)
    # (a pixel centre exactly on the stack's far edge is inside for tricubic, outside for the
    # half-open voxel grid, so no y here puts one there)
    y = torch.tensor([8.7, 5.05, 6.45], dtype=torch.float64)
    z = torch.tensor([-20.0, 33.0, 500.0], dtype=torch.float64)  # the last beyond the stack: end slice
    img = _render(path, x, y, z, torch.ones(3, dtype=torch.float64), size=16)
    r = torch.arange(16, dtype=torch.float64)
    for e in range(3):
        vy = (r[:, None] + 0.5 - y[e] + 3).expand(16, 16)
        vx = (r[None, :] + 0.5 - x[e] + 4).expand(16, 16)
        want = tricubic(vol, ((z[e] + 90.0) / 30.0).expand(16, 16), vy, vx).clamp(min=0)
        torch.testing.assert_close(img[e], want, rtol=1e-5, atol=1e-7)
        assert (want > 0).sum() >= 6 * 8  # the whole footprint was compared


@pytest.mark.parametrize("fmt", ["v5", "v73"])
def test_gaussian_calibration_agrees_with_hdf5_stack_and_analytic_psf(gauss_cal, fmt) -> None:
    x = torch.tensor([10.3, 20.7, 15.5, 12.0, 27.25], dtype=torch.float64)
    y = torch.tensor([12.2, 17.9, 8.5, 30.6, 20.0], dtype=torch.float64)
    z = torch.tensor([-410.0, 0.0, 333.0, 600.0, -120.0], dtype=torch.float64)
    ph = torch.tensor([1000.0, 2000.0, 3000.0, 500.0, 1500.0], dtype=torch.float64)
    m = _render(gauss_cal[fmt], x, y, z, ph)
    h = _render(gauss_cal["h5"], x, y, z, ph)
    a = render_emitters(torch.arange(5), 5, x, y, z, ph, 40, 40, gauss_cal["astig"], 100.0)
    peak = a.amax((1, 2))
    # the same samples interpolated two ways: SMAP's spline vs our Catmull-Rom (measured <= 1.4 %)
    assert ((m - h).abs().amax((1, 2)) < 0.02 * peak).all()
    assert ((m - a).abs().amax((1, 2)) < 0.005 * peak).all()  # measured <= 0.35 % of the peak
    torch.testing.assert_close(m.sum((1, 2)), ph, rtol=0.02, atol=0)  # photons conserved
    centres = torch.arange(40, dtype=torch.float64) + 0.5
    cx = (m.sum(1) * centres).sum(1) / m.sum((1, 2))
    cy = (m.sum(2) * centres).sum(1) / m.sum((1, 2))
    assert (cx - x).abs().max() < 0.05 and (cy - y).abs().max() < 0.05


def test_z_dependence_follows_the_astigmatic_defocus(gauss_cal) -> None:
    z = torch.tensor([-400.0, 0.0, 400.0], dtype=torch.float64)
    x = y = torch.full((3,), 20.0, dtype=torch.float64)
    m = _render(gauss_cal["v5"], x, y, z, torch.ones(3, dtype=torch.float64))
    c = torch.arange(40, dtype=torch.float64) + 0.5 - 20.0
    var_x = (m.sum(1) * c**2).sum(1) / m.sum((1, 2))
    var_y = (m.sum(2) * c**2).sum(1) / m.sum((1, 2))
    from neurotrain.tasks.smlm.psf import psf_sigmas

    sx, sy = psf_sigmas(gauss_cal["astig"], z, 100.0)
    want_x, want_y = sx**2 + 1 / 12, sy**2 + 1 / 12  # pixel integration adds 1/12 px^2
    torch.testing.assert_close(var_x, want_x, rtol=0.05, atol=0)
    torch.testing.assert_close(var_y, want_y, rtol=0.05, atol=0)
    assert var_x[0] > 1.5 * var_y[0] and var_y[2] > 1.5 * var_x[2]  # the ellipse turns through focus


def test_first_struct_element_and_first_channel_are_used(tmp_path, poly) -> None:
    coeff = _poly_coeff(poly, 4, 4, 3)
    ref = read_smap_calibration(_write_v5(tmp_path / "a.mat", coeff, 10.0, 1.0, 2))
    for cal in (read_smap_calibration(_write_v5(tmp_path / "b.mat", coeff, 10.0, 1.0, 2, struct_array=True,
                                                second=2 * coeff)),
                read_smap_calibration(_write_v73(tmp_path / "c.mat", coeff, 10.0, 1.0, 2, second=2 * coeff))):
        assert cal.dz_nm == 10.0 and (cal.z0, cal.ref_y, cal.ref_x) == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(cal.coeff, ref.coeff)


def test_calibration_pixel_size_must_match_the_simulation(tmp_path, poly) -> None:
    path = _write_v5(tmp_path / "p.mat", _poly_coeff(poly, 4, 4, 3), 10.0, 1.0, 2, pixel_um=[0.16, 0.16])
    assert read_smap_calibration(path).pixel_size_nm == pytest.approx((160.0, 160.0))
    one = torch.ones(1, dtype=torch.float64)
    assert _render(path, 5 * one, 5 * one, 0 * one, one, 10, pixel_size_nm=160.0).sum() > 0
    with pytest.raises(ConfigError, match="pixel_size_nm.*160"):
        _render(path, 5 * one, 5 * one, 0 * one, one, 10, pixel_size_nm=100.0)


def _one_line_error(exc_info, *needles: str) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_broken_calibrations_are_one_line_data_errors(tmp_path, poly) -> None:
    good = _poly_coeff(poly, 4, 4, 3)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    cases = {
        garbage: (str(garbage), "MATLAB"),
        tmp_path / "nosxy.mat": ("'SXY'",),
        tmp_path / "nocs.mat": ("'SXY.cspline'",),
        tmp_path / "shape.mat": ("'SXY.cspline.coeff'", "(4, 4, 3, 63)"),
        tmp_path / "nodz.mat": ("'SXY.cspline.dz'",),
        tmp_path / "h5nosxy.mat": ("'SXY'",),
        tmp_path / "h5shape.mat": ("'SXY.cspline.coeff'",),
    }
    scipy.io.savemat(tmp_path / "nosxy.mat", {"psf": np.ones((3, 3))})
    scipy.io.savemat(tmp_path / "nocs.mat", {"SXY": {"bspline": 1.0}})
    _write_v5(tmp_path / "shape.mat", good[..., :63], 10.0, 1.0, 2)
    scipy.io.savemat(tmp_path / "nodz.mat", {"SXY": {"cspline": {"coeff": good, "z0": 1.0, "x0": 2.0}}})
    with h5py.File(tmp_path / "h5nosxy.mat", "w") as f:
        f["psf"] = np.ones((3, 3))
    _write_v73(tmp_path / "h5shape.mat", good[:, :, 0], 10.0, 1.0, 2, cell=False)
    for path, needles in cases.items():
        with pytest.raises(DataError) as info:
            read_smap_calibration(path)
        _one_line_error(info, str(path), *needles)
    with pytest.raises(ConfigError, match="not found"):
        read_smap_calibration(tmp_path / "missing.mat")


def test_simulator_runs_a_batch_with_a_mat_calibration(tiny_cfg, gauss_cal) -> None:
    cfg = tiny_cfg.model_copy(update={"psf": PSFSection(kind="spline", calibration=gauss_cal["v73"])})
    b = simulate_batch(cfg, 2, torch.Generator().manual_seed(0), "cpu")
    assert b["input"].shape == (2, 3, 16, 16) and torch.isfinite(b["input"]).all()
    assert b["em"][..., 2].abs().max() > 0  # 3D: z simulated
    # the simulator's renderer is the coefficient path
    x, y = torch.tensor([8.2]), torch.tensor([7.6])
    z, ph = torch.tensor([150.0]), torch.tensor([1000.0])
    via_psf = render_emitters(torch.zeros(1, dtype=torch.long), 1, x, y, z, ph, 16, 16, cfg.psf, 100.0)
    direct = render_cspline(gauss_cal["v73"], torch.zeros(1, dtype=torch.long), 1, x, y, z, ph, 16, 16)
    torch.testing.assert_close(via_psf, direct)
    assert direct.sum() > 0.9 * ph.sum()
