"""The classical segmentation baseline: Otsu threshold + distance-transform watershed (scikit-image).

Per image: average the channels to one grey image, smooth with a Gaussian of ``smooth_sigma`` pixels, threshold
at Otsu's level (Otsu 1979: the level that maximises the between-class variance of the grey histogram), choose
the polarity (``polarity: auto`` takes the side with fewer pixels as foreground: objects are the minority in
microscopy and in the synthetic shape sets), drop components smaller than ``min_size`` pixels, and split touching
objects by the watershed of the distance transform (:func:`.postprocess.watershed_split`). Returns the binary
semantic mask and the instance labels.
"""

from __future__ import annotations

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
