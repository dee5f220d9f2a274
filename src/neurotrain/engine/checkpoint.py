"""Checkpoints: load safely (``weights_only=True``) and rebuild the model from the embedded config.

A checkpoint is only ever read by ``torch.load(weights_only=True)``: tensors and plain containers,
never pickled objects. Before that, the file's first bytes are checked (a PyTorch checkpoint is a zip
archive, ``PK\\x03\\x04``; the legacy format is a pickle, ``\\x80``), so a text file or an image named
``.ckpt`` stops with one line instead of an unpickler's ``KeyError``. A file whose pickle names any
object (a class, a function: code that would run on load) is refused as such.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotrain.config import Config, validate_config
from neurotrain.errors import CheckpointError, ConfigError
from neurotrain.registry import TASKS

if TYPE_CHECKING:
    import torch
    from torch import nn

ZIP_MAGIC = b"PK\x03\x04"
"""First bytes of a zip archive: ``torch.save``'s format since PyTorch 1.6."""
PICKLE_MAGIC = b"\x80"
"""First byte of a protocol >= 2 pickle: the legacy ``torch.save`` format."""
MIN_CHECKPOINT_BYTES = 22
"""The smallest zip archive (an empty end-of-central-directory record) is 22 bytes."""
CODE_MARKERS = ("unsupported global", "not an allowed global", "unsupported class")
"""Phrases of torch's weights-only unpickler when a pickle names an object (code) rather than data; its other
refusals ("Unsupported operand 39") mean a damaged pickle."""


def code_refused(path: str | Path) -> CheckpointError:
    """The one line for a checkpoint that holds pickled objects."""
    return CheckpointError(f"{path}: holds code (pickled objects) and was refused; only weights are loaded")


def check_checkpoint_file(path: str | Path) -> Path:
    """Existence, kind and magic bytes of a checkpoint file, without unpickling anything."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), expected a checkpoint")
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)) or size < MIN_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path}: not a checkpoint: expected a PyTorch zip archive (got {size} bytes starting {head!r})"
        )
    return path


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint without running code from it (``torch.load(weights_only=True)``).

    ``mmap``: map the tensors instead of reading them (zip checkpoints only): checks a big
    checkpoint's structure in a fraction of a second.
    """
    import torch  # here, not at the top: check_checkpoint_file answers before torch is imported

    path = check_checkpoint_file(path)
    is_zip = zipfile.is_zipfile(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if any(m in text for m in CODE_MARKERS):
            raise code_refused(path) from None
        detail = next((ln.strip() for ln in str(exc).splitlines() if "unsupported" in ln.lower()), "")[:80]
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged pickle{': ' + detail if detail else ''})") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError, OSError, OverflowError, MemoryError) as exc:
        # a damaged archive or legacy pickle: torch raises any of these, none of them readable to a user
        kind = type(exc).__name__
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged or truncated: {kind} {first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a neurotrain checkpoint (no state_dict)")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: state_dict: expected a mapping of tensors (got {type(ckpt['state_dict']).__name__})")
    return ckpt


def config_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> Config:
    try:
        data = ckpt["hyper_parameters"]["config"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: no embedded config (hyper_parameters.config)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: hyper_parameters.config: expected a mapping (got {type(data).__name__})")
    try:
        return validate_config(data, source=f"{path} (embedded config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights: ``model.*`` entries of the LightningModule state dict."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and k.startswith(prefix)}


def check_weights(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Every weight the model needs, in the shape it needs; names the first tensor that is not."""
    import torch

    own = model.state_dict()
    # state a model added later and fills in itself when an older checkpoint lacks it
    optional = set(getattr(model, "optional_state", ()))
    for name, want in own.items():
        if name not in state and name in optional:
            continue
        if name not in state:
            raise CheckpointError(f"{path}: weight {name!r}: missing (the checkpoint has no such tensor)")
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(f"{path}: weight {name!r}: expected a tensor (got {type(got).__name__})")
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: weight {name!r}: expected shape {list(want.shape)} for the model its "
                                  f"config describes (got {list(got.shape)})")
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"{path}: weight {extra[0]!r}: not part of the model its config describes "
                              f"({len(extra)} unexpected tensors)")


def checkpoint_config(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], Config]:
    """The checkpoint (tensors memory-mapped) and its embedded config with ``overrides`` applied."""
    ckpt = load_checkpoint(path, mmap=True)
    cfg = config_from_checkpoint(ckpt, path)
    if overrides:
        from neurotrain.config import apply_overrides, config_to_dict

        data = apply_overrides(config_to_dict(cfg), overrides, source=f"{path} overrides")
        cfg = validate_config(data, source=f"{path} overrides")
    return ckpt, cfg


def model_from_checkpoint(ckpt: dict[str, Any], cfg: Config, path: str | Path) -> nn.Module:
    """The task's network built from ``cfg`` with the checkpoint's weights, in eval mode."""
    model = TASKS.get(cfg.task).build_model(cfg)
    state = model_state(ckpt)
    check_weights(model, state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({first})") from None
    model.eval()
    return model


def load_model(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, nn.Module]:
    """Rebuild the task's network from a checkpoint alone; returns ``(config, model)`` in eval mode.

    ``overrides`` (``a.b=c``) change the embedded config before the model is built, e.g.
    ``inference.max_memory_gb=2``; they must not change the network's shape.
    """
    ckpt, cfg = checkpoint_config(path, overrides)
    return cfg, model_from_checkpoint(ckpt, cfg, path)
