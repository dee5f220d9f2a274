"""``neurotrain evaluate`` for smlm: network vs untrained twin vs baseline on a seeded movie, or
any localisation table against a ground-truth table; metrics.json, report.md and figures."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurotrain.errors import DataError
from neurotrain.io.atomic import atomic_path
from neurotrain.task import EvalResult

REPORT_KEYS = ("jaccard", "recall", "precision", "f1", "rmse_lat_nm", "rmse_ax_nm", "efficiency_lat", "efficiency_ax",
               "average_precision", "photon_rel_error", "crlb_lat_nm", "rmse_over_crlb_lat", "rmse_over_crlb_ax")


def _tensors(df: pd.DataFrame) -> dict[str, torch.Tensor]:
    return {c: torch.as_tensor(df[c].to_numpy().copy()) for c in df.columns}


def score_table(cfg: Any, locs: pd.DataFrame, truth: dict[str, torch.Tensor], threshold: float) -> tuple[dict[str, float], dict[str, Any]]:
    """SMLM-challenge metrics of one table plus the arrays the figures need (errors, PR curve)."""
    from neurotrain.tasks.smlm.metrics import SMLMMetrics, average_precision, match_localisations
    from neurotrain.tasks.smlm.simulate import is_3d

    ev = cfg.evaluate
    use_z = is_3d(cfg)
    m = SMLMMetrics(threshold, ev.lateral_tol_nm, ev.axial_tol_nm, ev.alpha_lat, ev.alpha_ax, use_z=use_z)
    m.update(_tensors(locs), truth)
    res = m.compute()
    sel = locs[locs["prob"] >= threshold] if len(locs) else locs
    p = np.stack([sel["x_nm"], sel["y_nm"], sel["z_nm"] if use_z else 0 * sel["x_nm"]], 1).astype(float)
    tx = np.stack([truth["x_nm"].numpy(), truth["y_nm"].numpy(),
                   truth["z_nm"].numpy() if use_z else 0 * truth["x_nm"].numpy()], 1).astype(float)
    i, j = match_localisations(sel["frame"].to_numpy(), p, truth["frame"].numpy().astype(np.int64), tx,
                               ev.lateral_tol_nm, ev.axial_tol_nm, use_z)
    d = p[i] - tx[j]
    allp = np.stack([locs["x_nm"], locs["y_nm"], locs["z_nm"] if use_z else 0 * locs["x_nm"]], 1).astype(float)
    ia, _ = match_localisations(locs["frame"].to_numpy(), allp, truth["frame"].numpy().astype(np.int64), tx,
                                ev.lateral_tol_nm, ev.axial_tol_nm, use_z)
    is_tp = np.zeros(len(locs), bool)
    is_tp[ia] = True
    ap, prec, rec = average_precision(locs["prob"].to_numpy(), is_tp, len(tx))
    return res, {"dx": d[:, 0], "dy": d[:, 1], "dz": d[:, 2] if use_z else np.zeros(0), "pr": (prec, rec, ap)}


def _per_axis_crlb(res: dict[str, Any]) -> dict[str, float]:
    """Median CRLB per axis of a method's matched emitters (the lateral value is x-y combined)."""
    lat, ax = res.get("crlb_lat_nm"), res.get("crlb_ax_nm")
    out = {}
    if lat is not None and math.isfinite(lat):
        out["dx"] = out["dy"] = lat / math.sqrt(2.0)
    if ax is not None and math.isfinite(ax):
        out["dz"] = ax
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write_outputs(report: Path, metrics: dict[str, Any], arrays: dict[str, dict[str, Any]], crlb: dict[str, dict[str, float]],
                   renders: dict[str, np.ndarray], header: str) -> Path:
    from neurotrain.tasks.smlm.render import save_render
    from neurotrain.tasks.smlm.plots import plot_errors_vs_crlb, plot_pr_curves

    report.mkdir(parents=True, exist_ok=True)
    with atomic_path(report / "metrics.json") as tmp:
        tmp.write_text(json.dumps(_clean(metrics), indent=2), encoding="utf-8")
    plot_pr_curves({k: a["pr"] for k, a in arrays.items() if len(a["pr"][0])}, report / "pr_curve.png")
    plot_errors_vs_crlb({k: a for k, a in arrays.items() if k != "untrained"}, crlb, report / "errors_vs_crlb.png")
    for name, img in renders.items():
        save_render(img, report / f"render_{name}.png")
    methods = [k for k in metrics if isinstance(metrics[k], dict) and "jaccard" in metrics[k]]
    lines = [f"# SMLM evaluation\n\n{header}\n", "| metric | " + " | ".join(methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    for key in REPORT_KEYS:
        row = []
        for mth in methods:
            v = metrics[mth].get(key)
            row.append("n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}")
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    lines += ["", "JI in %; RMSE and CRLB in nm; efficiency per the 2016 SMLM challenge (alpha 1 nm^-1 lateral, "
              "0.5 nm^-1 axial).", "", "![precision-recall](pr_curve.png)", "![errors vs CRLB](errors_vs_crlb.png)"]
    lines += [f"![render {n}](render_{n}.png)" for n in renders]
    path = report / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def evaluate_simulated(cfg: Any, model: nn.Module | None, report: Path, baseline: bool = True) -> EvalResult:
    """Simulate ``evaluate.n_frames`` frames (seed ``evaluate.seed``) and score every method on it."""
    from neurotrain.engine.inference import resolve_device
    from neurotrain.tasks.smlm.infer import localise_movie
    from neurotrain.tasks.smlm.render import render
    from neurotrain.tasks.smlm.models import build_model
    from neurotrain.tasks.smlm.simulate import simulate_movie
    from neurotrain.tasks.smlm.task import truth_with_crlb

    dev = resolve_device(cfg.inference.device, lambda x: x)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.evaluate.seed)
    adus, truths, bg = [], [], None
    for adu, truth, bg in simulate_movie(cfg, cfg.evaluate.n_frames, gen, dev, cfg.predict.chunk_frames):
        adus.append(adu.cpu())
        truths.append(truth)
    movie = torch.cat(adus)
    truth_df = pd.concat(truths, ignore_index=True)
    truth = truth_with_crlb(cfg, truth_df, bg)
    tables: dict[str, tuple[pd.DataFrame, float, float]] = {}
    low = min(cfg.postprocess.raw_threshold, cfg.postprocess.threshold)
    if model is not None:
        t0 = time.perf_counter()
        locs = localise_movie(movie, cfg, model, threshold=low, device=dev)
        tables["network"] = (locs, cfg.postprocess.threshold, time.perf_counter() - t0)
        torch.manual_seed(cfg.seed)
        fresh = build_model(cfg)
        t0 = time.perf_counter()
        tables["untrained"] = (localise_movie(movie, cfg, fresh, threshold=low, device=dev), cfg.postprocess.threshold,
                               time.perf_counter() - t0)
    if baseline:
        t0 = time.perf_counter()
        tables["baseline"] = (localise_movie(movie, cfg, None, device=dev), -math.inf, time.perf_counter() - t0)
    metrics: dict[str, Any] = {}
    arrays: dict[str, dict[str, Any]] = {}
    h, w = cfg.simulate.frame_size
    px = cfg.simulate.pixel_size_nm
    renders = {"truth": render(truth_df["x_nm"].to_numpy(), truth_df["y_nm"].to_numpy(), w * px, h * px,
                               cfg.evaluate.render_px_nm)}
    for name, (locs, th, secs) in tables.items():
        res, arr = score_table(cfg, locs, truth, th)
        res["seconds"] = secs
        res["frames_per_s"] = cfg.evaluate.n_frames / secs if secs > 0 else None
        metrics[name], arrays[name] = res, arr
        if name != "untrained":
            sel = locs[locs["prob"] >= th]
            renders[name] = render(sel["x_nm"].to_numpy(), sel["y_nm"].to_numpy(), w * px, h * px,
                                   cfg.evaluate.render_px_nm)
    metrics["movie"] = {"n_frames": cfg.evaluate.n_frames, "n_emitters": int(len(truth_df)),
                        "density_per_um2": cfg.simulate.density_per_um2, "psf": cfg.psf.kind,
                        "camera": cfg.camera.kind, "seed": cfg.evaluate.seed}
    crlb = {name: _per_axis_crlb(res) for name, res in metrics.items() if name != "movie"}
    header = (f"Simulated movie: {cfg.evaluate.n_frames} frames of {h}x{w} px ({px:g} nm), "
              f"{cfg.simulate.density_per_um2:g} emitters/um^2, {len(truth_df)} emitters, PSF {cfg.psf.kind}, "
              f"camera {cfg.camera.kind}, seed {cfg.evaluate.seed}.")
    path = _write_outputs(report, metrics, arrays, crlb, renders, header)
    net = metrics.get("network", {}).get("jaccard")
    base = metrics.get("baseline", {}).get("jaccard")
    return EvalResult(metrics=_clean(metrics), headline_name="Jaccard index (%)", headline_network=net,
                      headline_baseline=base, report_path=path, lower_is_better=False,
                      extra={"untrained_jaccard": metrics.get("untrained", {}).get("jaccard")})


def evaluate_files(cfg: Any, pred: Path, truth: Path, report: Path) -> EvalResult:
    """Score any localisation table (ours, ThunderSTORM CSV, Picasso HDF5) against a ground-truth table.

    Both tables are read cell by cell (``read_locs``: numbers only, finite frames and positions) and must
    hold rows; ``report`` is the folder the caller chose (``evaluate -o``), never another run's."""
    from neurotrain.tasks.smlm.io import read_locs
    from neurotrain.tasks.smlm.render import render
    from neurotrain.tasks.smlm.task import truth_with_crlb

    px = cfg.simulate.pixel_size_nm
    locs = read_locs(pred, pixel_size_nm=None if pred.suffix.lower() != ".hdf5" or pred.with_suffix(".yaml").is_file() else px)
    tdf = read_locs(truth)
    for path, table, what in ((truth, tdf, "ground truth"), (pred, locs, "prediction")):
        if len(table) == 0:
            raise DataError(f"{path}: no localisations (header only); the {what} table needs rows to score")
    t = truth_with_crlb(cfg, tdf, None)
    if not np.isfinite(locs["prob"].to_numpy()).all():
        locs["prob"] = locs["prob"].fillna(1.0)
    res, arr = score_table(cfg, locs, t, -math.inf)
    metrics = {"prediction": res, "files": {"pred": str(pred), "truth": str(truth), "n_pred": int(len(locs)),
                                            "n_truth": int(len(tdf))}}
    h, w = cfg.simulate.frame_size
    renders = {"prediction": render(locs["x_nm"].to_numpy(), locs["y_nm"].to_numpy(), w * px, h * px,
                                    cfg.evaluate.render_px_nm)}
    crlb = {"prediction": _per_axis_crlb(res)}
    path = _write_outputs(report, metrics, {"prediction": arr}, crlb, renders,
                          f"Prediction `{pred}` scored against ground truth `{truth}`.")
    return EvalResult(metrics=_clean(metrics), headline_name="Jaccard index (%)", headline_network=res["jaccard"],
                      headline_baseline=None, report_path=path, lower_is_better=False)
