"""A tiny regression task used to test the core without any real task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection

from neurotrain.config import Config, Section
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task


class ToyModel(Section):
    width: int = 16
    n_in: int = 8
    n_out: int = 2


class ToyConfig(Config):
    model: ToyModel = ToyModel()


def true_weights(n_in: int, n_out: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(n_in, n_out, generator=g)


class ToyTask(Task):
    name = "toy"
    config_cls = ToyConfig

    def build_model(self, cfg: ToyConfig) -> nn.Module:
        m = cfg.model
        return nn.Sequential(nn.Linear(m.n_in, m.width), nn.Tanh(), nn.Linear(m.width, m.n_out))

    def build_loss(self, cfg: ToyConfig) -> nn.Module:
        class Loss(nn.Module):
            def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                mse = nn.functional.mse_loss(pred, batch["target"])
                return {"loss": mse, "mae": (pred - batch["target"]).abs().mean()}

        return Loss()

    def build_metrics(self, cfg: ToyConfig) -> MetricCollection:
        return MetricCollection({"mse": MeanSquaredError()})

    def simulate_batch(self, cfg: ToyConfig, batch_size: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        m = cfg.model
        x = torch.randn(batch_size, m.n_in, generator=generator, device=device)
        w = true_weights(m.n_in, m.n_out).to(device)
        return {"input": x, "target": torch.tanh(x @ w)}

    def predict(self, cfg: ToyConfig, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
        import numpy as np

        outs = []
        for p in inputs:
            x = torch.from_numpy(np.load(p)).float()
            with torch.no_grad():
                y = model(x).numpy()
            dest = output or p.with_suffix(".pred.npy")
            np.save(dest, y)
            outs.append(dest)
        return outs

    def evaluate(self, cfg: ToyConfig, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
        gen = torch.Generator().manual_seed(99)
        batch = self.simulate_batch(cfg, 256, gen, torch.device("cpu"))
        with torch.no_grad():
            net = float(nn.functional.mse_loss(model(batch["input"]), batch["target"])) if model is not None else None
        base = float(batch["target"].var())  # predicting the mean
        report = run_dir / "report.md"
        report.write_text(f"network mse {net}\nbaseline mse {base}\n")
        return EvalResult({"network": {"mse": net}, "baseline": {"mse": base}}, "mse", net, base, report)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"optim.lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}

    def example_input(self, cfg: ToyConfig) -> tuple[torch.Tensor, ...]:
        return (torch.randn(1, cfg.model.n_in),)


if "toy" not in TASKS:
    TASKS.register("toy")(ToyTask())
