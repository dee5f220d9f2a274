"""The classical segmentation baseline: Otsu threshold + distance-transform watershed (scikit-image).

Per image: average the channels to one grey image, smooth with a Gaussian of ``smooth_sigma`` pixels, threshold
at Otsu's level (Otsu 1979: the level that maximises the between-class variance of the grey histogram), choose
the polarity (``polarity: auto`` takes the side with fewer pixels as foreground: objects are the minority in
microscopy and in the synthetic shape sets), drop components smaller than ``min_size`` pixels, and split touching
objects by the watershed of the distance transform (:func:`.postprocess.watershed_split`). Returns the binary
semantic mask and the instance labels.

Tuned the way its users tune it (``baseline.tune``): the smoothing sigma, ``peak_local_max``'s min_distance and
the minimum object size are swept over a grid on labelled training images, scored by instance F1 at IoU 0.5, and
the best setting is applied to the held-out images (:func:`tune_otsu_watershed`, :func:`baseline_setting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from neurotrain.tasks.vision.postprocess import watershed_split


def otsu_watershed(image: np.ndarray, *, smooth_sigma: float = 1.0, polarity: str = "auto", min_size: int = 10,
                   min_distance: int = 3, watershed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(C, *S)`` or ``(*S)`` in [0, 1] -> (semantic mask int64 0/1, instance labels int64)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    grey = image.mean(0) if image.ndim >= 3 and image.shape[0] <= 4 else image
    grey = ndi.gaussian_filter(grey.astype(np.float64), smooth_sigma) if smooth_sigma > 0 else grey.astype(np.float64)
    if np.ptp(grey) == 0:
        z = np.zeros(grey.shape, dtype=np.int64)
        return z, z.copy()
    fg = grey > threshold_otsu(grey)
    if polarity == "dark" or (polarity == "auto" and fg.mean() > 0.5):
        fg = ~fg
    if min_size > 1:
        fg = remove_small_objects(fg, max_size=min_size - 1)
    inst = watershed_split(fg, min_distance) if watershed else label(fg).astype(np.int64)
    return fg.astype(np.int64), inst


def run_baseline(images: torch.Tensor, section: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch ``(B, C, *S)`` -> (masks ``(B, *S)``, instance labels ``(B, *S)``), on the CPU."""
    arr = images.detach().float().cpu().numpy()
    masks, insts = [], []
    for img in arr:
        m, i = otsu_watershed(img, smooth_sigma=section.smooth_sigma, polarity=section.polarity,
                              min_size=section.min_size, min_distance=section.min_distance,
                              watershed=section.watershed)
        masks.append(m)
        insts.append(i)
    return torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(insts))


# --------------------------------------------------------------------------- tuning (the way its users tune it)

TUNED = ("smooth_sigma", "min_distance", "min_size")  # the settings ``tune_otsu_watershed`` chooses


def _score(pairs: Sequence[tuple[np.ndarray, torch.Tensor]], settings: dict[str, Any], thresholds: list[float],
           crit: str) -> dict[str, float]:
    """Instance F1 (pooled TP / FP / FN over the images) of one baseline setting: the criterion ``crit``
    (``f1@<iou>``) and mF1 over ``thresholds``."""
    from neurotrain.tasks.vision.metrics import InstanceF1

    ths = list(dict.fromkeys([float(crit[3:]), *thresholds]))
    metric = InstanceF1(ths)
    for image, truth in pairs:
        _, inst = otsu_watershed(image, **settings)
        metric.update(torch.from_numpy(inst)[None], truth[None])
    f1 = metric.f1()
    keep = [ths.index(float(t)) for t in thresholds]
    return {crit: float(f1[0]), "mf1": float(f1[keep].mean())}


def tune_otsu_watershed(pairs: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor]], section: Any,
                        thresholds: Sequence[float]) -> dict[str, Any]:
    """Sweep Otsu + watershed over ``section``'s grid (``tune_smooth_sigma`` x ``tune_min_distance`` x
    ``tune_min_size``) on (image (C, *S) in [0, 1], true instance labels (*S)) pairs, as users of the method tune
    it: by instance F1 at IoU ``section.tune_iou`` on data they have labels for.

    Returns ``{"best": {setting: value}, "criterion": "f1@0.50", "best_score": {...}, "default": {...},
    "default_score": {...}, "n_images": N, "n_settings": M}``; scores hold the criterion and mF1 over
    ``thresholds``. Ties go to the higher mF1, then to the earlier setting in the grid. ``default`` is the
    section's own setting, scored the same way (the tuned one is at least as good on these images when the
    default lies in the grid).
    """
    import itertools

    crit = f"f1@{section.tune_iou:.2f}"
    data = [(np.asarray(img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else img),
             torch.as_tensor(truth).long()) for img, truth in pairs]
    fixed = {"polarity": section.polarity, "watershed": section.watershed}
    ths = [float(t) for t in thresholds]
    best: tuple[tuple[float, float], dict[str, Any]] | None = None
    grid = list(itertools.product(section.tune_smooth_sigma, section.tune_min_distance, section.tune_min_size))
    for sigma, dist, size in grid:
        setting = {"smooth_sigma": float(sigma), "min_distance": max(1, int(dist)), "min_size": int(size)}
        s = _score(data, {**setting, **fixed}, ths, crit)
        if best is None or (s[crit], s["mf1"]) > best[0]:
            best = ((s[crit], s["mf1"]), {"setting": setting, "score": s})
    assert best is not None  # the grid is never empty (config validation)
    default = {k: getattr(section, k) for k in TUNED}
    return {"best": best[1]["setting"], "criterion": crit, "best_score": best[1]["score"], "default": default,
            "default_score": _score(data, {**default, **fixed}, ths, crit), "n_images": len(data),
            "n_settings": len(grid)}


def baseline_setting(cfg: Any) -> tuple[Any, dict[str, Any] | None]:
    """The ``baseline`` section ``evaluate`` scores the held-out split with, and the tuning record: the config's
    own section when ``baseline.tune`` is off; otherwise tuned by :func:`tune_otsu_watershed` on the training
    split (a dataset's ``baseline_tuning_set()`` where it has one: stardist's training quadrants whole), at most
    ``baseline.tune_max_images`` images."""
    section = cfg.baseline
    if not section.tune:
        return section, None
    from neurotrain.tasks.vision.datasets import build_training_dataset
    from neurotrain.tasks.vision.postprocess import label_instances

    ds = build_training_dataset(cfg.data_source, cfg.hybrid, "train", cfg.patch)
    if hasattr(ds, "baseline_tuning_set"):
        pairs = ds.baseline_tuning_set()[: section.tune_max_images]
    else:
        items = [ds[i] for i in range(min(len(ds), section.tune_max_images))]
        pairs = [(it["image"], it["instances"] if "instances" in it else label_instances(it["mask"][None])[0])
                 for it in items]
    record = tune_otsu_watershed(pairs, section, cfg.metrics.iou_thresholds)
    return section.model_copy(update=record["best"]), record
