"""``neurotrain predict CKPT spectra/ -o labels.csv`` for stellar: read LAMOST FITS (either layout), CSV or
HDF5 spectra, preprocess them in batches on the device, and write one row per spectrum: id, file, OBSID,
RA, DEC, the pipeline's S/N, a quality flag, and every label with its 1-sigma uncertainty (``<LABEL>_ERR``;
the heteroscedastic head's sigma, combined with MC-dropout / ensemble spread when configured).

Files that cannot be read are not predicted; they are listed with the reason in ``<stem>_skipped.csv`` and
counted on the console. Spectra the pipeline flags (S/N below ``preprocess.min_snr``, too few good pixels)
are predicted but carry the flag, so that a user can cut on it. Reading, device work and writing run at once
(:func:`run_pipeline`): reader processes read the next batches while the device preprocesses and predicts the
current one and a writer thread formats and appends the rows of the previous one; rows keep the input order.

Options (``--opt key=value``): ``mc_samples`` (MC-dropout passes, overrides ``uncertainty.mc_samples``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurotrain.errors import ConfigError, DataError
from neurotrain.tasks.stellar.catalog import write_labels_csv
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


def check_table_path(table: Path, fmt: str) -> None:
    """Before any reading: a labels table that could not be written is one :class:`DataError` naming ``-o`` as
    the user gave it (not the temporary name the writer would fail on after the whole run). Creates nothing."""
    from neurotrain.engine.api import check_output_dir

    if table.is_dir():
        raise DataError(f"{table}: -o: expected a {fmt} file name (got an existing folder)")
    probe = table.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DataError(f"{table}: -o: expected a path inside a folder ({probe} is a file)")
    check_output_dir(table.parent, "-o")  # permissions


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


def _meta_float(meta: list[dict[str, Any]], key: str) -> np.ndarray:
    """A header value per spectrum as float64, NaN where missing or not a number."""
    return pd.to_numeric(pd.Series([_meta_value(m, key) for m in meta], dtype=object), errors="coerce").to_numpy(np.float64)


@torch.no_grad()
def infer_batch(cfg: StellarConfig, model: nn.Module, raw: dict[str, torch.Tensor], mc_samples: int,
                ensemble: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Preprocess a raw batch and predict its labels, on the raw batch's device: ``snr`` (B,), ``reason`` (B,)
    (codes of ``preprocess.REASONS``), ``mean`` / ``sigma`` (B, L) physical units. On CUDA this only queues the
    work; reading the results (``.cpu()``) waits for it."""
    from neurotrain.engine.inference import autocast
    from neurotrain.tasks.stellar.postprocess import predict_labels
    from neurotrain.tasks.stellar.preprocess import network_input, preprocess_batch

    pre = preprocess_batch(raw, cfg.preprocess)
    x = network_input(pre, cfg.model.in_channels, cfg.preprocess)
    with autocast(raw["flux"].device, cfg.inference.precision):
        labels = predict_labels(model, x, mc_samples=mc_samples, ensemble=ensemble)
    return {"snr": pre["snr"], "reason": pre["reason"], "mean": labels["mean"], "sigma": labels["sigma"]}


def table_columns(label_names: list[str], batch: Any, result: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The labels table's columns of one batch: id, file, obsid, ra, dec, snr, flag, then each label and its
    ``_ERR``. ``batch`` is a ``stream.SpectraBatch``, ``result`` :func:`infer_batch`'s output (any device)."""
    from neurotrain.tasks.stellar.preprocess import REASONS

    names = np.array(["", *REASONS[1:]], dtype=object)  # code 0 (kept): an empty flag
    mean = result["mean"].float().cpu().numpy()
    sigma = result["sigma"].float().cpu().numpy()
    cols: dict[str, Any] = {
        "id": batch.ids, "file": batch.files, "obsid": [_meta_value(m, "OBSID") for m in batch.meta],
        "ra": _meta_float(batch.meta, "RA"), "dec": _meta_float(batch.meta, "DEC"),
        "snr": result["snr"].float().cpu().numpy().astype(np.float64),
        "flag": list(names[result["reason"].cpu().numpy().astype(np.int64)]),
    }
    for j, name in enumerate(label_names):
        cols[name] = mean[:, j].astype(np.float64)
        cols[f"{name}_ERR"] = sigma[:, j].astype(np.float64)
    return cols


def predict_spectra(
    cfg: StellarConfig, model: nn.Module, spectra: list[Any], device: torch.device, mc_samples: int,
    ensemble: list[nn.Module],
) -> pd.DataFrame:
    """Labels for already-read spectra (one batch) as a table (the columns of :func:`table_columns`)."""
    from neurotrain.tasks.stellar.stream import stack

    batch = stack(spectra)
    return pd.DataFrame(table_columns(list(cfg.labels.names), batch,
                                      infer_batch(cfg, model, batch.to_raw(device), mc_samples, ensemble)))


def predict_files(
    cfg: StellarConfig, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any
) -> list[Path]:
    """Spectra files / folders -> a labels table (CSV or HDF5) and, when ``predict.plot``, a Kiel diagram."""
    opts = _check_options(dict(options))
    mc = opts.get("mc_samples")
    return run_pipeline(cfg, model, inputs, output, mc_samples=cfg.uncertainty.mc_samples if mc is None else int(mc))


def run_pipeline(
    cfg: StellarConfig, model: nn.Module, inputs: list[Path], output: Path | None, *, mc_samples: int,
    stats: dict[str, float] | None = None,
) -> list[Path]:
    """The streaming pipeline behind :func:`predict_files`, three stages working at once:

    1. readers (``catalog.read_workers`` processes with ``read.processes``, else threads) read and stack the
       files of the next batches (``stream.iter_batches``, input order);
    2. this thread moves batch k to the device, preprocesses and predicts it (queued on the GPU);
    3. a writer thread copies batch k-1's results to the host, formats its rows as whole arrays
       (``table_csv.format_rows``) and appends them to a temporary file, renamed into place at the end.

    ``stats`` (when given) receives the stage times in seconds: ``read_wait_s`` (this thread waiting for the
    readers), ``device_s`` (moving, preprocessing and predicting the batches: on CUDA the stream's time
    between events around each batch, so that the overlap is not disturbed; on the CPU the wall time),
    ``device_host_s`` (this thread's time issuing that work), ``writer_busy_s``, ``writer_wait_s`` (this thread
    waiting for the writer), ``total_s``, and ``files``, ``rows``, ``skipped``."""
    from neurotrain.engine.inference import resolve_device
    from neurotrain.tasks.stellar.io import find_spectra
    from neurotrain.tasks.stellar.stream import iter_batches
    from neurotrain.tasks.stellar.table_csv import TableWriter

    t_start = time.perf_counter()
    table_path, fmt = output_paths(output)
    check_table_path(table_path, fmt)
    paths = find_spectra([Path(p) for p in inputs], cfg.read.patterns, recursive=cfg.read.recursive)
    if not paths:
        raise DataError(f"{', '.join(str(p) for p in inputs)}: no spectra found (patterns {cfg.read.patterns})")
    device = resolve_device(cfg.inference.device, model)
    model = model.to(device).eval()
    ensemble = load_ensemble(cfg, device)
    names = list(cfg.labels.names)
    plot = cfg.predict.plot and {"TEFF", "LOGG"} <= set(names)
    keep = [n for n in ("TEFF", "LOGG", "FE_H") if plot and n in names]
    skipped: list[tuple[Path, str]] = []
    read_wait = device_s = 0.0
    timing = stats is not None and device.type == "cuda"
    events: list[tuple[Any, Any]] = []
    writer: TableWriter | None = None
    batches = iter_batches(paths, cfg.read, cfg.catalog.read_workers, cfg.predict.batch_size)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            read_wait += t1 - t0
            if batch is None:
                break
            skipped += batch.skipped
            if not len(batch):
                continue
            if timing:  # CUDA events time the device's stream without making this thread wait for it
                events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
                events[-1][0].record()
            result = infer_batch(cfg, model, batch.to_raw(device), mc_samples, ensemble)
            if timing:
                events[-1][1].record()
            device_s += time.perf_counter() - t1
            if writer is None:  # started after the first batch, so that reader processes fork before it exists
                writer = TableWriter(table_path, fmt, prepare=_Prepare(names), keep=keep)
            writer.put((batch.without_arrays(), result))
        if writer is None:
            first = f" (first: {skipped[0][1]})" if skipped else ""  # each reason starts with its file
            raise DataError(f"{', '.join(str(p) for p in inputs)}: none of {len(paths)} files could be read{first}")
        written = [writer.close()]
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        batches.close()
    if skipped:
        skip_path = table_path.with_name(f"{table_path.stem}_skipped.csv")
        written.append(write_labels_csv(skip_path, pd.DataFrame({"file": [str(p) for p, _ in skipped],
                                                                 "reason": [r for _, r in skipped]})))
        print(f"skipped {len(skipped)} of {len(paths)} files (first: {skipped[0][1]}; every reason in {skip_path})",
              file=sys.stderr)
    if plot:
        from neurotrain.tasks.stellar.plots import plot_kiel

        kiel = pd.DataFrame({k: np.concatenate(v) for k, v in writer.kept.items()})
        written.append(plot_kiel(kiel, table_path.with_name(f"{table_path.stem}_kiel.png")))
    if stats is not None:
        if timing:
            torch.cuda.synchronize(device)
        gpu_s = sum(a.elapsed_time(b) for a, b in events) / 1e3 if timing else device_s
        stats.update(read_wait_s=read_wait, device_s=gpu_s, device_host_s=device_s, writer_busy_s=writer.busy_s,
                     writer_wait_s=writer.wait_s, total_s=time.perf_counter() - t_start, files=len(paths),
                     rows=writer.rows, skipped=len(skipped))
    return [Path(p) for p in written]


class _Prepare:
    """The writer thread's step: ``(batch, device results)`` -> the table's columns."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self, item: tuple[Any, dict[str, torch.Tensor]]) -> dict[str, Any]:
        batch, result = item
        return table_columns(self.names, batch, result)
