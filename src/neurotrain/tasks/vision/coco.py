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
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc.get(key), list):
                raise DataError(f"{self.ann_file}: {key}: expected a list (got {type(doc.get(key)).__name__})")
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
            images = [images[k] for k in split_indices(len(images), spec.split_fractions, spec.split_seed, split)]
        self.images = images
        self.anns = by_image

    @staticmethod
    def _box_problem(bbox: Any, im: dict[str, Any]) -> str | None:
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            return f"expected [x, y, w, h] (got {bbox!r})"
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
            sample["masks"] = _polygons_to_masks([a["segmentation"] for a in anns], H, W)[keep]
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


def _polygons_to_masks(segs: list[list[list[float]]], H: int, W: int) -> torch.Tensor:
    """COCO polygons (lists of x0,y0,x1,y1,...) -> (K, H, W) uint8 filled masks."""
    from PIL import Image, ImageDraw

    out = np.zeros((len(segs), H, W), dtype=np.uint8)
    for k, polys in enumerate(segs):
        canvas = Image.new("L", (W, H), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in polys:
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
