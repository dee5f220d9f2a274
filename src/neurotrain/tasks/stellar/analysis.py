"""``neurotrain analyze``: which wavelengths each label is read from, and how its residuals behave (the seed's
``model_analysis.py``: feature importance and residual analysis).

Feature importance: per label, the mean over ``analyze.n_spectra`` spectra of |attribution| per rest-frame
pixel, by captum's

* ``integrated_gradients`` (Sundararajan et al. 2017, ICML): path integral of the gradient of the label's
  predicted (normalised) mean from a baseline spectrum to the input, ``analyze.ig_steps`` steps; the
  baseline is the pure continuum (flux 1, no lines) with the input's own noise channel, so the
  attribution is that of the absorption features alone; or
* ``occlusion`` (Zeiler & Fergus 2014): the change of the prediction when a window of
  ``analyze.occlusion_width_aa`` Angstrom is replaced by the continuum, slid by half a window.

The importance curve, smoothed over one occlusion width, gives the ``analyze.top_regions`` most important
regions: the highest peak, widened while the curve stays above half the peak, then masked, and again.
Each region is named by the spectral features it holds (``lines.features_in``) and carries its share of
the label's total importance.

Residual analysis (when the spectra have true labels): per label, predicted vs true, the residual
histogram, residual vs true value and a QQ plot of residual / predicted sigma, with bias, robust scatter,
MAE, RMSE and R^2.

Spectra: ``options["spectra"]`` (a dict with ``input`` (B, C, M) and optionally ``target`` (B, L) and
``snr``), else the test split of the prepared file at ``data.path`` (real spectra with catalogue labels,
unless ``options["synthetic"]``), else a held-out synthetic draw at S/N ``options.get("snr", 50)`` (seed ``seed +
evaluate.seed_offset + ANALYZE_SEED_SHIFT``). Output in the given folder: ``importance_<LABEL>.png``,
``residuals_<LABEL>.png``, ``importance.csv`` and ``analysis.md``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from neurotrain.errors import ConfigError
from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.lines import features_in

#: the analysis set's seed, relative to the held-out base seed (evaluate uses 0.. for its S/N bins, 10,000
#: for its baseline training set)
ANALYZE_SEED_SHIFT = 20_000
#: a region grows while the smoothed importance stays above this share of its peak
REGION_FLOOR = 0.5
#: and at most to this many occlusion widths
REGION_MAX_WIDTHS = 4


class _MeanOf(nn.Module):
    """The model's normalised means alone (B, L), the quantity attributed."""

    def __init__(self, model: nn.Module, n_labels: int) -> None:
        super().__init__()
        self.model, self.n = model, n_labels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[:, : self.n]


def continuum_baseline(inputs: Tensor) -> Tensor:
    """The attribution baseline: flux channel 1 (continuum, no lines), other channels as in the input."""
    base = inputs.clone()
    base[:, 0] = 1.0
    return base


def occlusion_pixels(wave: Tensor, width_aa: float) -> int:
    """Pixels spanning ``width_aa`` Angstrom at the grid's median pixel size (at least 2)."""
    step = float(torch.median(torch.diff(wave.double())))
    return max(2, int(round(width_aa / step)))


def importance(
    model: nn.Module, inputs: Tensor, n_labels: int, method: str = "integrated_gradients", ig_steps: int = 32,
    window_px: int = 16, batch_size: int = 64,
) -> Tensor:
    """(L, M) mean |attribution| per label and pixel (summed over input channels), over the spectra.

    ``inputs`` (B, C, M) on the model's device; the model is put in eval mode (no dropout).
    """
    from captum.attr import IntegratedGradients, Occlusion

    was_training = model.training
    model.eval()
    fwd = _MeanOf(model, n_labels)
    C, M = inputs.shape[1], inputs.shape[2]
    total = inputs.new_zeros(n_labels, M, dtype=torch.float64)
    try:
        for s in range(0, inputs.shape[0], batch_size):
            x = inputs[s : s + batch_size].float()
            base = continuum_baseline(x)
            for j in range(n_labels):
                if method == "integrated_gradients":
                    attr = IntegratedGradients(fwd).attribute(
                        x, baselines=base, target=j, n_steps=ig_steps, internal_batch_size=batch_size * 4
                    )
                elif method == "occlusion":
                    stride = max(1, window_px // 2)
                    attr = Occlusion(fwd).attribute(
                        x, sliding_window_shapes=(C, window_px), strides=(C, stride), baselines=base, target=j,
                        perturbations_per_eval=8,
                    )
                else:
                    raise ConfigError(f"config error: analyze.method: expected integrated_gradients or occlusion (got {method!r})")
                total[j] += attr.detach().double().sum(1).abs().sum(0)
    finally:
        model.train(was_training)
    return (total / max(1, inputs.shape[0])).float()


def _smooth(curve: Tensor, width: int) -> Tensor:
    """Running mean over ``width`` pixels (made odd, so it stays centred)."""
    w = max(1, width) | 1
    k = torch.ones(1, 1, w, dtype=curve.dtype, device=curve.device) / w
    return torch.nn.functional.conv1d(curve.view(1, 1, -1), k, padding=w // 2).view(-1)


def top_regions(curve: Tensor, wave: Tensor, n: int, window_px: int) -> list[dict[str, Any]]:
    """The ``n`` most important contiguous regions of an importance curve (M,) on ``wave`` (M,) Angstrom.

    Each: ``lo_aa``, ``hi_aa``, ``peak_aa``, ``share`` (of the total importance), ``features`` (names from
    ``lines.features_in``, padded by half a window)."""
    sm = _smooth(curve.double().cpu(), window_px)
    w = wave.double().cpu()
    total = float(curve.double().sum()) or 1.0
    free = torch.ones_like(sm, dtype=torch.bool)
    half = max(1, window_px // 2)
    pad_aa = float(torch.median(torch.diff(w))) * half
    out: list[dict[str, Any]] = []
    M = sm.numel()
    for _ in range(n):
        cand = torch.where(free, sm, torch.full_like(sm, -math.inf))
        p = int(torch.argmax(cand))
        if not math.isfinite(float(cand[p])) or float(cand[p]) <= 0:
            break
        floor = REGION_FLOOR * float(sm[p])
        max_half = REGION_MAX_WIDTHS * window_px // 2
        a = p
        while a - 1 >= 0 and free[a - 1] and sm[a - 1] >= floor and p - (a - 1) <= max_half:
            a -= 1
        b = p
        while b + 1 < M and free[b + 1] and sm[b + 1] >= floor and (b + 1) - p <= max_half:
            b += 1
        a, b = max(0, min(a, p - half)), min(M - 1, max(b, p + half))
        lo, hi = float(w[a]), float(w[b])
        out.append({
            "lo_aa": round(lo, 1), "hi_aa": round(hi, 1), "peak_aa": round(float(w[p]), 1),
            "share": float(curve[a : b + 1].double().sum()) / total,
            "features": [f.name for f in features_in(lo, hi, pad_aa)],
        })
        # mask the region and one smoothing window around it (the smoothed curve spreads each feature by
        # that much), so the next peak is another feature, not this one's shoulder
        free[max(0, a - window_px) : min(M, b + window_px + 1)] = False
    return out


def _residual_figure(path: Path, label: str, true: np.ndarray, pred: np.ndarray, sigma: np.ndarray | None) -> Path:
    from neurotrain.tasks.stellar.eval_report import _plt, _save

    plt = _plt()
    r = pred - true
    fig, ax = plt.subplots(1, 4, figsize=(13, 3))
    ax[0].scatter(true, pred, s=3, alpha=0.5)
    lo, hi = float(np.min(true)), float(np.max(true))
    ax[0].plot([lo, hi], [lo, hi], "k-", lw=0.6)
    ax[0].set_xlabel(f"true {label}")
    ax[0].set_ylabel("predicted")
    ax[1].hist(r, bins=40, color="C0")
    ax[1].set_xlabel("residual")
    ax[2].scatter(true, r, s=3, alpha=0.5)
    ax[2].axhline(0, color="k", lw=0.6)
    ax[2].set_xlabel(f"true {label}")
    ax[2].set_ylabel("residual")
    if sigma is not None:
        from scipy.stats import norm

        z = np.sort(r / np.maximum(sigma, 1e-12))
        q = norm.ppf((np.arange(z.size) + 0.5) / max(1, z.size))
        ax[3].plot(q, z, ".", ms=2)
        ax[3].plot([-4, 4], [-4, 4], "k-", lw=0.6)
        ax[3].set_xlabel("Gaussian quantile")
        ax[3].set_ylabel("residual / sigma")
    else:
        ax[3].axis("off")
    fig.suptitle(f"{label}: residual analysis")
    return _save(fig, path)


def _importance_figure(path: Path, label: str, wave: np.ndarray, flux: np.ndarray, curve: np.ndarray,
                       regions: list[dict[str, Any]]) -> Path:
    from neurotrain.tasks.stellar.eval_report import _plt, _save

    plt = _plt()
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(12, 4.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    a0.plot(wave, flux, "k-", lw=0.5)
    a0.set_ylabel("mean normalised flux")
    a1.plot(wave, curve, "C0-", lw=0.7)
    a1.set_ylabel("mean |attribution|")
    a1.set_xlabel("rest vacuum wavelength (A)")
    for k, reg in enumerate(regions):
        for ax in (a0, a1):
            ax.axvspan(reg["lo_aa"], reg["hi_aa"], color="C1", alpha=0.25, lw=0)
        name = ", ".join(reg["features"][:2]) or f"{reg['peak_aa']:.0f} A"
        a1.text(reg["peak_aa"], 1.0, f"{k + 1}: {name}", transform=a1.get_xaxis_transform(), rotation=90,
                fontsize=6, va="top", ha="right")
    fig.suptitle(f"{label}: feature importance by wavelength")
    return _save(fig, path)


def prepared_spectra(path: Path, names: Sequence[str], n: int) -> dict[str, Tensor]:
    """The first ``n`` test-split rows (``split`` 2; all rows when the file has no split) of a prepared
    HDF5 file: ``input`` and ``target`` in ``names`` order (NaN where the catalogue has no value)."""
    import h5py

    from neurotrain.errors import DataError

    with h5py.File(path, "r") as f:
        if "input" not in f:
            raise DataError(f"{path}: input: expected a prepared stellar file (dataset missing)")
        rows = np.flatnonzero(np.asarray(f["split"][:]) == 2) if "split" in f else np.arange(f["input"].shape[0])
        rows = rows[:n]
        out = {"input": torch.from_numpy(np.asarray(f["input"][np.sort(rows)], dtype=np.float32))}
        stored = [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(f.attrs.get("label_names", []))]
        if "target" in f and all(nm in stored for nm in names):
            tgt = np.asarray(f["target"][np.sort(rows)], dtype=np.float32)[:, [stored.index(nm) for nm in names]]
            out["target"] = torch.from_numpy(tgt)
    return out


def _spectra(cfg: StellarConfig, options: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    if options.get("spectra") is not None:
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in options["spectra"].items()}
    if cfg.data.path is not None and Path(cfg.data.path).is_file() and not options.get("synthetic", False):
        return {k: v.to(device) for k, v in prepared_spectra(Path(cfg.data.path), cfg.labels.names, cfg.analyze.n_spectra).items()}
    from neurotrain.tasks.stellar.evaluate import draw_set

    seed = cfg.seed + cfg.evaluate.seed_offset + ANALYZE_SEED_SHIFT
    d = draw_set(cfg, cfg.analyze.n_spectra, seed, device, snr=float(options.get("snr", 50.0)),
                 chunk=cfg.evaluate.sim_chunk)
    return {k: v[d["keep"]] for k, v in d.items()}


def analyze(cfg: StellarConfig, model: nn.Module, run_dir: Path, **options: Any) -> dict[str, Any]:
    """Feature importance and residual analysis of ``model``; figures, ``importance.csv`` and
    ``analysis.md`` in ``run_dir``. Options: ``spectra`` (see module docstring), ``wave`` (M,) grid when the
    spectra are not on ``preprocess.rest_grid``, ``labels`` (names to analyse; default all, the seed's
    ``--elements``), ``snr`` of the synthetic draw, ``figures`` (default True). Returns a JSON-able summary."""
    from neurotrain.tasks.stellar.evaluate import _device
    from neurotrain.tasks.stellar.metrics import label_metrics, to_floats
    from neurotrain.tasks.stellar.postprocess import predict_labels

    an = cfg.analyze
    names = cfg.labels.names
    chosen = [n.upper() for n in (options.get("labels") or names)]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ConfigError(f"config error: analyze labels: expected names among the model's {names} (got {unknown})")
    device = _device(cfg) if options.get("device") is None else torch.device(options["device"])
    model = model.to(device)
    data = _spectra(cfg, options, device)
    x = data["input"][: an.n_spectra].float()
    if options.get("wave") is not None:
        wave = torch.as_tensor(options["wave"], dtype=torch.float64)
    else:
        from neurotrain.tasks.stellar.preprocess import rest_grid

        wave = rest_grid(cfg.preprocess).double().cpu()
    if wave.numel() != x.shape[-1]:
        raise ConfigError(f"config error: analyze: the spectra have {x.shape[-1]} pixels, the grid {wave.numel()}")
    window = occlusion_pixels(wave, an.occlusion_width_aa)
    imp = importance(model, x, len(names), an.method, an.ig_steps, window).cpu()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    figs = options.get("figures", True)
    summary: dict[str, Any] = {"method": an.method, "n_spectra": int(x.shape[0]), "window_aa": an.occlusion_width_aa,
                               "labels": {}, "figures": []}
    mean_flux = x[:, 0].double().mean(0).cpu().numpy()
    for lab in chosen:
        j = names.index(lab)
        regions = top_regions(imp[j], wave, an.top_regions, window)
        summary["labels"][lab] = {"top_regions": regions}
        if figs:
            p = _importance_figure(run_dir / f"importance_{lab}.png", lab, wave.numpy(), mean_flux, imp[j].numpy(), regions)
            summary["figures"].append(p.name)
    with atomic_path(run_dir / "importance.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["wavelength_aa", *chosen])
            for i in range(wave.numel()):
                w.writerow([f"{float(wave[i]):.3f}", *(f"{float(imp[names.index(lab), i]):.6g}" for lab in chosen)])
    if "target" in data:
        pred = predict_labels(model, x, mc_samples=cfg.uncertainty.mc_samples)
        target = data["target"][: x.shape[0]]
        coll = label_metrics(names, crlb=False).to(x.device)
        coll.update({"mean": pred["mean"], "sigma": pred["sigma"]}, {"target": target})
        summary["residuals"] = to_floats(coll.compute())
        if figs:
            for lab in chosen:
                j = names.index(lab)
                ok = torch.isfinite(target[:, j])
                p = _residual_figure(run_dir / f"residuals_{lab}.png", lab, target[ok, j].cpu().numpy(),
                                     pred["mean"][ok, j].cpu().numpy(), pred["sigma"][ok, j].cpu().numpy())
                summary["figures"].append(p.name)
    _write_markdown(run_dir / "analysis.md", summary, chosen)
    return summary


def _write_markdown(path: Path, summary: dict[str, Any], labels: Sequence[str]) -> None:
    md = ["# stellar analysis: feature importance and residuals", "",
          f"Method {summary['method']}, {summary['n_spectra']} spectra, regions smoothed over "
          f"{summary['window_aa']:g} A; share = the region's part of the label's total |attribution|.", ""]
    for lab in labels:
        md += [f"## {lab}", "", "| rank | region (A, vacuum) | share | features |", "| ---: | --- | ---: | --- |"]
        for k, r in enumerate(summary["labels"][lab]["top_regions"]):
            md.append(f"| {k + 1} | {r['lo_aa']:.0f}-{r['hi_aa']:.0f} | {r['share']:.3f} | "
                      f"{', '.join(r['features']) or '—'} |")
        md.append("")
    if "residuals" in summary:
        stats = ("bias", "scatter", "mae", "rmse", "r2", "coverage")
        md += ["## Residuals", "", "| label | " + " | ".join(stats) + " |", "| --- |" + " ---: |" * len(stats)]
        for lab in labels:
            vals = [summary["residuals"][s].get(lab) for s in stats]
            md.append(f"| {lab} | " + " | ".join("—" if v is None else f"{v:.4g}" for v in vals) + " |")
        md.append("")
    md += [f"![{f}]({f})" for f in summary["figures"]]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
