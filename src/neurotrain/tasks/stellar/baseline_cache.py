"""The baselines' held-out predictions, kept between ``neurotrain evaluate`` runs in one output folder.

Refitting XGBoost and LightGBM on 20,000 spectra is most of an evaluation (223 + 59 s of 300 s on an H200
host), and their predictions do not depend on the network. ``evaluate --baseline-only`` can therefore run
while the network trains, and the evaluation of the trained network in the same ``--output`` folder reuses
them. The key covers everything that determines the predictions: the generator, preprocessing, baseline and
label sections, the held-out sizes, bins and seeds, the methods, the device kind the sets were drawn on
(random streams differ between CPU and CUDA) and the source of the modules that draw, preprocess and fit them
(``BASELINE_SOURCES``); ``baseline.n_jobs`` is left out (threads do not change a fitted tree). The network's
own modules (model, loss, sigma calibration, post-processing, report) are not in the key, so that a change to
them keeps the cache; config values reach the key through the sections' dumps, not through ``config.py``'s
source. A stale or unreadable entry is refitted, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.stellar.config import GENERATOR_LABELS, StellarConfig

CACHE_DIR = "baseline_cache"


# the modules whose code decides the baselines' held-out predictions: the generator and its line tables,
# preprocessing, the held-out draw (evaluate, task) and the baselines themselves
BASELINE_SOURCES = (
    "baseline.py", "baseline_cache.py", "emulator.py", "evaluate.py", "line_tables.py", "lines.py",
    "photosphere.py", "preprocess.py", "simulate.py", "synth.py", "task.py",
)


def _code_digest() -> str:
    """SHA-256 of ``BASELINE_SOURCES`` (the stellar modules that draw, preprocess and fit the baselines)."""
    h = hashlib.sha256()
    for name in BASELINE_SOURCES:
        h.update(name.encode())
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def cache_key(cfg: StellarConfig, methods: list[str], device: torch.device) -> dict[str, Any]:
    """Everything the baselines' predictions depend on, as JSON-able data."""
    ev = cfg.evaluate
    baseline = cfg.baseline.model_dump(mode="json")
    baseline.pop("n_jobs", None)
    return {
        "simulate": cfg.simulate.model_dump(mode="json"),
        "preprocess": cfg.preprocess.model_dump(mode="json"),
        "labels": cfg.labels.model_dump(mode="json"),
        "baseline": baseline,
        "evaluate": {k: getattr(ev, k) for k in ("snr_bins", "spectra_per_snr", "baseline_train_size",
                                                 "seed_offset", "sim_chunk")},
        "seed": cfg.seed,
        "methods": sorted(methods),
        "device": device.type,
        "generator_labels": list(GENERATOR_LABELS),
        "code": _code_digest(),
    }


def cache_path(run_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(run_dir) / CACHE_DIR / f"baselines-{digest}.pt"


def load(path: Path, key: dict[str, Any]) -> tuple[dict[str, list[dict[str, torch.Tensor]]], dict[str, float]] | None:
    """The cached (predictions, seconds) for ``key``, or None when absent, unreadable or for another key."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file is refitted, not trusted
        return None
    if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    return data["preds"], data["seconds"]


def save(path: Path, key: dict[str, Any], preds: dict[str, list[dict[str, torch.Tensor]]],
         seconds: dict[str, float]) -> None:
    """Write the entry under a temporary name, then rename (a stopped run leaves no half entry)."""
    cpu = {m: [{k: v.detach().cpu() for k, v in d.items()} for d in ps] for m, ps in preds.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"key": json.loads(json.dumps(key, default=str)), "preds": cpu, "seconds": seconds}, tmp)
