"""Checkpoints: load safely (``weights_only=True``) and rebuild the model from the embedded config."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurotrain.config import Config, validate_config
from neurotrain.errors import CheckpointError, ConfigError
from neurotrain.registry import TASKS


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without running code from it (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise CheckpointError(f"{path}: not a readable neurotrain checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a neurotrain checkpoint (no state_dict)")
    return ckpt


def config_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> Config:
    try:
        data = ckpt["hyper_parameters"]["config"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: no embedded config (hyper_parameters.config)") from None
    try:
        return validate_config(data, source=f"{path} (embedded config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights: ``model.*`` entries of the LightningModule state dict."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def load_model(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, nn.Module]:
    """Rebuild the task's network from a checkpoint alone; returns ``(config, model)`` in eval mode.

    ``overrides`` (``a.b=c``) change the embedded config before the model is built, e.g.
    ``inference.max_memory_gb=2``; they must not change the network's shape.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    if overrides:
        from neurotrain.config import apply_overrides, config_to_dict

        data = apply_overrides(config_to_dict(cfg), overrides, source=f"{path} overrides")
        cfg = validate_config(data, source=f"{path} overrides")
    task = TASKS.get(cfg.task)
    model = task.build_model(cfg)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({first})") from None
    model.eval()
    return cfg, model
