"""4-fold spatial cross-validation of the stardist check (``data_source.fold``) and the tuned Otsu + watershed
baseline (``baseline.tune``): the folds' test quadrants are disjoint and cover the image, no training or
validation pixel lies in a fold's test quadrant, and the tuned baseline is at least as good as its default
setting on the data it was tuned on. The geometry and the tuner run on any machine; the real image's checks
skip when the stardist package is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.config import load_config
from neurotrain.errors import ConfigError
from neurotrain.tasks.vision.baseline import otsu_watershed, tune_otsu_watershed
from neurotrain.tasks.vision.config import BaselineSection
from neurotrain.tasks.vision.metrics import InstanceF1
from neurotrain.tasks.vision.synthetic import N_FOLDS, quadrant, split_regions, tuning_regions

REPO = Path(__file__).resolve().parents[3]
HAS_STARDIST = importlib.util.find_spec("stardist") is not None
needs_stardist = pytest.mark.skipif(not HAS_STARDIST, reason="stardist is not installed (pip install --no-deps stardist)")
FRACTIONS = (0.75, 0.125, 0.125)


def _paint(shape: tuple[int, int], boxes: torch.Tensor) -> np.ndarray:
    """How many of ``boxes`` (y0, x0, h, w) cover each pixel."""
    count = np.zeros(shape, dtype=np.int64)
    for y0, x0, h, w in boxes.tolist():
        count[y0:y0 + h, x0:x0 + w] += 1
    return count


@pytest.mark.parametrize("size,tile,stride", [(512, 128, 64), (96, 24, 12), (101, 24, 16)])
def test_fold_test_quadrants_are_disjoint_cover_the_image_and_never_meet_training(size: int, tile: int,
                                                                                   stride: int) -> None:
    cover = np.zeros((size, size), dtype=np.int64)
    for k in range(N_FOLDS):
        r = split_regions(size, size, tile, stride, FRACTIONS, seed=0, fold=k)
        assert len(r["test"]) == 1 and tuple(r["test"][0].tolist()) == quadrant(k, size, size)
        assert len(r["train"]) > 0 and len(r["val"]) > 0
        test = _paint((size, size), r["test"]) > 0
        cover += test
        train, val = _paint((size, size), r["train"]) > 0, _paint((size, size), r["val"]) > 0
        assert not (train & test).any() and not (val & test).any() and not (train & val).any()
        tune = _paint((size, size), tuning_regions(size, size, tile, stride, FRACTIONS, 0, k))
        assert tune.max() == 1 and not ((tune > 0) & test).any() and ((tune > 0) | test).all()
    assert (cover == 1).all()  # every pixel is tested exactly once over the four folds


def test_without_a_fold_the_held_out_cells_split_is_unchanged() -> None:
    r = split_regions(512, 512, 128, 64, FRACTIONS, seed=0)
    assert [len(r[k]) for k in ("train", "val", "test")] == [28, 2, 2]
    held = _paint((512, 512), torch.cat([r["val"], r["test"]])) > 0
    assert not ((_paint((512, 512), r["train"]) > 0) & held).any()
    tune = _paint((512, 512), tuning_regions(512, 512, 128, 64, FRACTIONS, 0))
    assert tune.max() == 1 and not ((tune > 0) & held).any() and ((tune > 0) | held).all()


def test_fold_is_validated() -> None:
    cfg = load_config(REPO / "configs/vision/stardist.yaml", ["data_source.fold=3"])
    assert cfg.data_source.fold == 3 and load_config(REPO / "configs/vision/stardist.yaml").data_source.fold is None
    with pytest.raises(ConfigError):
        load_config(REPO / "configs/vision/stardist.yaml", ["data_source.fold=4"])


def _nuclei(seed: int, size: int = 96, n: int = 14) -> tuple[np.ndarray, torch.Tensor]:
    """Bright discs (radius 5-8 px, some touching) on a dark background with strong pixel noise: unsmoothed Otsu
    breaks them into speckle, so smoothing and a minimum size matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    inst = np.zeros((size, size), dtype=np.int64)
    for i in range(1, n + 1):
        cy, cx = rng.uniform(10, size - 10, 2)
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(5, 8) ** 2) & (inst == 0)] = i
    img = 0.3 + 0.4 * (inst > 0) + rng.normal(0, 0.25, inst.shape)
    return np.clip(img, 0, 1).astype(np.float32)[None], torch.from_numpy(inst)


def test_tuning_picks_the_best_setting_of_the_grid_and_beats_a_poor_default() -> None:
    pairs = [_nuclei(s) for s in range(2)]
    section = BaselineSection(smooth_sigma=0.0, min_size=0, min_distance=3, polarity="bright",
                              tune_smooth_sigma=[0.0, 2.0], tune_min_distance=[3, 6], tune_min_size=[0, 20])
    rec = tune_otsu_watershed(pairs, section, [0.5, 0.75])
    crit = rec["criterion"]
    assert crit == "f1@0.50" and rec["n_settings"] == 8 and rec["n_images"] == 2
    assert rec["best_score"][crit] >= rec["default_score"][crit] + 0.2  # the noisy default is poor
    assert rec["best"]["smooth_sigma"] == 2.0
    # the record's score is what the chosen setting gives when applied, with the same metric evaluate uses
    m = InstanceF1([0.5, 0.75])
    for img, truth in pairs:
        _, inst = otsu_watershed(img, polarity="bright", **rec["best"])
        m.update(torch.from_numpy(inst)[None], truth[None])
    assert float(m.compute()["f1@0.50"]) == pytest.approx(rec["best_score"][crit])


@needs_stardist
def test_stardist_fold_splits_and_tuning_on_the_training_quadrants() -> None:
    from neurotrain.tasks.vision.synthetic import StardistNuclei, stardist_nuclei

    _, inst = stardist_nuclei()
    cfg = load_config(REPO / "configs/vision/stardist.yaml",
                      ["data_source.fold=1", "baseline.tune_smooth_sigma=[1.0,2.0]", "baseline.tune_min_distance=[4,7]",
                       "baseline.tune_min_size=[15,30]"])
    test = StardistNuclei(cfg.data_source, "test")
    y0, x0, h, w = quadrant(1, *inst.shape)
    assert len(test) == 1 and torch.equal(test.instances[0], torch.from_numpy(inst[y0:y0 + h, x0:x0 + w].astype(np.int64)))
    train = StardistNuclei(cfg.data_source, "train")
    for ds in (train, StardistNuclei(cfg.data_source, "val")):
        o = ds.origins
        t = ds.images.shape[-1]
        assert not ((o[:, 0] < y0 + h) & (y0 < o[:, 0] + t) & (o[:, 1] < x0 + w) & (x0 < o[:, 1] + t)).any()
    pairs = train.baseline_tuning_set()
    assert len(pairs) == 3 and sum(len(np.unique(p[1])) - 1 for p in pairs) >= 90  # three quadrants' nuclei
    rec = tune_otsu_watershed(pairs, cfg.baseline, cfg.metrics.iou_thresholds)
    assert rec["default"] == {"smooth_sigma": 1.0, "min_distance": 4, "min_size": 15}  # stardist.yaml's setting
    assert rec["best_score"]["f1@0.50"] >= rec["default_score"]["f1@0.50"] > 0.5
