"""The ``stellar`` task: stellar labels and abundances from LAMOST low-resolution spectra.

Registration: wires the schema (``config.py``), the generator (``simulate.py``), the preprocessing
pipeline (``preprocess.py``), the network (``models.py``), loss, metrics, baselines, evaluation,
analysis and prediction of the sibling modules to the engine (see ``neurotrain.task.Task``).

Training data come either from the generator on the training device (default; every batch is drawn,
observed through a LAMOST-like instrument, and preprocessed by the same pipeline that real files go
through) or from a prepared HDF5 file (``neurotrain prepare``: catalogue labels x FITS spectra), whose
``split`` column holds the seed's 7:1:2 train/val/test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from neurotrain.config import Config
from neurotrain.errors import ConfigError, DataError
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task, TaskOptions
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, StellarConfig

H5_KEYS = ("input", "target", "target_mask", "snr")


def _cfg(cfg: Any) -> StellarConfig:
    if not isinstance(cfg, StellarConfig):
        raise ConfigError(f"config error: task: expected a stellar config (got {type(cfg).__name__})")
    return cfg


def generator_label_index(cfg: StellarConfig) -> list[int]:
    """Positions of ``labels.names`` in the generator's label vector (``GENERATOR_LABELS``)."""
    missing = [n for n in cfg.labels.names if n not in GENERATOR_LABELS]
    if missing:
        raise ConfigError(
            f"config error: labels.names: the generator knows {list(GENERATOR_LABELS)} (got {missing}); "
            "train labels it lacks from a prepared catalogue (data.path)"
        )
    return [GENERATOR_LABELS.index(n) for n in cfg.labels.names]


def prepared_label_stats(path: Path, names: list[str]) -> tuple[list[float], list[float]] | None:
    """Per-label mean and std stored by ``prepare`` in a prepared HDF5 file, in ``names`` order."""
    import h5py

    if not Path(path).is_file():
        return None
    with h5py.File(path, "r") as f:
        if "label_mean" not in f.attrs or "label_names" not in f.attrs:
            return None
        stored = [s.decode() if isinstance(s, bytes) else str(s) for s in np.atleast_1d(f.attrs["label_names"])]
        mean = np.asarray(f.attrs["label_mean"], dtype=float)
        std = np.asarray(f.attrs["label_std"], dtype=float)
    missing = [n for n in names if n not in stored]
    if missing:
        raise DataError(f"{path}: label_names: expected the configured labels {names} (missing {missing})")
    idx = [stored.index(n) for n in names]
    return [float(mean[i]) for i in idx], [float(std[i]) for i in idx]


def simulate_spectra(
    cfg: StellarConfig, labels: torch.Tensor, snr: torch.Tensor, generator: torch.Generator, spectra: bool = False
) -> dict[str, torch.Tensor]:
    """Generator labels (B, 8) and S/N (B,) -> a batch in the engine's layout, observed and preprocessed
    exactly as a real LAMOST file would be. ``labels_all`` keeps every generator label (for the CRLB and
    the dwarf/giant split); ``target_mask`` is False for spectra the pipeline would drop. ``spectra`` also
    returns the normalised ``flux`` / ``ivar`` (B, M) and ``keep`` (B,) that the baselines fit on."""
    from neurotrain.tasks.stellar.preprocess import network_input, preprocess_batch
    from neurotrain.tasks.stellar.simulate import simulate_raw

    raw = simulate_raw(labels, snr, cfg.simulate, generator, labels.device)
    pre = preprocess_batch(raw, cfg.preprocess)
    target = labels[:, generator_label_index(cfg)].float()
    keep = pre["keep"].to(torch.bool)
    out = {
        "input": network_input(pre, cfg.model.in_channels, cfg.preprocess),
        "target": target,
        "target_mask": keep[:, None].expand_as(target).clone(),
        "snr": pre["snr"].float(),
        "labels_all": labels.float(),
    }
    if spectra:
        out.update(flux=pre["flux"].float(), ivar=pre["ivar"].float(), keep=keep)
    return out


def draw_batch(cfg: StellarConfig, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """``n`` spectra from the generator's label prior at S/N drawn from ``simulate.snr_range``."""
    from neurotrain.tasks.stellar.simulate import sample_labels, sample_snr

    labels = sample_labels(n, cfg.simulate, generator, device)
    snr = sample_snr(n, cfg.simulate, generator, device)
    return simulate_spectra(cfg, labels, snr, generator)


class TensorPool(torch.utils.data.Dataset):
    """A fixed set of simulated spectra held in memory; item ``i`` is one spectrum's dict of tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.n = int(next(iter(tensors.values())).shape[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def simulated_pool(cfg: StellarConfig, split: str, n: int, chunk: int = 256) -> TensorPool:
    """``n`` generator spectra for ``split``, drawn once on the inference device from a seed that depends on
    (``seed``, split) only; the evaluation's held-out seeds (``evaluate.seed_offset``) are far from these."""
    from neurotrain.engine.inference import resolve_device

    device = resolve_device(cfg.inference.device, lambda x: x)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1_000_003 + ("train", "val", "test").index(split) * 7919 + 17)
    parts = [draw_batch(cfg, min(chunk, n - s), gen, device) for s in range(0, n, chunk)]
    keys = ("input", "target", "target_mask", "snr")
    return TensorPool({k: torch.cat([p[k] for p in parts]).cpu() for k in keys})


class StellarPredictOptions(TaskOptions):
    """``neurotrain predict`` options of stellar (``--opt key=value``)."""

    mc_samples: int | None = Field(None, ge=0, description="MC-dropout passes (overrides uncertainty.mc_samples)")
    recalibrate: bool | None = Field(
        None, description="refit the sigma calibration (global and per S/N) on the calibration set before predicting "
        "(default: calibration.refit_on_load)")


class StellarEvaluateOptions(TaskOptions):
    """``neurotrain evaluate`` options of stellar."""

    methods: list[Literal["xgboost", "lightgbm", "cannon"]] | None = Field(
        None, description="baselines to score (default: baseline.methods)")
    figures: bool | None = Field(None, description="write the report's figures (default: evaluate.figures)")

    @field_validator("methods", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v


class StellarSimulateOptions(TaskOptions):
    """``neurotrain simulate`` options of stellar."""

    seed: int | None = Field(None, description="random seed of the spectra (default: the config's seed)")


class StellarAnalyzeOptions(TaskOptions):
    """``neurotrain analyze`` options of stellar (``spectra``/``wave`` only from Python)."""

    snr: float | None = Field(None, gt=0, description="S/N of the held-out synthetic spectra (default 50)")
    labels: list[str] | None = Field(None, description="labels to explain (default: all)")
    figures: bool | None = Field(None, description="write the figures (default: true)")
    synthetic: bool | None = Field(None, description="explain synthetic spectra even when data.path is set")
    device: str | None = Field(None, description="cpu or cuda")
    spectra: Any = Field(None, description="(Python) a dict of tensors to explain instead")
    wave: Any = Field(None, description="(Python) rest wavelengths of the input pixels")

    @field_validator("labels", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v


class StellarTask(Task):
    """Stellar labels (Teff, log g, [Fe/H], [X/Fe]) with uncertainties from LAMOST low-resolution spectra."""

    name = "stellar"
    config_cls = StellarConfig
    predict_options = StellarPredictOptions
    evaluate_options = StellarEvaluateOptions
    simulate_options = StellarSimulateOptions
    analyze_options = StellarAnalyzeOptions

    def build_model(self, cfg: Config) -> nn.Module:
        from neurotrain.tasks.stellar.models import build_model

        return build_model(_cfg(cfg))

    def build_loss(self, cfg: Config) -> nn.Module:
        from neurotrain.tasks.stellar.losses import build_loss

        return build_loss(_cfg(cfg))

    def build_metrics(self, cfg: Config) -> Any:
        from neurotrain.tasks.stellar.metrics import build_metrics

        return build_metrics(_cfg(cfg))

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return model(batch["input"])

    def update_metrics(self, metrics: Any, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        from neurotrain.tasks.stellar.metrics import update_collection

        update_collection(metrics, pred, batch)

    def simulate_batch(
        self, cfg: Config, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        batch = draw_batch(_cfg(cfg), batch_size, generator, device)
        batch.pop("labels_all")
        return batch

    def callbacks(self, cfg: Config) -> list[Any]:
        from neurotrain.tasks.stellar.calibration import SigmaCalibration

        c = _cfg(cfg)
        return [SigmaCalibration(c)] if c.calibration.enabled and c.model.heteroscedastic else []

    def h5_keys(self, cfg: Config) -> dict[str, str]:
        return {k: k for k in H5_KEYS}

    def datasets(self, cfg: Config) -> dict[str, Any] | None:
        """A prepared file (``neurotrain prepare``) is split by its own ``split`` column (the seed's 7:1:2,
        decided by spectrum id); a plain HDF5 of simulated batches falls back to the engine's fractions; with
        ``pool.train`` > 0 and no file, fixed simulated pools; else the engine simulates every batch."""
        import h5py

        from neurotrain.io.hdf5 import H5Dataset

        c = _cfg(cfg)
        path = c.data.path
        if path is None:
            if c.pool.train == 0:
                return None
            sizes = {"train": c.pool.train, "val": c.pool.val, "test": c.pool.test}
            return {split: simulated_pool(c, split, n) for split, n in sizes.items()}
        if not Path(path).is_file():
            raise DataError(f"{path}: data.path: file not found (run `neurotrain prepare` or `neurotrain simulate stellar`)")
        with h5py.File(path, "r") as f:
            if "split" not in f:
                return None
            split = np.asarray(f["split"][:])
        keys = self.h5_keys(cfg)
        return {name: H5Dataset(path, keys, indices=np.flatnonzero(split == i)) for i, name in enumerate(("train", "val", "test"))}

    # ------------------------------------------------------------------ commands
    def prepare(self, cfg: Config, **options: Any) -> dict[str, Any]:
        """The seed's ``preprocessdata.py``: catalogues x FITS folders -> prepared HDF5 (resumable)."""
        from neurotrain.tasks.stellar.prepare import prepare

        return prepare(_cfg(cfg), **options)

    def simulate(self, cfg: Config, output: Path, n: int, **options: Any) -> Path:
        """``output`` ending in .h5/.hdf5: preprocessed training batches (the engine's HDF5 store); else a
        folder of LAMOST-layout FITS files plus ``catalog.csv`` with their labels. Option ``seed``."""
        from neurotrain.tasks.stellar.io import write_simulated_fits

        unknown = sorted(set(options) - {"seed"})
        if unknown:
            raise ConfigError(f"config error in simulate options: unknown {unknown} (known: ['seed'])")
        if Path(output).suffix.lower() in (".h5", ".hdf5"):
            return super().simulate(cfg, output, n)
        write_simulated_fits(_cfg(cfg), output, n, seed=int(options.get("seed", cfg.seed)))
        return Path(output)

    def predict(self, cfg: Config, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
        """Option ``recalibrate`` (or ``calibration.refit_on_load``) refits the sigma factors first
        (``calibration.recalibrate``, on the inference device); a checkpoint without S/N-dependent factors is
        otherwise used with its global factor, and a line on stderr says how to refit."""
        import sys

        from neurotrain.engine.inference import resolve_device
        from neurotrain.tasks.stellar.calibration import recalibrate
        from neurotrain.tasks.stellar.predict import predict_files

        c = _cfg(cfg)
        refit = options.pop("recalibrate", None)
        if refit or (refit is None and c.calibration.refit_on_load):
            recalibrate(c, model.to(resolve_device(c.inference.device, model)), force=True)
        elif getattr(model, "heteroscedastic", False) and not bool(getattr(model, "snr_calibrated", True)):
            print("stellar: this checkpoint's sigma calibration does not depend on S/N; "
                  "--opt recalibrate=true fits one (no retraining)", file=sys.stderr)
        return predict_files(c, model, inputs, output, **options)

    def evaluate(self, cfg: Config, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
        """The network's sigma factors are refitted first when the checkpoint lacks the S/N-dependent ones or
        ``calibration.refit_on_load`` is set (``calibration.recalibrate``); the report and ``metrics.json``
        (key ``sigma_calibration``) then say so."""
        from neurotrain.tasks.stellar.calibration import append_to_report, recalibrate
        from neurotrain.tasks.stellar.evaluate import _device, evaluate

        c = _cfg(cfg)
        info = None
        if model is not None:
            model = model.to(_device(c))
            info = recalibrate(c, model)
        result = evaluate(c, model, run_dir, **options)
        if info is not None:
            result.metrics["sigma_calibration"] = info
            append_to_report(result.report_path, info)
        return result

    def analyze(self, cfg: Config, model: nn.Module, run_dir: Path, **options: Any) -> dict[str, Any]:
        from neurotrain.tasks.stellar.analysis import analyze

        return analyze(_cfg(cfg), model, run_dir, **options)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "optim.lr": trial.suggest_float("optim.lr", 1e-4, 3e-3, log=True),
            "model.base_channels": trial.suggest_categorical("model.base_channels", [16, 32, 48]),
            "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
            "model.blocks_per_group": trial.suggest_int("model.blocks_per_group", 1, 3),
        }

    def example_input(self, cfg: Config) -> tuple[torch.Tensor, ...]:
        from neurotrain.tasks.stellar.preprocess import rest_grid

        c = _cfg(cfg)
        m = int(rest_grid(c.preprocess).numel())
        return (torch.rand(1, c.model.in_channels, m),)


TASKS.register("stellar")(StellarTask())
