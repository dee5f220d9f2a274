"""Helpers for the vision tests: tiny image, mask and volume files written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_image(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` with PIL (PNG/JPEG/GIF/PPM by suffix) or tifffile (.tif)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, arr)
    else:
        from PIL import Image

        Image.fromarray(arr).save(path)
    return path


def write_nifti(path: Path, arr: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def disc_pair(size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 RGB image with a bright disc and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(2, size - 2, 2)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 4) ** 2
    img = np.where(inside, 200, 40).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2), (inside * 255).astype(np.uint8)


@pytest.fixture
def seg_folder(tmp_path: Path) -> Path:
    """``images/*.png`` + ``masks/*.png``: 10 pairs of 8x8, every other one with an empty mask."""
    root = tmp_path / "seg"
    for i in range(10):
        img, msk = disc_pair(8, i)
        if i % 2:
            msk[:] = 0
        write_image(root / "images" / f"im{i:02d}.png", img)
        write_image(root / "masks" / f"im{i:02d}.png", msk)
    return root
