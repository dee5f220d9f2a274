"""Super-resolution renders of localisations: a blurred 2D histogram (:func:`render`) saved as PNG or
float32 TIFF (:func:`save_render`, atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurotrain.io.atomic import atomic_path

def render(x_nm: np.ndarray, y_nm: np.ndarray, width_nm: float, height_nm: float, px_nm: float = 10.0,
           blur_px: float = 1.0) -> np.ndarray:
    """Super-resolution image: 2D histogram of localisations at ``px_nm`` blurred by a Gaussian of
    ``blur_px`` render pixels. Returns float32 ``[ny, nx]`` (localisations per pixel, blurred)."""
    from scipy.ndimage import gaussian_filter

    nx, ny = max(1, int(np.ceil(width_nm / px_nm))), max(1, int(np.ceil(height_nm / px_nm)))
    img, _, _ = np.histogram2d(np.asarray(y_nm), np.asarray(x_nm), bins=(ny, nx), range=((0, ny * px_nm), (0, nx * px_nm)))
    if blur_px > 0:
        img = gaussian_filter(img, blur_px)
    return img.astype(np.float32)


def save_render(img: np.ndarray, path: str | Path) -> Path:
    """Save a render as PNG (contrast at the 99.5th percentile, 'hot' colour map) or float32 TIFF."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, img.astype(np.float32))
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            vmax = float(np.percentile(img, 99.5)) if img.size and img.max() > 0 else 1.0
            plt.imsave(tmp, img, cmap="hot", vmin=0, vmax=max(vmax, 1e-9))
    return path
