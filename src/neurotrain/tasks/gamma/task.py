"""The ``gamma`` task: scintillator (LYSO, NaI, CsI, LaBr3) -> HPGe-like gamma-ray spectrum enhancement.

Registration: wires the schema (``config.py``), simulator, network, loss, metrics, baseline and report
of the sibling modules to the engine (see ``neurotrain.task.Task``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from neurotrain.config import Config
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task, TaskOptions
from neurotrain.tasks.gamma.config import GammaConfig


class GammaPredictOptions(TaskOptions):
    """``neurotrain predict`` options of gamma (``--opt key=value``); unset keys fall back to ``predict.*``."""

    calibration: str | list[float] | None = Field(None, description="energy calibration, keV polynomial c0,c1[,c2]")
    crystal: str | None = Field(None, description="input detector: LYSO, NaI, CsI or LaBr3 (sets the FWHM law)")
    fwhm_662: float | None = Field(None, gt=0, description="input FWHM at 662 keV, as a fraction (overrides crystal)")
    power: float | None = Field(None, description="FWHM law exponent, FWHM ~ E^power (overrides crystal)")
    conserve_counts: bool | None = Field(None, description="rescale the enhanced spectrum to the measured counts")
    plot: bool | None = Field(None, description="write a PNG of input and enhanced spectra")
    verbose: bool | None = Field(None, description="print the peak table")
    detector_check: Literal["refuse", "warn", "off"] | None = Field(
        None, description="a file from another kind of detector than the model's input (e.g. HPGe): refuse, warn or off")
    min_peak_sigma: float | None = Field(None, description="drop listed peaks below this significance (sigma)")


class GammaEvaluateOptions(TaskOptions):
    """``neurotrain evaluate`` options of gamma."""

    n: int | None = Field(None, ge=1, description="held-out spectra per count level (default: evaluate.spectra_per_level)")


class GammaTask(Task):
    """LYSO/NaI/CsI/LaBr3 -> HPGe-like spectrum enhancement."""

    name = "gamma"
    config_cls = GammaConfig
    predict_options = GammaPredictOptions
    evaluate_options = GammaEvaluateOptions

    def build_model(self, cfg: Config) -> nn.Module:
        from neurotrain.tasks.gamma.models import build_model

        return build_model(cfg)  # type: ignore[arg-type]

    def build_loss(self, cfg: Config) -> nn.Module:
        from neurotrain.tasks.gamma.losses import build_loss

        return build_loss(cfg)  # type: ignore[arg-type]

    def build_metrics(self, cfg: Config) -> Any:
        from neurotrain.tasks.gamma.metrics import build_metrics

        return build_metrics(cfg)  # type: ignore[arg-type]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return model(batch["input"], batch.get("fwhm_params"))

    def update_metrics(self, metrics: Any, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        from neurotrain.tasks.gamma.metrics import update_collection

        update_collection(metrics, pred, batch)

    def simulate_batch(
        self, cfg: Config, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        from neurotrain.tasks.gamma.simulate import simulate_batch

        return simulate_batch(cfg, batch_size, generator, device)

    def h5_keys(self, cfg: Config) -> dict[str, str]:
        keys = ["input", "target", "fwhm_params", "scale", "line_energy", "line_area", "line_mask", "line_detectable"]
        return {k: k for k in keys}

    def check_predict_inputs(self, cfg: Config, inputs: list[Path], output: Path | None, **options: Any) -> None:
        """Every input read and checked (format, calibration, detector) before the network is built."""
        from neurotrain.tasks.gamma.predict import check_inputs

        check_inputs(cfg, inputs, output, **options)

    def predict(self, cfg: Config, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
        from neurotrain.tasks.gamma.predict import predict_files

        return predict_files(cfg, model, inputs, output, **options)  # type: ignore[arg-type]

    def evaluate(self, cfg: Config, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
        from neurotrain.tasks.gamma.evaluate import evaluate

        return evaluate(cfg, model, run_dir, **options)  # type: ignore[arg-type]

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "optim.lr": trial.suggest_float("optim.lr", 1e-4, 3e-3, log=True),
            "model.base_channels": trial.suggest_categorical("model.base_channels", [16, 32, 48]),
            "loss.peak_weight": trial.suggest_float("loss.peak_weight", 1.0, 20.0, log=True),
        }

    def example_input(self, cfg: Config) -> tuple[torch.Tensor, ...]:
        n = cfg.simulate.n_channels  # type: ignore[attr-defined]
        return (torch.rand(1, 3, n), torch.tensor([[0.1, 0.5]]))


TASKS.register("gamma")(GammaTask())
