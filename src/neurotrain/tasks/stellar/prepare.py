"""Catalogues x spectra folders -> prepared HDF5 (the seed's ``preprocessdata.py``), resumable.

``prepare(cfg)`` reads ``catalog.reference`` (labels for train/val/test) and ``catalog.prediction``
(only preprocessed) catalogues, finds each row's spectrum in ``catalog.spectra_dirs`` (by file stem,
else by the header's ``OBSID``), reads ``catalog.chunk_size`` files at a time with threads (the next
chunk is read while the current one is preprocessed as one tensor batch, on the GPU when there is
one) and writes ``<prepared_dir>/reference.h5`` and ``prediction.h5``:

``input`` (n,C,M) float32, ``target`` (n,L) float32 (NaN = missing), ``target_mask`` (n,L) bool,
``snr`` (n,) float32, ``z`` (n,) float64, ``id`` (n,) fixed-length UTF-8 bytes, ``source_index`` (n,)
the row of the spectrum in the matched catalogue, and for the reference set ``split`` (n,) int8
(0 train, 1 val, 2 test; ``catalog.splits`` with ``catalog.split_seed`` over the catalogue's sorted
ids, so a spectrum's split does not depend on chunking, drops or resumption). Attributes:
``label_names``, ``label_mean``/``label_std`` (train split, physical units), ``grid_min``/``grid_max``/
``grid_step`` and the settings' fingerprint.

Resumption: rows go through :class:`neurotrain.io.hdf5.H5Writer` (``.part`` file, ``n_complete_rows``).
Before each chunk's rows are appended, its drops are written to a sidecar
``.<name>.progress.json``. A rerun finds the last durable row's ``source_index`` s, re-processes the
chunk that holds s + 1 from its start (so every batch has the same members as in an uninterrupted
run and the result is identical), keeps rows and drops after s, and continues.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from neurotrain.errors import ConfigError, DataError
from neurotrain.io.atomic import atomic_path
from neurotrain.io.hdf5 import ROWS_ATTR, H5Writer, part_path, split_indices
from neurotrain.tasks.stellar.catalog import read_catalog
from neurotrain.tasks.stellar.config import StellarConfig
from neurotrain.tasks.stellar.io import Spectrum, find_spectra, read_many, spectrum_id, stack_spectra
from neurotrain.tasks.stellar.preprocess import REASONS, network_input, preprocess_batch, rest_grid

UNREADABLE = "unreadable"
MISSING = "no_spectrum_file"
#: example files listed per drop reason in the summary
_EXAMPLES = 5
#: spectra drawn in the stage figure
_STAGE_SPECTRA = 4


def _after_chunk(name: str, chunk: int) -> None:
    """Called after each chunk is committed (tests replace it to simulate a crash)."""


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _obsid(path: Path) -> str | None:
    """The header's OBSID, reading only the primary header (None when absent/unreadable)."""
    from neurotrain.tasks.stellar import fits_fast

    try:
        with open(path, "rb") as fh:
            head = fh.read(fits_fast.BLOCK * 8)
        if path.name.endswith(".gz"):
            import gzip

            with gzip.open(path, "rb") as fh:
                head = fh.read(fits_fast.BLOCK * 8)
        h, _ = fits_fast.parse_header(head, 0)
        v = h.get("OBSID")
        return None if v is None else str(v).strip()
    except Exception:  # noqa: BLE001 (a file we cannot parse simply does not match by OBSID)
        return None


def match_spectra(ids: Sequence[str], dirs: Sequence[Path], cfg: StellarConfig) -> list[Path | None]:
    """Path of each catalogue id's spectrum in ``dirs`` (file stem first, then header OBSID of the
    files no stem matched), None where none is found."""
    files = find_spectra(dirs, cfg.read.patterns, cfg.read.recursive)
    by_stem: dict[str, Path] = {}
    for p in files:
        by_stem.setdefault(spectrum_id(p), p)
    out: list[Path | None] = [by_stem.get(i) for i in ids]
    if any(p is None for p in out):
        used = {p for p in out if p is not None}
        by_obsid: dict[str, Path] = {}
        for p in files:
            if p not in used and p.name.lower().endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
                o = _obsid(p)
                if o is not None:
                    by_obsid.setdefault(o, p)
        out = [p if p is not None else by_obsid.get(i) for p, i in zip(out, ids)]
    return out


def _sha1(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _label_table(cat: pd.DataFrame, names: list[str]) -> np.ndarray:
    cols = [cat[n].to_numpy(np.float64) if n in cat.columns else np.full(len(cat), np.nan) for n in names]
    return np.stack(cols, 1).astype(np.float32) if names else np.zeros((len(cat), 0), np.float32)


def _resume_state(out: Path, progress: Path, fingerprint: str) -> tuple[int, list[list[Any]], np.ndarray, np.ndarray]:
    """(last durable source index s, drops up to s, train targets and their mask up to s) of an
    interrupted run, or (-1, [], empty, empty) to start afresh."""
    part = part_path(out)
    empty = np.zeros((0, 0), np.float32)
    if not part.exists():
        return -1, [], empty, empty
    try:
        with h5py.File(part, "r") as f:
            if f.attrs.get("fingerprint") != fingerprint:
                raise DataError(f"{part}: an interrupted run with other settings or inputs; delete it to start again")
            rows = int(f.attrs.get(ROWS_ATTR, 0))
            src = np.asarray(f["source_index"][:rows]) if rows and "source_index" in f else np.zeros(0, np.int64)
            tgt = np.asarray(f["target"][:rows]) if rows and "target" in f else empty
            split = np.asarray(f["split"][:rows]) if rows and "split" in f else np.zeros(0, np.int8)
    except OSError:
        part.unlink()  # torn before its first commit: nothing to keep
        return -1, [], empty, empty
    s = int(src[-1]) if src.size else -1
    drops: list[list[Any]] = []
    if progress.exists():
        state = json.loads(progress.read_text())
        if state.get("fingerprint") == fingerprint:
            drops = [d for d in state["drops"] if d[0] <= s]
        elif s >= 0:
            raise DataError(f"{progress}: progress record of other inputs; delete {part} to start again")
    train = tgt[split == 0] if split.size else empty
    return s, drops, train, np.isfinite(train)


def _prepare_set(name: str, catalogs: list[Path], cfg: StellarConfig, device: torch.device,
                 progress: bool, with_split: bool) -> dict[str, Any]:
    cc = cfg.catalog
    out = Path(cc.prepared_dir) / f"{name}.h5"
    sidecar = Path(cc.prepared_dir) / f".{name}.progress.json"
    names = list(cfg.labels.names)
    cat = read_catalog(catalogs, cfg.read.id_column, names if with_split else None)
    if not with_split:
        names = [n for n in names if n in cat.columns]
    paths = match_spectra(cat["id"].tolist(), list(cc.spectra_dirs), cfg)
    split_of = np.zeros(len(cat), np.int8)
    if with_split:
        order = np.argsort(cat["id"].to_numpy(str), kind="stable")
        for k, part in enumerate(split_indices(len(cat), cc.splits, cc.split_seed)):
            split_of[order[part]] = k
    items = [i for i, p in enumerate(paths) if p is not None]
    missing = [[i, MISSING, str(cat["id"].iloc[i])] for i, p in enumerate(paths) if p is None]
    labels = _label_table(cat, names)
    ids = cat["id"].tolist()
    id_width = max([1, *(len(i.encode()) for i in ids)])
    grid = rest_grid(cfg.preprocess)
    settings = {"preprocess": cfg.preprocess.model_dump(mode="json"), "read": cfg.read.model_dump(mode="json"),
                "in_channels": cfg.model.in_channels, "labels": names, "chunk": cc.chunk_size,
                "splits": list(cc.splits), "seed": cc.split_seed}
    fingerprint = _sha1({"settings": settings, "ids": cat["id"].tolist(), "paths": [str(p) for p in paths]})
    attrs = {"label_names": np.array(names, dtype="S"), "grid_min": float(grid[0]), "grid_max": float(grid[-1]),
             "grid_step": cfg.preprocess.grid_step_log10, "set": name, "fingerprint": fingerprint,
             "catalogs": json.dumps([str(c) for c in catalogs]), "in_channels": cfg.model.in_channels}
    s, drops, train_prev, _ = _resume_state(out, sidecar, fingerprint)
    cs = cc.chunk_size
    n_chunks = math.ceil(len(items) / cs)
    # re-process the whole chunk holding the first unfinished item: batches keep their members
    first_chunk = (items.index(s) + 1) // cs if s in items else 0
    # train-split targets in row order (L floats a row); the statistics are computed once at the end,
    # so a resumed run sums in the same order as an uninterrupted one
    train_rows = [train_prev.reshape(-1, len(names))]
    snr_all: list[np.ndarray] = []
    plot_dir = Path(cc.prepared_dir) / "plots"
    bar = _progress(progress, len(items), f"prepare {name}", done=first_chunk * cs)

    def read(k: int) -> tuple[list[Spectrum], list[tuple[Path, str]]]:
        return read_many([paths[i] for i in items[k * cs:(k + 1) * cs]], cfg.read, cc.read_workers)  # type: ignore[misc]

    with H5Writer(out, resume=s >= 0, attrs=attrs) as w, ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, first_chunk) if first_chunk < n_chunks else None
        for k in range(first_chunk, n_chunks):
            assert pending is not None
            spectra, skipped = pending.result()
            pending = pool.submit(read, k + 1) if k + 1 < n_chunks else None
            chunk_items = items[k * cs:(k + 1) * cs]
            pos = {paths[i]: i for i in chunk_items}
            new_drops = [[pos[p], UNREADABLE, r] for p, r in skipped if pos[p] > s]
            rows: dict[str, Any] = {}
            if spectra:
                src = np.array([pos[sp.path] for sp in spectra], np.int64)
                raw = stack_spectra(spectra, device)
                pre = preprocess_batch(raw, cfg.preprocess, return_stages=k == first_chunk and cc.figures)
                reason = pre["reason"].cpu().numpy()
                keep = (reason == 0) & (src > s)
                new_drops += [[int(i), REASONS[int(r)], str(sp.path)] for i, r, sp in zip(src, reason, spectra)
                              if r != 0 and i > s]
                if k == first_chunk and cc.figures:
                    _stage_figure(pre["stages"], [sp.id for sp in spectra], reason, plot_dir / f"{name}_stages.png")
                kt = torch.as_tensor(keep, device=device)
                x = network_input(pre, cfg.model.in_channels, cfg.preprocess)[kt].cpu().numpy()
                idx = src[keep]
                tgt = labels[idx]
                rows = {"input": x, "target": tgt, "target_mask": np.isfinite(tgt), "snr": pre["snr"].float().cpu().numpy()[keep],
                        "z": raw["z"].cpu().numpy()[keep], "id": np.array([ids[i].encode() for i in idx], dtype=f"S{id_width}"),
                        "source_index": idx}
                if with_split:
                    rows["split"] = split_of[idx]
                    train_rows.append(tgt[rows["split"] == 0])
                snr_all.append(rows["snr"])
            drops += new_drops
            # drops first: whatever rows become durable, their chunk's drops are already recorded
            _write_json(sidecar, {"fingerprint": fingerprint, "drops": drops})
            if rows and len(rows["id"]):
                w.append(**rows)
            bar(len(chunk_items))
            _after_chunk(name, k)
        train = np.concatenate(train_rows).astype(np.float64)
        n_train = int(train.shape[0])
        mean, std = _label_stats(train)
        counts = Counter(d[1] for d in drops + missing)
        summary = {"file": str(out), "catalogue_rows": len(cat), "spectra_found": len(items),
                   "rows": w.n_rows, "dropped": sum(counts.values()), "drops": dict(counts),
                   "examples": {r: [d[2] for d in drops + missing if d[1] == r][:_EXAMPLES] for r in counts},
                   "non_numeric_labels": cat.attrs.get("non_numeric", {}),
                   "non_numeric_first": cat.attrs.get("non_numeric_first", {})}
        if w.n_rows == 0:
            # nothing to keep: no file under the final name (a good one there stays), no .part, no sidecar
            w.abort()
            part_path(out).unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            bar(None)
            dirs = ", ".join(str(d) for d in cc.spectra_dirs)
            raise DataError(f"{', '.join(str(c) for c in catalogs)}: no usable spectrum among {len(cat)} catalogue "
                            f"rows in {dirs} ({dict(counts)}; e.g. {next(iter(summary['examples'].values()), ['-'])[0]})")
        w.set_attrs(label_mean=mean if with_split else np.full(len(names), np.nan), n_train=n_train,
                    label_std=std if with_split else np.full(len(names), np.nan), summary=json.dumps(summary))
        total = w.n_rows
    bar(None)
    sidecar.unlink(missing_ok=True)
    summary["label_mean"] = [float(v) for v in mean] if with_split else []
    summary["label_std"] = [float(v) for v in std] if with_split else []
    if snr_all and cc.figures:
        from neurotrain.tasks.stellar.plots import plot_drop_summary, plot_snr_hist

        plot_snr_hist(np.concatenate(snr_all), plot_dir / f"{name}_snr.png", cfg.preprocess.min_snr)
        plot_drop_summary({"kept": total, **counts}, plot_dir / f"{name}_drops.png")
    return summary


def _label_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label mean and standard deviation over the known (finite) values; a label without values
    gets mean 0 and std 1, one with a single value std 1, so normalisation stays finite."""
    known = np.isfinite(train)
    n = known.sum(0)
    x = np.where(known, train, 0.0)
    mean = np.where(n > 0, x.sum(0) / np.maximum(n, 1), 0.0)
    var = np.where(known, (train - mean) ** 2, 0.0).sum(0) / np.maximum(n, 1)
    std = np.where((n > 1) & (var > 0), np.sqrt(var), 1.0)
    return mean, std


def _stage_figure(stages: dict[str, Any], ids: list[str], reason: np.ndarray, path: Path) -> None:
    from neurotrain.tasks.stellar.plots import plot_stages

    kept = [i for i in range(len(ids)) if reason[i] == 0][:_STAGE_SPECTRA]
    if kept:
        plot_stages(stages, ids, path, rows=kept)


def _write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str))


def _progress(enabled: bool, total: int, desc: str, done: int = 0) -> Any:
    """A callable: ``bar(n)`` advances by n files, ``bar(None)`` closes. tqdm on stderr, or nothing."""
    if not enabled:
        return lambda n: None
    from tqdm.auto import tqdm

    t = tqdm(total=total, initial=min(done, total), desc=desc, unit="spectra", leave=True)

    def step(n: int | None) -> None:
        if n is None:
            t.close()
        else:
            t.update(n)

    return step


def prepare(cfg: StellarConfig, *, progress: bool = True, device: str | torch.device | None = None,
            **_: Any) -> dict[str, Any]:
    """Prepare the reference (and prediction) sets; returns and writes ``<prepared_dir>/summary.json``:
    rows written, drops per reason with example files, label statistics."""
    cc = cfg.catalog
    if not cc.reference and not cc.prediction:
        raise ConfigError("config error: catalog.reference / catalog.prediction: expected at least one catalogue CSV")
    if not cc.spectra_dirs:
        raise ConfigError("config error: catalog.spectra_dirs: expected the folder(s) holding the spectra")
    if abs(sum(cc.splits) - 1.0) > 1e-6:
        raise ConfigError(f"config error: catalog.splits: expected fractions summing to 1 (got {list(cc.splits)})")
    dev = torch.device(device) if device is not None else _device()
    result: dict[str, Any] = {}
    for name, cats, split in (("reference", cc.reference, True), ("prediction", cc.prediction, False)):
        if cats:
            result[name] = _prepare_set(name, [Path(c) for c in cats], cfg, dev, progress, split)
    _write_json(Path(cc.prepared_dir) / "summary.json", result)
    flat: dict[str, Any] = {}
    for name, s in result.items():
        flat[f"{name}_rows"] = s["rows"]
        flat[f"{name}_dropped"] = s["dropped"]
        line = ", ".join(f"{k} {v}" for k, v in s["drops"].items()) or "none"
        print(f"{name}: {s['rows']} of {s['catalogue_rows']} catalogue rows prepared -> {s['file']}; dropped: {line}")
        if s.get("non_numeric_labels"):
            counts = ", ".join(f"{k} {v}" for k, v in s["non_numeric_labels"].items())
            first = "; ".join(f"{k}: {v}" for k, v in s.get("non_numeric_first", {}).items())
            print(f"{name}: label values that are not numbers, read as missing: {counts} (first: {first})")
    return {**flat, **result}


def preprocess_files(paths: Sequence[str | Path], cfg: StellarConfig, device: str | torch.device | None = None,
                     chunk_size: int | None = None) -> Iterator[tuple[list[str], dict[str, Any], list[tuple[Path, str]]]]:
    """Stream files in chunks: yields (ids of the read spectra, preprocessed dict with ``"input"`` (B,C,M)
    added, (path, reason) of unreadable files). The next chunk is read while one is preprocessed."""
    dev = torch.device(device) if device is not None else _device()
    size = chunk_size or cfg.catalog.chunk_size
    chunks = [list(paths[i:i + size]) for i in range(0, len(paths), size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_many, chunks[0], cfg.read, cfg.catalog.read_workers)
        for k in range(len(chunks)):
            spectra, skipped = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(read_many, chunks[k + 1], cfg.read, cfg.catalog.read_workers)
            if not spectra:
                yield [], {}, skipped
                continue
            pre = preprocess_batch(stack_spectra(spectra, dev), cfg.preprocess)
            pre["input"] = network_input(pre, cfg.model.in_channels, cfg.preprocess)
            yield [sp.id for sp in spectra], pre, skipped
