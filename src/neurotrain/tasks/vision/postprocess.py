"""Network output -> masks, labels and instances: softmax + threshold, test-time flips, morphological
open/close, connected components with a minimum size, instance labelling (components or watershed).

Geometry works on the device for 2D batches (kornia morphology); connected components and watershed run on the
CPU (scikit-image, one call per image: labelling has no batched torch form). Sizes are in pixels (voxels in 3D).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, C, *S)`` from logits (softmax over the channel axis, in fp32)."""
    return logits.float().softmax(1)


def flip_tta(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flips: bool = True) -> torch.Tensor:
    """Mean class probabilities of ``fn`` over the input and its flips along each spatial axis (the identity
    plus one flip per axis: 3 passes in 2D, 4 in 3D); each flipped output is flipped back first."""
    probs = probabilities(fn(x))
    if not flips:
        return probs
    dims = list(range(2, x.ndim))
    for d in dims:
        probs = probs + probabilities(fn(x.flip(d))).flip(d)
    return probs / (1 + len(dims))


def to_mask(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices ``(B, *S)``: with two classes, foreground where ``p(class 1) >= threshold``; otherwise
    argmax."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).long()
    return probs.argmax(1)


def _disk(radius: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2 + 0.5).float()


def morphology(mask: torch.Tensor, num_classes: int, open_radius: int = 0, close_radius: int = 0) -> torch.Tensor:
    """Binary opening then closing with a disk (ball in 3D) of the given radius, per foreground class; where
    classes then overlap the higher index wins, pixels left by all go to background. 2D on the device (kornia),
    3D through scipy."""
    if open_radius <= 0 and close_radius <= 0:
        return mask
    onehot = F.one_hot(mask.long(), num_classes).movedim(-1, 1)[:, 1:].float()  # (B, C-1, *S)
    if mask.ndim == 3:
        import kornia.morphology as KM

        if open_radius > 0:
            onehot = KM.opening(onehot, _disk(open_radius, mask.device))
        if close_radius > 0:
            onehot = KM.closing(onehot, _disk(close_radius, mask.device))
    else:
        from scipy import ndimage as ndi

        arr = onehot.bool().cpu().numpy()
        for r, op in ((open_radius, ndi.binary_opening), (close_radius, ndi.binary_closing)):
            if r > 0:
                ball = np.ones((2 * r + 1,) * 3, bool)
                ball &= (np.indices(ball.shape) - r).__pow__(2).sum(0) <= r * r
                arr = np.stack([np.stack([op(c, ball) for c in b]) for b in arr])
        onehot = torch.from_numpy(arr).to(mask.device).float()
    cls = torch.arange(1, num_classes, device=mask.device).view(1, -1, *([1] * (mask.ndim - 1)))
    return (onehot * cls).amax(1).long()


def remove_small(mask: torch.Tensor, min_size: int) -> torch.Tensor:
    """Drop connected components (full connectivity) of each class smaller than ``min_size`` pixels; they
    become background."""
    if min_size <= 1:
        return mask
    from skimage.morphology import remove_small_objects

    arr = mask.cpu().numpy()
    out = np.zeros_like(arr)
    for c in np.unique(arr):
        if c == 0:
            continue
        for i in range(arr.shape[0]):
            keep = remove_small_objects(arr[i] == c, max_size=min_size - 1, connectivity=arr.ndim - 1)
            out[i][keep] = c
    return torch.from_numpy(out).to(mask.device)


def label_instances(mask: torch.Tensor, method: str = "components", min_distance: int = 3,
                    min_size: int = 0) -> torch.Tensor:
    """Instance label images ``(B, *S)`` (0 background, 1..K) of the foreground (any class > 0):
    ``components`` = connected components; ``watershed`` = watershed of the distance transform from its local
    maxima at least ``min_distance`` pixels apart (splits touching round objects such as nuclei)."""
    from skimage.measure import label

    fg = (mask > 0).cpu().numpy()
    out = np.zeros(fg.shape, dtype=np.int64)
    for i in range(fg.shape[0]):
        if method == "watershed":
            out[i] = watershed_split(fg[i], min_distance)
        else:
            out[i] = label(fg[i], connectivity=fg.ndim - 1)
        if min_size > 1:
            from skimage.morphology import remove_small_objects
            from skimage.segmentation import relabel_sequential

            with warnings.catch_warnings():  # one instance only is fine here
                warnings.simplefilter("ignore")
                out[i] = relabel_sequential(remove_small_objects(out[i], max_size=min_size - 1))[0]
    return torch.from_numpy(out)


def watershed_split(fg: np.ndarray, min_distance: int = 3) -> np.ndarray:
    """Split a binary foreground into instances: markers at the local maxima of the Euclidean distance to the
    background (``peak_local_max``, one per connected component at least), watershed on the negated distance,
    restricted to the foreground."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int64)
    dist = ndi.distance_transform_edt(fg)
    comps = label(fg)
    peaks = peak_local_max(dist, min_distance=max(1, min_distance), labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int64)


def postprocess(probs: torch.Tensor, section: Any) -> torch.Tensor:
    """The config's ``postprocess`` chain on class probabilities: threshold -> open/close -> minimum size."""
    mask = to_mask(probs, section.threshold)
    mask = morphology(mask, probs.shape[1], section.open_radius, section.close_radius)
    return remove_small(mask, section.min_size)
