"""Synthetic demo data (shapes on textured noise) and the stardist real-image check.

Images are 8-bit grayscale PNGs: a smooth background texture (noise at 1/8 resolution,
bilinearly upsampled, mean ``BG_LEVEL``) plus pixel noise (sigma ``PIXEL_NOISE``); shapes are
filled with their own texture around ``SHAPE_LEVEL``. The contrast (0.3 of full scale against
a combined noise sigma of about 0.1) makes the set easy for a U-Net yet not a threshold job.

Shapes: disc (radius r), axis-aligned rectangle (half sides a, b), triangle (three vertices on
a circle of radius r at random angles), r between ``SHAPE_RADIUS_FRACTION`` of the image size.

``stardist_nuclei()`` reads ``stardist/data/images/img2d.tif`` + ``mask2d.tif`` (a 512x512
fluorescence image of nuclei from the 2018 Data Science Bowl with 125 labelled instances,
BSD-3) when the optional ``stardist`` package is installed (``pip install --no-deps stardist``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError
from neurotrain.io.atomic import atomic_path
from neurotrain.registry import DATASETS
from neurotrain.tasks.vision.data_config import DatasetSpec
from neurotrain.tasks.vision.dataset_base import VisionDataset, split_indices, values_to_classes

SHAPES = ("disc", "rectangle", "triangle")
CLASSIFICATION_CLASSES = ("disc", "square", "triangle")
BG_LEVEL = 0.35
SHAPE_LEVEL = 0.65
TEXTURE_SIGMA = 0.08  # smooth texture amplitude (fraction of full scale)
PIXEL_NOISE = 0.05  # per-pixel Gaussian noise sigma (fraction of full scale)
SHAPE_RADIUS_FRACTION = (0.08, 0.2)  # shape radius as a fraction of the image side
MARKER = ".synthetic.json"  # written last: a folder without it is incomplete and rewritten


def _texture(rng: np.random.Generator, size: int, level: float) -> np.ndarray:
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (1, 1, max(size // 8, 2), max(size // 8, 2))).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return level + TEXTURE_SIGMA * smooth + rng.normal(0.0, PIXEL_NOISE, (size, size)).astype(np.float32)


def _shape_mask(kind: str, rng: np.random.Generator, size: int, centre: np.ndarray | None = None) -> np.ndarray:
    """Boolean (size, size) mask of one shape at a random place (vectorised over pixels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(*SHAPE_RADIUS_FRACTION) * size
    cy, cx = centre if centre is not None else rng.uniform(r, size - r, 2)
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if kind in ("rectangle", "square"):
        a = r * (rng.uniform(0.6, 1.0) if kind == "rectangle" else 0.85)
        b = r * (rng.uniform(0.6, 1.0) if kind == "rectangle" else 0.85)
        return (np.abs(yy - cy) <= a) & (np.abs(xx - cx) <= b)
    if kind == "triangle":
        ang = rng.uniform(0, 2 * np.pi) + np.asarray([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        vy, vx = cy + r * np.sin(ang), cx + r * np.cos(ang)
        # inside = same sign of the three edge cross products
        cross = [(vx[(k + 1) % 3] - vx[k]) * (yy - vy[k]) - (vy[(k + 1) % 3] - vy[k]) * (xx - vx[k]) for k in range(3)]
        return ((cross[0] >= 0) & (cross[1] >= 0) & (cross[2] >= 0)) | ((cross[0] <= 0) & (cross[1] <= 0) & (cross[2] <= 0))
    raise ValueError(f"unknown shape {kind!r}")


def _to_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _finished(root: Path, params: dict[str, Any]) -> bool:
    m = root / MARKER
    return m.is_file() and json.loads(m.read_text()) == params


def _mark(root: Path, params: dict[str, Any]) -> None:
    with atomic_path(root / MARKER) as tmp:
        tmp.write_text(json.dumps(params))


def write_segmentation_set(root: str | Path, n: int = 64, size: int = 64, seed: int = 0, n_classes: int = 2,
                           max_shapes: int = 3) -> Path:
    """Write ``root/images/shape_<i>.png`` + ``root/masks/shape_<i>.png`` (``i`` zero-padded to 4 digits) (``n`` pairs, size x size).

    ``n_classes == 2``: binary masks stored 0/255 (any shape is foreground). ``n_classes == 4``:
    masks store 0 background, 1 disc, 2 rectangle, 3 triangle. Each image holds 1..``max_shapes``
    shapes; later shapes cover earlier ones in both image and mask. Returns ``root``.
    """
    if n_classes not in (2, 1 + len(SHAPES)):
        raise ValueError(f"n_classes: expected 2 or {1 + len(SHAPES)} (got {n_classes})")
    root = Path(root)
    params = {"kind": "segmentation", "n": n, "size": size, "seed": seed, "n_classes": n_classes, "max_shapes": max_shapes}
    if _finished(root, params):
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = _texture(rng, size, BG_LEVEL)
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            k = int(rng.integers(len(SHAPES)))
            inside = _shape_mask(SHAPES[k], rng, size)
            image = np.where(inside, _texture(rng, size, SHAPE_LEVEL), image)
            mask[inside] = 255 if n_classes == 2 else k + 1
        _to_png(root / "images" / f"shape_{i:04d}.png", (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
        _to_png(root / "masks" / f"shape_{i:04d}.png", mask)
    _mark(root, params)
    return root


def write_classification_set(root: str | Path, n_per_class: int = 32, size: int = 32, seed: int = 0,
                             classes: tuple[str, ...] = CLASSIFICATION_CLASSES) -> Path:
    """Write an image-folder layout ``root/<class>/<i>.png``: one shape per image, ``n_per_class`` each."""
    root = Path(root)
    params = {"kind": "classification", "n": n_per_class, "size": size, "seed": seed, "classes": list(classes)}
    if _finished(root, params):
        return root
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(n_per_class):
            inside = _shape_mask(name, rng, size)
            image = np.where(inside, _texture(rng, size, SHAPE_LEVEL), _texture(rng, size, BG_LEVEL))
            _to_png(root / name / f"{i:04d}.png", (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    _mark(root, params)
    return root


# --------------------------------------------------------------------------- stardist real image


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(image uint16 (512, 512), instance labels (512, 512), 0 = background) from the stardist package."""
    import importlib.util

    spec = importlib.util.find_spec("stardist")
    if spec is None or spec.origin is None:
        raise DataError("stardist: package: expected it installed for its sample image (pip install --no-deps stardist) (got not installed)")
    folder = Path(spec.origin).parent / "data" / "images"
    import tifffile

    for f in ("img2d.tif", "mask2d.tif"):
        if not (folder / f).is_file():
            raise DataError(f"{folder / f}: file: expected stardist's sample image (got no file)")
    return tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")


def tile_origins(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles along one axis; the last tile is aligned with the far edge."""
    if tile > length:
        raise ValueError(f"tile: expected <= {length} (got {tile})")
    starts = np.arange(0, length - tile + 1, stride)
    return np.unique(np.append(starts, length - tile))


def tiles(image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None, tile: int,
          stride: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Cut (..., H, W) arrays into (N, ..., tile, tile) tiles; also returns (N, 2) origins (y, x)."""
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    H, W = img.shape[-2:]
    ys, xs = tile_origins(H, tile, stride), tile_origins(W, tile, stride)
    origins = torch.from_numpy(np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2))
    r = torch.arange(tile)
    rows = (origins[:, 0, None] + r)[:, :, None]  # (N, tile, 1)
    cols = (origins[:, 1, None] + r)[:, None, :]  # (N, 1, tile)

    def cut(a: torch.Tensor) -> torch.Tensor:
        return a[..., rows, cols].movedim(-3, 0)  # advanced indexing puts N before the tile axes

    m = None if mask is None else cut(torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask))
    return cut(img), m, origins


N_FOLDS = 4  # spatial cross-validation folds of the stardist image: its four quadrants


def quadrant(fold: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(y0, x0, h, w)`` in pixels of quadrant ``fold`` of a ``height`` x ``width`` image: 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right (an odd side gives its extra row / column to the second half)."""
    if not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold: expected 0..{N_FOLDS - 1} (got {fold})")
    hy, hx = height // 2, width // 2
    r, c = divmod(fold, 2)
    return r * hy, c * hx, (hy if r == 0 else height - hy), (hx if c == 0 else width - hx)


def _boxes(origins: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 2) origins (y, x) of h x w regions -> (N, 4) boxes (y0, x0, h, w)."""
    size = torch.tensor([h, w], dtype=origins.dtype).expand(len(origins), 2)
    return torch.cat([origins, size], 1)


def _touching(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(N,) True where box i shares a pixel with any of ``others`` (both (.., 4) as (y0, x0, h, w)): two boxes
    overlap when their intervals intersect along both axes."""
    if len(others) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    a, b = boxes[:, None, :], others[None, :, :]
    return ((a[..., :2] < b[..., :2] + b[..., 2:]) & (b[..., :2] < a[..., :2] + a[..., 2:])).all(-1).any(-1)


def split_regions(height: int, width: int, tile: int, stride: int, fractions: tuple[float, float, float],
                  seed: int, fold: int | None = None) -> dict[str, torch.Tensor]:
    """Regions ``(N, 4)`` = (y0, x0, h, w) in pixels of the train / val / test splits of one image, without leaks.

    ``fold`` None: the image is cut into a grid of disjoint ``tile`` cells split by ``fractions``; val and test
    are those cells; train are all ``tile`` tiles at ``stride`` that touch no val or test cell.
    ``fold`` k (spatial cross-validation): test is quadrant k whole (:func:`quadrant`); the grid cells lying
    outside quadrant k are split by ``fractions``' train and val shares (renormalised) into train and val cells;
    val are those cells; train are the ``stride`` tiles that touch neither quadrant k nor a val cell. No
    training or validation pixel lies in the test quadrant; nuclei cut by the quadrant border stay cut.
    """
    _, _, cells = tiles(torch.zeros(height, width), None, tile, tile)
    _, _, cand = tiles(torch.zeros(height, width), None, tile, stride)
    cells, cand = _boxes(cells, tile, tile), _boxes(cand, tile, tile)
    if fold is None:
        held = {k: cells[split_indices(len(cells), fractions, seed, k)] for k in ("val", "test")}
        out = torch.cat([held["val"], held["test"]])
    else:
        test = torch.tensor([quadrant(fold, height, width)], dtype=cells.dtype)
        outside = cells[~_touching(cells, test)]
        f_train, f_val = fractions[0], fractions[1]
        share = (f_train / max(f_train + f_val, 1e-12), f_val / max(f_train + f_val, 1e-12), 0.0)
        held = {"val": outside[split_indices(len(outside), share, seed, "val")], "test": test}
        out = torch.cat([held["val"], test])
    return {"train": cand[~_touching(cand, out)], **held}


def tuning_regions(height: int, width: int, tile: int, stride: int, fractions: tuple[float, float, float],
                   seed: int, fold: int | None = None) -> torch.Tensor:
    """Regions ``(N, 4)`` on which the classical baseline's settings are swept (``baseline.tune``), each pixel
    once: with a fold, the three training quadrants whole (no nucleus inside them cut by a tile edge); without,
    the disjoint ``tile`` cells that are neither val nor test."""
    if fold is not None:
        return torch.tensor([quadrant(k, height, width) for k in range(N_FOLDS) if k != fold])
    held = split_regions(height, width, tile, stride, fractions, seed)
    _, _, cells = tiles(torch.zeros(height, width), None, tile, tile)
    cells = _boxes(cells, tile, tile)
    return cells[~_touching(cells, torch.cat([held["val"], held["test"]]))]


def _cut(a: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (N, ..., h, w) crops of ``boxes`` (N, 4), all of one size h x w."""
    h, w = int(boxes[0, 2]), int(boxes[0, 3])
    rows = (boxes[:, 0, None] + torch.arange(h))[:, :, None]
    cols = (boxes[:, 1, None] + torch.arange(w))[:, None, :]
    return a[..., rows, cols].movedim(-3, 0)  # advanced indexing puts N before the crop axes


class StardistNuclei(VisionDataset):
    """Tiles of the stardist nuclei image: ``mask`` foreground 0/1, ``instances`` int64 labels.

    Intensity: robust min-max by ``spec.intensity_percentiles`` of the whole image. Splits without leaks
    (:func:`split_regions`): by default the image is cut into a grid of disjoint ``tile`` x ``tile`` cells
    split by ``split_fractions``, val/test are those cells and train all tiles at ``tile_stride`` that touch
    no val/test cell; with ``spec.fold`` = k the test split is quadrant k as one whole image and train/val
    come from the other three quadrants.
    """

    kind = "segmentation"

    def __init__(self, spec: DatasetSpec, split: str) -> None:
        super().__init__(spec, split)
        raw, inst = stardist_nuclei()
        lo, hi = np.percentile(raw, spec.intensity_percentiles)
        img = np.clip((raw.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)  # lo, hi are float64
        self.full_image = torch.from_numpy(img)[None].expand(spec.channels, -1, -1)
        self.full_instances = torch.from_numpy(inst.astype(np.int64))
        H, W = img.shape
        regions = split_regions(H, W, spec.tile, spec.tile_stride, spec.split_fractions, spec.split_seed, spec.fold)
        boxes = regions[split]
        if len(boxes) == 0:
            raise DataError(f"stardist_nuclei: {split} tiles: expected at least one (got none; lower tile or change split_fractions)")
        self.images = _cut(self.full_image, boxes).contiguous()
        self.instances = _cut(self.full_instances, boxes)
        self.masks = values_to_classes((self.instances > 0).numpy(), 2, None, Path("stardist/mask2d.tif"))
        self.origins = boxes[:, :2]
        self.class_names = ["background", "nucleus"]

    def __len__(self) -> int:
        return len(self.images)

    def item_path(self, i: int) -> str:
        y, x = self.origins[i].tolist()
        return f"stardist/data/images/img2d.tif#y{y}x{x}"

    def load(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "mask": self.masks[i], "instances": self.instances[i]}

    def sample_labels(self) -> torch.Tensor:
        return (self.masks.flatten(1) > 0).any(1).long()

    def baseline_tuning_set(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(image (C, h, w), instances (h, w)) pairs the classical baseline is tuned on (:func:`tuning_regions`):
        never a pixel of the test split."""
        s = self.spec
        H, W = self.full_instances.shape
        boxes = tuning_regions(H, W, s.tile, s.tile_stride, s.split_fractions, s.split_seed, s.fold)
        return [(_cut(self.full_image, b[None])[0], _cut(self.full_instances, b[None])[0]) for b in boxes]


@DATASETS.register("stardist_nuclei")
def _stardist(spec: DatasetSpec, split: str) -> StardistNuclei:
    return StardistNuclei(spec, split)


@DATASETS.register("synthetic_shapes")
def _synthetic_shapes(spec: DatasetSpec, split: str) -> VisionDataset:
    """Write the synthetic set into ``spec.root`` (unless already complete there), then read it."""
    from neurotrain.tasks.vision.datasets import ImageFolderClassification, SegmentationFolder

    if spec.root is None:
        raise DataError("synthetic_shapes: root: expected a folder to write the synthetic set into (got none)")
    s = spec.synthetic
    if s.kind == "segmentation":
        write_segmentation_set(spec.root, s.n, s.size, s.seed, s.n_classes)
        return SegmentationFolder(spec.model_copy(update={"n_classes": s.n_classes}), split)
    write_classification_set(spec.root, s.n, s.size, s.seed)
    return ImageFolderClassification(spec.model_copy(update={"n_classes": len(CLASSIFICATION_CLASSES)}), split)
