"""Post-hoc calibration of the network's predicted sigma: a factor per label and per S/N.

The heteroscedastic head learns sigma with the beta-NLL loss, whose variance gradient is damped by
sigma^(2 beta): while the mean keeps improving, the variance lags behind, and a trained head's sigma comes
out too wide (1-sigma coverage 0.76-0.94 instead of 0.683 on the H200 run; docs/results/stellar.md). The
standard remedy is recalibration on data the network did not train on (Kuleshov, Fenner & Ermon 2018,
ICML; Levi et al. 2022, "sigma scaling"): each label's sigma is multiplied by

    s_l = Q_p( |mu_l - y_l| / sigma_l ),   p = 0.6827,

the p-quantile of the normalised absolute error on a calibration set, so that a fraction p of it lies
inside +-1 sigma.

One factor per label is not enough: after it, the 1,500-step H200 model covered 0.55-0.62 at S/N 10 and
0.76-0.85 at S/N 100 (its sigma grows too little with the noise). So the same estimator is also applied per
S/N bin (conditional, binned recalibration; Kuleshov et al. 2018 calibrate per input region the same way):
each spectrum counts towards the knot of ``calibration.snr_knots`` nearest in log S/N, and knot k of label l
gets ``a_kl = Q_p(z_l | bin k)``, or the global ``s_l`` when the bin holds fewer than
``calibration.min_per_bin`` usable spectra. Between knots the factor is linear in log S/N, outside them
constant (``SpectralResCNN.snr_factor``). The S/N is the spectrum's own median S/N per pixel measured on the
network input (``SpectralResCNN.input_snr``, the LAMOST SNRG/SNRR definition), which a real spectrum has as
well, never the generator's S/N label.

Both live in the model as buffers (``sigma_scale`` (L,) = s_l and ``sigma_scale_snr`` (K, L) = a_kl / s_l),
so they travel with every checkpoint and export; a checkpoint from before the S/N table loads with a table of
ones (its global factor alone) and :func:`recalibrate` fits the table without retraining. MC-dropout and
ensemble spread are added on top of the calibrated aleatoric sigma (``postprocess.predict_labels``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.postprocess import predict_labels

log = logging.getLogger(__name__)


def normalised_errors(
    model: nn.Module, inputs: Tensor, target: Tensor, mask: Tensor, batch_size: int = 1024
) -> Tensor:
    """(B, L) |mu - y| / sigma with the model's calibration factors set to 1 (NaN where ``mask`` is False).

    Args:
        model: a heteroscedastic ``SpectralResCNN``; its ``sigma_scale`` / ``sigma_scale_snr`` are ignored
            (treated as 1) here and left as they were.
        inputs: (B, C, M) network input on the model's device.
        target: (B, L) true labels, physical units.
        mask: (B, L) bool, which labels count (spectra the pipeline dropped are False).
    """
    saved = {n: getattr(model, n).clone() for n in ("sigma_scale", "sigma_scale_snr") if hasattr(model, n)}
    for n in saved:
        getattr(model, n).fill_(1.0)
    try:
        pred = predict_labels(model, inputs, batch_size=batch_size)
    finally:
        for n, v in saved.items():
            getattr(model, n).copy_(v)
    z = (pred["mean"] - target.float()).abs() / pred["sigma"].clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(mask, z, torch.nan)


def _positive_or_one(scale: Tensor) -> Tensor:
    # a label with no usable spectrum keeps its sigma unchanged
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))


def sigma_scale_factors(
    model: nn.Module, inputs: Tensor, target: Tensor, mask: Tensor, coverage: float, batch_size: int = 1024
) -> Tensor:
    """(L,) global factors s_l that make ``coverage`` of the set fall inside +-s_l sigma_l (sigma
    uncalibrated); arguments as :func:`normalised_errors`, ``coverage`` in (0, 1), 0.6827 for 1 sigma."""
    z = normalised_errors(model, inputs, target, mask, batch_size)
    return _positive_or_one(torch.nanquantile(z, coverage, dim=0))


def binned_factors(
    z: Tensor, snr: Tensor, knots: Tensor, coverage: float, min_per_bin: int, fallback: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-knot factors: the ``coverage`` quantile of ``z`` among the spectra nearest (in log S/N) to each knot.

    Args:
        z: (B, L) normalised absolute errors, NaN where a label does not count.
        snr: (B,) S/N per pixel of each spectrum.
        knots: (K,) increasing S/N knots.
        coverage: quantile level (0.6827 for 1 sigma).
        min_per_bin: a (knot, label) with fewer finite ``z`` keeps ``fallback``.
        fallback: (L,) factor of the bins that are too small (the global factor).

    Returns:
        ``factors`` (K, L) absolute factors and ``counts`` (K, L) spectra per (knot, label).
    """
    logk = torch.log(knots.to(z.device, torch.float32))
    logs = torch.log(torch.nan_to_num(snr.to(z.device).float(), nan=0.0).clamp_min(1e-30))
    nearest = (logs[:, None] - logk[None, :]).abs().argmin(1)  # (B,)
    member = nearest[:, None] == torch.arange(knots.numel(), device=z.device)[None, :]  # (B, K)
    zb = torch.where(member[:, :, None], z[:, None, :], torch.nan)  # (B, K, L)
    counts = torch.isfinite(zb).sum(0)
    q = torch.nanquantile(zb, coverage, dim=0) if z.shape[0] else torch.full(counts.shape, torch.nan)
    ok = (counts >= min_per_bin) & torch.isfinite(q) & (q > 0)
    return torch.where(ok, q, fallback.to(q)[None, :].expand_as(q)), counts


def input_snr(model: nn.Module, inputs: Tensor, batch_size: int = 1024) -> Tensor | None:
    """(B,) the model's S/N measurement (``SpectralResCNN.input_snr``) in chunks, None when it has none."""
    fn = getattr(model, "input_snr", None)
    if fn is None or inputs.shape[1] < 2:
        return None
    return torch.cat([fn(inputs[s : s + batch_size]) for s in range(0, inputs.shape[0], batch_size)])


def fit_sigma_calibration(
    model: nn.Module, inputs: Tensor, target: Tensor, mask: Tensor, coverage: float, knots: Tensor,
    min_per_bin: int, batch_size: int = 1024, snr: Tensor | None = None,
) -> dict[str, Tensor]:
    """Fit, without setting, the global and per-knot factors: ``scale`` (L,) s_l, ``factors`` (K, L) a_kl
    (absolute), ``relative`` (K, L) a_kl / s_l, ``counts`` (K, L). ``snr`` (B,) defaults to the model's own
    measurement on ``inputs``; without one (a 1-channel input) every knot keeps the global factor."""
    z = normalised_errors(model, inputs, target, mask, batch_size)
    scale = _positive_or_one(torch.nanquantile(z, coverage, dim=0))
    snr = input_snr(model, inputs, batch_size) if snr is None else snr
    knots = torch.as_tensor(knots, dtype=torch.float32, device=z.device).reshape(-1)
    if snr is None or knots.numel() == 0:
        factors = scale[None, :].expand(knots.numel(), -1).clone()
        counts = torch.zeros(factors.shape, dtype=torch.long, device=z.device)
    else:
        factors, counts = binned_factors(z, snr, knots, coverage, min_per_bin, scale)
    return {"scale": scale, "factors": factors, "relative": factors / scale, "counts": counts}


def calibration_set(cfg: StellarConfig, device: torch.device) -> dict[str, Tensor]:
    """``calibration.n_spectra`` generator spectra over the training label prior and S/N range, from the
    calibration's own seed (disjoint from training batches, validation pools and ``evaluate``)."""
    from neurotrain.tasks.stellar.task import draw_batch

    c = cfg.calibration
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1_000_003 + c.seed_offset)
    parts = [draw_batch(cfg, min(c.chunk, c.n_spectra - s), gen, device) for s in range(0, c.n_spectra, c.chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in ("input", "target", "target_mask")}


def calibrate_model(cfg: StellarConfig, model: nn.Module, data: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Fit and set the model's global factor (``sigma_scale``) and S/N table (``snr_knots`` =
    ``calibration.snr_knots``, ``sigma_scale_snr``) on the calibration set (drawn when ``data`` is None), with
    the network run at ``inference.precision``; returns :func:`fit_sigma_calibration`'s tensors."""
    from neurotrain.engine.inference import autocast

    c = cfg.calibration
    device = next(model.parameters()).device
    data = calibration_set(cfg, device) if data is None else data
    knots = torch.tensor(c.snr_knots, dtype=torch.float32, device=device)
    # the factors are fitted in the arithmetic that evaluate and predict use (``inference.precision``):
    # bf16 rounding adds error that the sigma must cover
    with autocast(device, cfg.inference.precision):
        fit = fit_sigma_calibration(model, data["input"], data["target"], data["target_mask"], c.coverage, knots,
                                    c.min_per_bin, c.chunk)
    model.sigma_scale.copy_(fit["scale"].to(model.sigma_scale))
    if hasattr(model, "set_snr_table"):
        model.set_snr_table(knots, fit["relative"], fitted=True)
    return fit


def needs_refit(cfg: StellarConfig, model: nn.Module) -> str | None:
    """Why ``model``'s sigma factors should be refitted before use (None: they should not): the config asks
    (``calibration.refit_on_load``), or the checkpoint predates the S/N table (``calibration.enabled``)."""
    if not getattr(model, "heteroscedastic", False):
        return None
    if cfg.calibration.refit_on_load:
        return "calibration.refit_on_load is true"
    fitted = getattr(model, "snr_calibrated", None)
    if cfg.calibration.enabled and fitted is not None and not bool(fitted):
        return "the checkpoint has no S/N-dependent sigma factors"
    return None


def recalibrate(cfg: StellarConfig, model: nn.Module, force: bool = False) -> dict[str, Any] | None:
    """Refit the sigma factors of a loaded model on the calibration set when :func:`needs_refit` (or
    ``force``) says so, on the model's current device; no retraining. Returns a JSON-ready summary (reason,
    spectra, knots, global factor and factor at each knot per label, spectra per knot), or None when nothing
    was refitted. The refit is announced on stderr and in the log."""
    reason = "asked for (recalibrate)" if force and getattr(model, "heteroscedastic", False) else needs_refit(cfg, model)
    if reason is None:
        return None
    c = cfg.calibration
    msg = f"stellar: refitting the sigma calibration on {c.n_spectra} calibration spectra ({reason})"
    print(msg, file=sys.stderr)
    log.info(msg)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fit = calibrate_model(cfg, model)
    finally:
        model.train(training)
    names = list(cfg.labels.names)
    return {
        "refit": True, "reason": reason, "n_spectra": c.n_spectra, "seed_offset": c.seed_offset,
        "coverage": c.coverage, "snr_knots": list(c.snr_knots), "min_per_bin": c.min_per_bin,
        "global": {n: float(v) for n, v in zip(names, fit["scale"].tolist())},
        "at_knots": {n: [float(r[j]) for r in fit["factors"].tolist()] for j, n in enumerate(names)},
        "spectra_per_knot": [int(v) for v in fit["counts"].amax(1).tolist()] if fit["counts"].numel() else [],
    }


def report_section(info: dict[str, Any]) -> str:
    """Markdown section of the evaluation report that says the factors were refitted, and to what."""
    knots = info["snr_knots"]
    md = ["", "## Sigma calibration refitted at load", "",
          f"Refitted before scoring because {info['reason']}: {info['n_spectra']} calibration spectra "
          f"(own seed, offset {info['seed_offset']}), the {info['coverage']:.4f} quantile of |error| / sigma "
          f"per label, globally and per S/N knot (knots with fewer than {info['min_per_bin']} spectra keep "
          "the global factor).", "",
          "| label | global | " + " | ".join(f"S/N {k:g}" for k in knots) + " |",
          "|---|---|" + "---|" * len(knots)]
    for n, g in info["global"].items():
        md.append(f"| {n} | {g:.3f} | " + " | ".join(f"{v:.3f}" for v in info["at_knots"][n]) + " |")
    if info["spectra_per_knot"]:
        md.append("| spectra | " + str(info["n_spectra"]) + " | "
                  + " | ".join(str(v) for v in info["spectra_per_knot"]) + " |")
    return "\n".join(md) + "\n"


def append_to_report(report: Path | None, info: dict[str, Any]) -> None:
    """Append :func:`report_section` to the evaluation's ``report.md`` and rebuild ``report.html`` (atomic)."""
    from neurotrain.io.atomic import atomic_path
    from neurotrain.tasks.stellar.eval_report import markdown_to_html

    if report is None or not Path(report).is_file():
        return
    report = Path(report)
    text = report.read_text(encoding="utf-8").rstrip("\n") + "\n" + report_section(info)
    with atomic_path(report) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(report.with_suffix(".html")) as tmp:
        tmp.write_text(markdown_to_html(text, "stellar evaluation"), encoding="utf-8")


class SigmaCalibration(L.Callback):
    """Refits the sigma factors after every validation epoch, before the checkpoint of that epoch is written
    (Lightning runs callbacks' ``on_validation_epoch_end`` before ``ModelCheckpoint.on_validation_end``)."""

    def __init__(self, cfg: StellarConfig) -> None:
        self.cfg = cfg
        self._data: dict[str, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model: Any = pl_module.model
        if not getattr(model, "heteroscedastic", False):
            return
        device = next(model.parameters()).device
        if self._data is None or self._data["input"].device != device:
            self._data = calibration_set(self.cfg, device)
        with torch.inference_mode(False), torch.no_grad():
            fit = calibrate_model(self.cfg, model, self._data)
        names = self.cfg.labels.names
        pl_module.log_dict({f"val/sigma_scale/{n}": float(v) for n, v in zip(names, fit["scale"].tolist())},
                           sync_dist=False)
