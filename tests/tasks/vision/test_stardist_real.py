"""Real-image check on the stardist package's nuclei image (skipped when the package is absent): Otsu +
watershed on the held-out tiles of configs/vision/stardist.yaml is a sound baseline (Dice > 0.8, instances
found), and the evaluation writes the side-by-side report a trained network is compared in."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from neurotrain.config import load_config
from neurotrain.engine import api

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("stardist") is None,
                                reason="stardist package not installed (pip install --no-deps stardist)")


def test_otsu_watershed_on_held_out_nuclei_tiles(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/vision/stardist.yaml", [f"run.output_dir={tmp_path}"])
    result = api.evaluate(cfg, baseline_only=True)
    base = result.metrics["baseline"]
    assert result.metrics["n_images"] >= 2
    assert result.headline_baseline == pytest.approx(base["dice"]) and base["dice"] > 0.8
    assert base["instance_f1@0.50"] > 0.3
    assert (cfg.run_dir / "report" / "report.md").is_file()
