"""COCO-style detection annotations (one JSON: ``images``, ``annotations``, ``categories``).

Boxes are stored as ``[x, y, w, h]`` in pixels (top-left corner, width, height) and are
returned as ``xyxy`` = ``[x, y, x + w, y + h]`` float32, the torchvision convention.
Category ids (any integers) map to contiguous labels 1..K in sorted id order; label 0 is
the background that torchvision's detectors reserve, so ``class_names[0] == "background"``.
Crowd annotations (``iscrowd: 1``) are left out, as in COCO evaluation. A box that reaches
outside its image by more than ``BOX_TOLERANCE_PX``, or has no area, is a DataError naming the
file and annotation, or a counted skip of that annotation with ``on_bad_file: skip``.
Polygon ``segmentation``s, when every kept annotation of an image has one, are rasterised
into ``masks`` (K, H, W) uint8.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError
from neurotrain.tasks.vision.data_config import DatasetSpec
from neurotrain.tasks.vision.dataset_base import VisionDataset, read_image, require_dir, split_folder, split_indices

BOX_TOLERANCE_PX = 1.0  # rounding slack of annotation tools at the image border


class CocoDetection(VisionDataset):
    """Images of ``root/<image_dir>`` (default ``images``) annotated by ``root/<annotation_file>``."""

    kind = "detection"

    def __init__(self, spec: DatasetSpec, split: str = "train") -> None:
        super().__init__(spec, split)
        root = require_dir(Path(spec.root or "."), "dataset root")
        base = split_folder(root, split)
        presplit = base is not None
        base = base or root
        self.ann_file = base / spec.annotation_file
        self.image_dir = base / (spec.image_dir or "images")
        if not self.ann_file.is_file():
            raise DataError(f"{self.ann_file}: annotations: expected a COCO JSON file (got no file)")
        try:
            doc = json.loads(self.ann_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.ann_file}: JSON: expected valid COCO JSON (got {str(exc).splitlines()[0]})") from None
        doc = _checked_document(doc, self.ann_file)
        cat_ids = sorted(int(c["id"]) for c in doc["categories"])
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in doc["categories"]}
        self.cat_to_label = {cid: k + 1 for k, cid in enumerate(cat_ids)}
        self.class_names = ["background"] + [names[c] for c in cat_ids]
        images = sorted(doc["images"], key=lambda im: int(im["id"]))
        if not images:
            raise DataError(f"{self.ann_file}: images: expected at least one image (got none)")
        by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in images}
        info = {int(im["id"]): im for im in images}
        for ann in doc["annotations"]:
            iid = int(ann.get("image_id", -1))
            where = f"{self.ann_file}: annotation {ann.get('id', '?')}"
            if iid not in by_image:
                raise DataError(f"{where}: image_id: expected one of the listed images (got {iid})")
            if int(ann.get("category_id", -1)) not in self.cat_to_label:
                raise DataError(f"{where}: category_id: expected one of {cat_ids} (got {ann.get('category_id')})")
            if ann.get("iscrowd", 0):
                continue
            problem = self._box_problem(ann.get("bbox"), info[iid])
            if problem:
                msg = f"{where} (image {info[iid].get('file_name')}): bbox: {problem}"
                if spec.on_bad_file == "error":
                    raise DataError(msg)
                self.skip(self.image_dir / str(info[iid].get("file_name")), msg)
                continue
            by_image[iid].append(ann)
        if not presplit:
            n = len(images)
            images = [images[k] for k in split_indices(n, spec.split_fractions, spec.split_seed, split)]
            if not images and spec.split_fractions[("train", "val", "test").index(split)] > 0:
                raise DataError(f"{self.ann_file}: {split} split: expected at least one image (got none of {n} with "
                                f"split_fractions {list(spec.split_fractions)}; add images or change them)")
        self.images = images
        self.anns = by_image

    @staticmethod
    def _box_problem(bbox: Any, im: dict[str, Any]) -> str | None:
        if (not isinstance(bbox, list | tuple) or len(bbox) != 4
                or not all(_is_number(v) and np.isfinite(v) for v in bbox)):
            return f"expected [x, y, w, h], four finite numbers (got {bbox!r})"
        x, y, w, h = (float(v) for v in bbox)
        W, H = float(im.get("width", np.inf)), float(im.get("height", np.inf))
        if w <= 0 or h <= 0:
            return f"expected a positive width and height (got w={w:g}, h={h:g})"
        t = BOX_TOLERANCE_PX
        if x < -t or y < -t or x + w > W + t or y + h > H + t:
            return f"expected inside the {W:g}x{H:g} image (got xyxy [{x:g}, {y:g}, {x + w:g}, {y + h:g}])"
        return None

    def __len__(self) -> int:
        return len(self.images)

    def item_path(self, i: int) -> str:
        return str(self.image_dir / str(self.images[i]["file_name"]))

    def load(self, i: int) -> dict[str, Any]:
        im = self.images[i]
        path = Path(self.item_path(i))
        image = read_image(path, self.spec.channels, self.spec.convert_gray)
        H, W = image.shape[-2:]
        if ("width" in im and int(im["width"]) != W) or ("height" in im and int(im["height"]) != H):
            raise DataError(f"{path}: image size: expected {im.get('width')}x{im.get('height')} as annotated (got {W}x{H})")
        anns = self.anns[int(im["id"])]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        labels = torch.tensor([self.cat_to_label[int(a["category_id"])] for a in anns], dtype=torch.int64)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.spec.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.spec.min_box_size)
        sample: dict[str, Any] = {"image": image, "boxes": boxes[keep], "labels": labels[keep], "path": str(path)}
        if anns and all(isinstance(a.get("segmentation"), list) and a["segmentation"] for a in anns):
            sample["masks"] = _polygons_to_masks([a["segmentation"] for a in anns], H, W, f"{self.ann_file}: image {path.name}")[keep]
        if self.spec.size is not None:
            sample = _resize_detection(sample, self.spec.size)
        return sample

    def sample_labels(self) -> torch.Tensor:
        """The most frequent label of each image (0 for an image without boxes)."""
        out = []
        for im in self.images:
            labs = [self.cat_to_label[int(a["category_id"])] for a in self.anns[int(im["id"])]]
            out.append(max(set(labs), key=labs.count) if labs else 0)
        return torch.tensor(out, dtype=torch.int64)


#: the fields each entry of a COCO list must carry (as integers: ``id``s; ``file_name`` as text)
_REQUIRED = {"images": ("id", "file_name"), "categories": ("id",), "annotations": ()}
#: fields that, when present, must be integers (ids, image sizes in pixels)
_INTEGER = {"images": ("id", "width", "height"), "categories": ("id",), "annotations": ("image_id", "category_id")}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    """An id ``int()`` reads exactly: an integer, an integral float, or integer text (some tools write ``"12"``)."""
    if isinstance(v, str):
        return v.strip().lstrip("+-").isdigit()
    return _is_number(v) and float(v).is_integer()


def _checked_document(doc: Any, path: Path) -> dict[str, Any]:
    """The parsed JSON when it has COCO's shape: an object whose ``images``, ``annotations`` and ``categories``
    are lists of objects with the fields read later of the right type; one DataError naming the file, the list,
    the entry and the field otherwise (so that nothing fails later with a bare KeyError or ValueError)."""
    if not isinstance(doc, dict):
        raise DataError(f"{path}: JSON: expected a COCO object with images, annotations and categories "
                        f"(got a {type(doc).__name__})")
    for key in ("images", "annotations", "categories"):
        entries = doc.get(key)
        if not isinstance(entries, list):
            raise DataError(f"{path}: {key}: expected a list (got {type(entries).__name__})")
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise DataError(f"{path}: {key}[{i}]: expected an object (got {type(e).__name__} {e!r:.40})")
            missing = [f for f in _REQUIRED[key] if f not in e]
            if missing:
                raise DataError(f"{path}: {key}[{i}]: {missing[0]}: expected a value (missing)")
            for f in _INTEGER[key]:
                if f in e and not _is_integer(e[f]):
                    raise DataError(f"{path}: {key}[{i}]: {f}: expected an integer (got {e[f]!r})")
    return doc


def _polygons_to_masks(segs: list[list[list[float]]], H: int, W: int, where: str = "COCO") -> torch.Tensor:
    """COCO polygons (lists of x0,y0,x1,y1,...) -> (K, H, W) uint8 filled masks; a polygon that is not a list of
    numbers is a DataError (``where`` names the file and image), so a bad entry is a counted skip mid-epoch."""
    from PIL import Image, ImageDraw

    out = np.zeros((len(segs), H, W), dtype=np.uint8)
    for k, polys in enumerate(segs):
        canvas = Image.new("L", (W, H), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in polys:
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                raise DataError(f"{where}: segmentation: expected polygons as lists of x, y numbers (got {poly!r:.60})")
            if len(poly) >= 6:
                draw.polygon([float(v) for v in poly], fill=1)
        out[k] = np.asarray(canvas)
    return torch.from_numpy(out)


def _resize_detection(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    import torch.nn.functional as F

    H, W = sample["image"].shape[-2:]
    sy, sx = size[0] / H, size[1] / W
    sample["image"] = F.interpolate(sample["image"][None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    sample["boxes"] = sample["boxes"] * torch.tensor([sx, sy, sx, sy])
    if "masks" in sample:
        sample["masks"] = F.interpolate(sample["masks"][None].float(), size=size, mode="nearest-exact")[0].to(torch.uint8)
    return sample
