"""Baseline predictions are reused by a later evaluate in the same folder only when nothing that determines
them changed; a torn cache file is refitted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurotrain.tasks.stellar import baseline_cache
from neurotrain.tasks.stellar import evaluate as ev
from neurotrain.tasks.stellar.models import build_model

from .test_evaluate import _cfg, toy  # noqa: F401  (fixture)


def _baseline_scatter(metrics: dict) -> dict:
    return metrics["snr"]["50"]["lightgbm"]["all"]["scatter"]


def test_network_evaluation_reuses_the_baseline_only_run(tmp_path: Path, toy) -> None:  # noqa: F811
    cfg = _cfg(figures=False, crlb_spectra=0)
    first = ev.evaluate(cfg, None, tmp_path, methods=["lightgbm"])
    assert "baselines_from_cache" not in first.metrics["timing"]
    assert len(list((tmp_path / baseline_cache.CACHE_DIR).glob("baselines-*.pt"))) == 1
    torch.manual_seed(0)
    second = ev.evaluate(cfg, build_model(cfg), tmp_path, methods=["lightgbm"])
    assert second.metrics["timing"]["baselines_from_cache"] == 1.0
    assert _baseline_scatter(second.metrics) == _baseline_scatter(first.metrics)
    assert second.metrics["methods"] == ["network", "lightgbm"]
    # the thread count is no part of the key; the trees' size is
    threads = _cfg(figures=False, crlb_spectra=0)
    threads.baseline.n_jobs = 2
    assert ev.evaluate(threads, None, tmp_path, methods=["lightgbm"]).metrics["timing"].get("baselines_from_cache")
    smaller = _cfg(figures=False, crlb_spectra=0)
    smaller.baseline.n_estimators = 7
    assert "baselines_from_cache" not in ev.evaluate(smaller, None, tmp_path, methods=["lightgbm"]).metrics["timing"]


def test_a_torn_cache_entry_is_refitted(tmp_path: Path, toy) -> None:  # noqa: F811
    cfg = _cfg(figures=False, crlb_spectra=0)
    ev.evaluate(cfg, None, tmp_path, methods=["lightgbm"])
    (entry,) = (tmp_path / baseline_cache.CACHE_DIR).glob("baselines-*.pt")
    entry.write_bytes(entry.read_bytes()[:100])
    again = ev.evaluate(cfg, None, tmp_path, methods=["lightgbm"])
    assert "baselines_from_cache" not in again.metrics["timing"]
    assert entry.stat().st_size > 100  # rewritten whole


def test_caching_can_be_switched_off(tmp_path: Path, toy) -> None:  # noqa: F811
    cfg = _cfg(figures=False, crlb_spectra=0, baseline_cache=False)
    ev.evaluate(cfg, None, tmp_path, methods=["lightgbm"])
    assert not (tmp_path / baseline_cache.CACHE_DIR).exists()


@pytest.mark.parametrize("field", ["spectra_per_snr", "seed_offset"])
def test_the_key_covers_the_held_out_sets(field: str) -> None:
    cfg = _cfg()
    other = _cfg(**{field: getattr(cfg.evaluate, field) + 1})
    dev = torch.device("cpu")
    assert baseline_cache.cache_key(cfg, ["xgboost"], dev) != baseline_cache.cache_key(other, ["xgboost"], dev)
    assert baseline_cache.cache_key(cfg, ["xgboost"], dev) != baseline_cache.cache_key(cfg, ["xgboost"], torch.device("cuda"))


def test_cache_key_covers_generator_sources_but_not_network_modules() -> None:
    """The key's source list names every generator / preprocessing / baseline module that exists, and none of
    the network-only ones (a change to the sigma calibration must not refit the trees)."""
    here = Path(baseline_cache.__file__).parent
    for name in baseline_cache.BASELINE_SOURCES:
        assert (here / name).is_file(), name
    for name in ("simulate.py", "synth.py", "photosphere.py", "preprocess.py", "baseline.py", "line_tables.py"):
        assert name in baseline_cache.BASELINE_SOURCES
    for name in ("models.py", "calibration.py", "postprocess.py", "losses.py", "eval_report.py"):
        assert name not in baseline_cache.BASELINE_SOURCES
