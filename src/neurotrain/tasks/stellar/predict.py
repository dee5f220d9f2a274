"""``neurotrain predict CKPT spectra/ -o labels.csv`` for stellar: read LAMOST FITS (either layout), CSV or
HDF5 spectra, preprocess them in batches on the device, and write one row per spectrum: id, file, OBSID,
RA, DEC, the pipeline's S/N, a quality flag, and every label with its 1-sigma uncertainty (``<LABEL>_ERR``;
the heteroscedastic head's sigma, combined with MC-dropout / ensemble spread when configured).

Files that cannot be read are not predicted; they are listed with the reason in ``<stem>_skipped.csv`` and
counted on the console. Spectra the pipeline flags (S/N below ``preprocess.min_snr``, too few good pixels)
are predicted but carry the flag, so that a user can cut on it. Reading the next chunk of files overlaps
with the device work on the current one.

Options (``--opt key=value``): ``mc_samples`` (MC-dropout passes, overrides ``uncertainty.mc_samples``).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.stellar.config import StellarConfig

PREDICT_OPTIONS = ("mc_samples",)


def output_paths(output: Path | None) -> tuple[Path, str]:
    """The labels table's path and format (``csv`` or ``h5``) from ``-o``: a ``.csv``/``.h5``/``.hdf5`` file,
    or a folder (``labels.csv`` inside)."""
    out = Path(output) if output is not None else Path("labels.csv")
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return out, "csv"
    if suffix in (".h5", ".hdf5"):
        return out, "h5"
    if suffix:
        raise ConfigError(f"config error in predict: -o {out}: expected a .csv, .h5 or .hdf5 file or a folder (got {suffix!r})")
    return out / "labels.csv", "csv"


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(PREDICT_OPTIONS) - {"debug"})
    if unknown:
        raise ConfigError(f"config error in predict options: unknown {unknown} (known: {list(PREDICT_OPTIONS)})")
    return options


def load_ensemble(cfg: StellarConfig, device: torch.device) -> list[nn.Module]:
    """The extra members of a deep ensemble (``uncertainty.ensemble`` checkpoints), on ``device``."""
    from neurotrain.engine.checkpoint import load_model

    members = []
    for path in cfg.uncertainty.ensemble:
        other_cfg, m = load_model(path)
        if list(getattr(other_cfg, "labels").names) != list(cfg.labels.names):
            raise ConfigError(
                f"config error: uncertainty.ensemble: {path} predicts {other_cfg.labels.names} (expected {cfg.labels.names})"  # type: ignore[attr-defined]
            )
        members.append(m.to(device).eval())
    return members


def _meta_value(meta: dict[str, Any], key: str) -> Any:
    v = meta.get(key)
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    return v


def _rows(cfg: StellarConfig, spectra: list[Any], pre: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> pd.DataFrame:
    from neurotrain.tasks.stellar.preprocess import REASONS

    reason = pre["reason"].cpu().numpy().astype(int)
    table: dict[str, Any] = {
        "id": [s.id for s in spectra],
        "file": [str(s.path) for s in spectra],
        "obsid": [_meta_value(s.meta, "OBSID") for s in spectra],
        "ra": np.array([_meta_value(s.meta, "RA") for s in spectra], dtype=float),
        "dec": np.array([_meta_value(s.meta, "DEC") for s in spectra], dtype=float),
        "snr": pre["snr"].cpu().numpy().astype(float),
        "flag": ["" if r == 0 else REASONS[r] for r in reason],
    }
    mean = labels["mean"].float().cpu().numpy()
    sigma = labels["sigma"].float().cpu().numpy()
    for j, name in enumerate(cfg.labels.names):
        table[name] = mean[:, j]
        table[f"{name}_ERR"] = sigma[:, j]
    return pd.DataFrame(table)


@torch.no_grad()
def predict_spectra(
    cfg: StellarConfig, model: nn.Module, spectra: list[Any], device: torch.device, mc_samples: int,
    ensemble: list[nn.Module],
) -> pd.DataFrame:
    """Labels for already-read spectra (one batch)."""
    from neurotrain.engine.inference import autocast
    from neurotrain.tasks.stellar.io import stack_spectra
    from neurotrain.tasks.stellar.postprocess import predict_labels
    from neurotrain.tasks.stellar.preprocess import network_input, preprocess_batch

    raw = stack_spectra(spectra, device)
    pre = preprocess_batch(raw, cfg.preprocess)
    x = network_input(pre, cfg.model.in_channels, cfg.preprocess)
    with autocast(device, cfg.inference.precision):
        labels = predict_labels(model, x, mc_samples=mc_samples, ensemble=ensemble)
    return _rows(cfg, spectra, pre, labels)


def predict_files(
    cfg: StellarConfig, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any
) -> list[Path]:
    """Spectra files / folders -> a labels table (CSV or HDF5) and, when ``predict.plot``, a Kiel diagram."""
    from neurotrain.engine.inference import resolve_device
    from neurotrain.tasks.stellar.io import find_spectra, read_many, write_labels_csv, write_labels_h5

    opts = _check_options(dict(options))
    table_path, fmt = output_paths(output)
    paths = find_spectra([Path(p) for p in inputs], cfg.read.patterns)
    if not paths:
        raise DataError(f"{', '.join(str(p) for p in inputs)}: no spectra found (patterns {cfg.read.patterns})")
    device = resolve_device(cfg.inference.device, model)
    model = model.to(device).eval()
    ensemble = load_ensemble(cfg, device)
    mc = int(opts.get("mc_samples", cfg.uncertainty.mc_samples))
    size = cfg.predict.batch_size
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    frames: list[pd.DataFrame] = []
    skipped: list[tuple[Path, str]] = []
    workers = cfg.catalog.read_workers
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        pending = prefetch.submit(read_many, chunks[0], cfg.read, workers)
        for k in range(len(chunks)):
            spectra, bad = pending.result()
            if k + 1 < len(chunks):
                pending = prefetch.submit(read_many, chunks[k + 1], cfg.read, workers)
            skipped += bad
            if spectra:
                frames.append(predict_spectra(cfg, model, spectra, device, mc, ensemble))
    if not frames:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{', '.join(str(p) for p in inputs)}: none of {len(paths)} files could be read{first}")
    table = pd.concat(frames, ignore_index=True)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    written = [write_labels_csv(table_path, table) if fmt == "csv" else write_labels_h5(table_path, table)]
    if skipped:
        skip_path = table_path.with_name(f"{table_path.stem}_skipped.csv")
        written.append(write_labels_csv(skip_path, pd.DataFrame({"file": [str(p) for p, _ in skipped], "reason": [r for _, r in skipped]})))
        print(f"skipped {len(skipped)} of {len(paths)} files (reasons in {skip_path})", file=sys.stderr)
    if cfg.predict.plot and {"TEFF", "LOGG"} <= set(cfg.labels.names):
        from neurotrain.tasks.stellar.plots import plot_kiel

        written.append(plot_kiel(table, table_path.with_name(f"{table_path.stem}_kiel.png")))
    return [Path(p) for p in written]

