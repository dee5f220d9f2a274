"""SMLM-challenge scoring (Sage et al., Nat. Methods 16:387, 2019) as a torchmetrics Metric.

Matching: per frame, Hungarian assignment (scipy ``linear_sum_assignment``) of predictions to
ground truth minimising distance, pairs allowed within ``lateral_tol_nm`` (250 nm) laterally
and ``axial_tol_nm`` (500 nm) axially in 3D. Jaccard index JI = TP / (TP + FP + FN) in %;
efficiency E = 100 - sqrt((100 - JI)^2 + alpha^2 RMSE^2) with alpha = 1 nm^-1 lateral and
0.5 nm^-1 axial (challenge definition). RMSE/CRLB is the RMS over matched emitters of each
error divided by that emitter's own Cramér-Rao bound (:mod:`crlb`, EMCCD excess noise 2), so an
efficient estimator scores 1 whatever the brightness mix; ``crlb_lat_nm`` (x-y combined) and
``crlb_ax_nm`` are the medians of the matched emitters' bounds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric


def match_frame(pred: np.ndarray, truth: np.ndarray, lateral_tol: float, axial_tol: float,
                use_z: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching in one frame. ``pred`` ``[n, 3]`` and ``truth`` ``[m, 3]`` (x, y, z nm).

    Cost is the 3D distance (lateral in 2D); pairs beyond the tolerances are forbidden.
    Returns index arrays into ``pred`` and ``truth`` of the matched pairs.
    """
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = pred[:, None, :] - truth[None, :, :]
    lat = np.hypot(d[..., 0], d[..., 1])
    ok = lat <= lateral_tol
    cost = lat
    if use_z:
        ok &= np.abs(d[..., 2]) <= axial_tol
        cost = np.sqrt(lat**2 + d[..., 2] ** 2)
    big = 1e12
    r, c = linear_sum_assignment(np.where(ok, cost, big))
    keep = ok[r, c]
    return r[keep], c[keep]


def match_localisations(pred_frame: np.ndarray, pred_xyz: np.ndarray, truth_frame: np.ndarray, truth_xyz: np.ndarray,
                        lateral_tol: float = 250.0, axial_tol: float = 500.0,
                        use_z: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Match two localisation tables frame by frame; returns matched row indices (pred, truth)."""
    po = np.argsort(pred_frame, kind="stable")
    to = np.argsort(truth_frame, kind="stable")
    pf, tf = pred_frame[po], truth_frame[to]
    frames = np.intersect1d(np.unique(pf), np.unique(tf))
    ps, pe = np.searchsorted(pf, frames, "left"), np.searchsorted(pf, frames, "right")
    ts, te = np.searchsorted(tf, frames, "left"), np.searchsorted(tf, frames, "right")
    mp, mt = [], []
    for a, b, c, d in zip(ps, pe, ts, te):
        i, j = match_frame(pred_xyz[po[a:b]], truth_xyz[to[c:d]], lateral_tol, axial_tol, use_z)
        mp.append(po[a:b][i])
        mt.append(to[c:d][j])
    if not mp:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(mp), np.concatenate(mt)


def efficiency(ji_percent: float, rmse_nm: float, alpha: float) -> float:
    """Challenge efficiency E = 100 - sqrt((100 - JI)^2 + alpha^2 RMSE^2), JI in %, alpha in nm^-1."""
    return 100.0 - math.sqrt((100.0 - ji_percent) ** 2 + (alpha * rmse_nm) ** 2)


def average_precision(prob: np.ndarray, is_tp: np.ndarray, n_truth: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Area under the (monotone) precision-recall curve swept over the detection probability.

    Returns ``(AP, precision, recall)``, the curve ordered by decreasing threshold.
    """
    if n_truth == 0 or len(prob) == 0:
        return 0.0, np.zeros(0), np.zeros(0)
    order = np.argsort(-prob, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    precision = tp / (tp + fp)
    recall = tp / n_truth
    env = np.maximum.accumulate(precision[::-1])[::-1]
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * env)), precision, recall


class SMLMMetrics(Metric):
    """SMLM-challenge metrics, accumulated over batches/frames.

    ``update(pred, truth)`` takes two dicts of 1D tensors: ``pred`` with ``frame``, ``x_nm``,
    ``y_nm``, ``z_nm``, ``photons``, ``prob``; ``truth`` with ``frame``, ``x_nm``, ``y_nm``,
    ``z_nm``, ``photons`` and optionally ``crlb_x_nm``, ``crlb_y_nm``, ``crlb_z_nm`` (see
    :func:`neurotrain.tasks.smlm.crlb.crlb`). Predictions with ``prob < threshold`` count for the
    precision-recall curve only. ``compute()`` returns a flat dict of floats.
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5, lateral_tol_nm: float = 250.0, axial_tol_nm: float = 500.0,
                 alpha_lat: float = 1.0, alpha_ax: float = 0.5, use_z: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold, self.lat_tol, self.ax_tol = threshold, lateral_tol_nm, axial_tol_nm
        self.alpha_lat, self.alpha_ax, self.use_z = alpha_lat, alpha_ax, use_z
        for name in ("n_pred", "n_truth", "tp", "se_x", "se_y", "se_z", "sum_dx", "sum_dy", "sum_dz",
                     "abs_dphot", "rel_dphot", "norm_lat", "norm_ax", "n_crlb"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pr_prob", [], dist_reduce_fx="cat")
        self.add_state("pr_tp", [], dist_reduce_fx="cat")
        self.add_state("crlb_lat_list", [], dist_reduce_fx="cat")
        self.add_state("crlb_ax_list", [], dist_reduce_fx="cat")

    def update(self, pred: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> None:  # type: ignore[override]
        def arr(d: dict[str, torch.Tensor], k: str) -> np.ndarray:
            return d[k].detach().cpu().double().numpy()

        pxyz = np.stack([arr(pred, "x_nm"), arr(pred, "y_nm"), arr(pred, "z_nm") if self.use_z else 0 * arr(pred, "x_nm")], 1)
        txyz = np.stack([arr(truth, "x_nm"), arr(truth, "y_nm"), arr(truth, "z_nm") if self.use_z else 0 * arr(truth, "x_nm")], 1)
        pframe, tframe = arr(pred, "frame").astype(np.int64), arr(truth, "frame").astype(np.int64)
        prob = arr(pred, "prob") if "prob" in pred else np.ones(len(pframe))
        # full candidate list -> PR curve
        ia, _ = match_localisations(pframe, pxyz, tframe, txyz, self.lat_tol, self.ax_tol, self.use_z)
        is_tp = np.zeros(len(pframe), bool)
        is_tp[ia] = True
        self.pr_prob.append(torch.as_tensor(prob, dtype=torch.float64, device=self.device))
        self.pr_tp.append(torch.as_tensor(is_tp, device=self.device))
        # operating point
        sel = np.nonzero(prob >= self.threshold)[0]
        i, j = match_localisations(pframe[sel], pxyz[sel], tframe, txyz, self.lat_tol, self.ax_tol, self.use_z)
        i = sel[i]
        d = pxyz[i] - txyz[j]
        ph_t = arr(truth, "photons")[j]
        ph_p = arr(pred, "photons")[i]
        dev = self.device

        def add(name: str, v: float) -> None:
            setattr(self, name, getattr(self, name) + torch.tensor(float(v), dtype=torch.float64, device=dev))

        add("n_pred", len(sel))
        add("n_truth", len(tframe))
        add("tp", len(i))
        add("se_x", np.sum(d[:, 0] ** 2))
        add("se_y", np.sum(d[:, 1] ** 2))
        add("se_z", np.sum(d[:, 2] ** 2))
        add("sum_dx", d[:, 0].sum())
        add("sum_dy", d[:, 1].sum())
        add("sum_dz", d[:, 2].sum())
        okp = np.isfinite(ph_p)
        add("abs_dphot", np.abs(ph_p - ph_t)[okp].sum())
        add("rel_dphot", (np.abs(ph_p - ph_t) / np.maximum(ph_t, 1e-9))[okp].sum())
        if "crlb_x_nm" in truth:
            cx, cy = arr(truth, "crlb_x_nm")[j], arr(truth, "crlb_y_nm")[j]
            c2 = np.maximum(cx**2 + cy**2, 1e-12)
            ok = np.isfinite(c2)
            add("norm_lat", np.sum((d[ok, 0] ** 2 + d[ok, 1] ** 2) / c2[ok]))
            self.crlb_lat_list.append(torch.as_tensor(np.sqrt(c2[ok]), dtype=torch.float64, device=dev))
            if self.use_z and "crlb_z_nm" in truth:
                cz2 = np.maximum(arr(truth, "crlb_z_nm")[j][ok] ** 2, 1e-12)
                add("norm_ax", np.nansum(d[ok, 2] ** 2 / cz2))
                self.crlb_ax_list.append(torch.as_tensor(np.sqrt(cz2), dtype=torch.float64, device=dev))
            add("n_crlb", int(ok.sum()))

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        tp, n_pred, n_truth = float(self.tp), float(self.n_pred), float(self.n_truth)
        fp, fn = n_pred - tp, n_truth - tp
        nan = float("nan")
        ji = 100.0 * tp / (tp + fp + fn) if tp + fp + fn > 0 else 0.0
        recall = tp / n_truth if n_truth else 0.0
        precision = tp / n_pred if n_pred else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rmse_lat = math.sqrt((float(self.se_x) + float(self.se_y)) / tp) if tp else nan
        rmse_ax = math.sqrt(float(self.se_z) / tp) if tp and self.use_z else nan
        rmse_vol = math.sqrt((float(self.se_x) + float(self.se_y) + float(self.se_z)) / tp) if tp else nan
        eff_lat = efficiency(ji, rmse_lat, self.alpha_lat) if tp else nan
        eff_ax = efficiency(ji, rmse_ax, self.alpha_ax) if tp and self.use_z else nan
        prob = torch.cat(self.pr_prob).cpu().numpy() if isinstance(self.pr_prob, list) and self.pr_prob else (
            self.pr_prob.cpu().numpy() if isinstance(self.pr_prob, torch.Tensor) else np.zeros(0))
        ptp = torch.cat(self.pr_tp).cpu().numpy() if isinstance(self.pr_tp, list) and self.pr_tp else (
            self.pr_tp.cpu().numpy() if isinstance(self.pr_tp, torch.Tensor) else np.zeros(0, bool))
        ap, _, _ = average_precision(prob, ptp.astype(bool), int(n_truth))
        n_crlb = float(self.n_crlb)

        def median(state: Any) -> float:
            if isinstance(state, list):
                state = torch.cat(state) if state else torch.zeros(0)
            return float(state.median()) if state.numel() else nan

        crlb_lat = median(self.crlb_lat_list) if n_crlb else nan
        crlb_ax = median(self.crlb_ax_list) if n_crlb and self.use_z else nan
        return {
            "jaccard": ji, "recall": recall, "precision": precision, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn,
            "rmse_lat_nm": rmse_lat, "rmse_ax_nm": rmse_ax, "rmse_vol_nm": rmse_vol,
            "efficiency_lat": eff_lat, "efficiency_ax": eff_ax,
            "efficiency_3d": (eff_lat + eff_ax) / 2 if self.use_z else eff_lat,
            "bias_x_nm": float(self.sum_dx) / tp if tp else nan, "bias_y_nm": float(self.sum_dy) / tp if tp else nan,
            "bias_z_nm": float(self.sum_dz) / tp if tp and self.use_z else nan,
            "photon_mae": float(self.abs_dphot) / tp if tp else nan,
            "photon_rel_error": float(self.rel_dphot) / tp if tp else nan,
            "average_precision": ap,
            "crlb_lat_nm": crlb_lat, "crlb_ax_nm": crlb_ax,
            "rmse_over_crlb_lat": math.sqrt(float(self.norm_lat) / n_crlb) if n_crlb else nan,
            "rmse_over_crlb_ax": math.sqrt(float(self.norm_ax) / n_crlb) if n_crlb and self.use_z else nan,
        }
