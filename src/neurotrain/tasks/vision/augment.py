"""Batch augmentations on the device, image and target transformed together.

``build_augment(section, kind)`` returns a callable ``aug(batch, seed=None) -> batch`` on
batch dicts (see ``datasets``): ``image`` (B, C, H, W) or (B, C, D, H, W) float in [0, 1];
segmentation ``mask`` (B, H, W) / (B, D, H, W) integer class indices (uint8 from the cached loaders,
returned as int64); detection ``image``/``boxes``/``labels``[/``masks``] as lists
(``detection_collate``); classification ``label`` untouched.

2D segmentation and classification (the training hot path): one fused warp per batch
(``augment2d.warp2d``): flips, quarter turns, rotation and crop composed into one affine matrix per
sample, the elastic field a coarse random grid upsampled once, image bilinear and mask nearest through
the same ``grid_sample``; every random number drawn on the batch's device, no host synchronisation.

2D detection: one kornia ``AugmentationSequential`` per image (flips, 90-degree turns, rotation, crop)
with data keys ``input``, ``mask`` and ``bbox_xyxy``, so all targets share the same random
parameters. Boxes are torchvision's continuous xyxy (x2 = x1 + width); kornia's ``bbox_xyxy`` counts
x2 as the last pixel, so 1 px is taken off before and added back after. Boxes are clipped to the
image and dropped (with their labels and masks) when less than ``MIN_BOX_PX`` wide or high after a
crop. Elastic deformation does not move boxes, so it is off for detection.

3D (kornia cannot warp 3D masks): flips along D, H, W and 90-degree turns in the H-W plane
are exact index operations chosen per sample; rotation about the D axis and the elastic
field share one ``grid_sample`` (image trilinear, mask nearest). The elastic field is white
noise smoothed by a Gaussian of ``elastic_sigma`` voxels, scaled to at most ``elastic_alpha`` voxels.

Intensity (both): x' = clamp((x * s + b) ** gamma, 0, 1), s, b, gamma uniform in the
configured ranges, per sample, with probability ``p_intensity``.

Randomness: drawn from torch's global generators (kornia too); ``seed`` forks them (CPU and the
batch's CUDA device), so a seeded call is reproducible and leaves the global stream as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from neurotrain.tasks.vision.augment2d import warp2d
from neurotrain.tasks.vision.data_config import AugmentSection, TaskKind

MIN_BOX_PX = 1.0
ELASTIC_KERNEL_SIGMAS = 4  # Gaussian kernel half-width in sigmas (odd size 2*4*sigma + 1, capped by the image)

Augment = Callable[..., dict[str, Any]]


def to_float_batch(batch: Any) -> Any:
    """Scale a batch of stored pixels on its device: uint8 ``image`` -> float32 / 255, uint8 ``mask`` -> int64.

    The cached training loaders (``cache.py``, ``VisionDataset.raw``) hand over uint8 tensors: a quarter of
    the bytes to collate, pin and copy to the GPU, converted there in one pass. Float batches pass unchanged.
    """
    if not isinstance(batch, dict) or not isinstance(batch.get("image"), torch.Tensor):
        return batch
    out = dict(batch)
    if out["image"].dtype == torch.uint8:
        out["image"] = out["image"].float().div_(255.0)
    mask = out.get("mask")
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8:
        out["mask"] = mask.long()
    return out


def identity(batch: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    return batch


def build_augment(section: AugmentSection, kind: TaskKind) -> Augment:
    """The augmentation ``section`` describes for ``kind``; the identity when disabled."""
    if not section.enabled:
        return identity
    return BatchAugment(section, kind)


class BatchAugment:
    """Callable on batch dicts; see the module docstring."""

    def __init__(self, section: AugmentSection, kind: TaskKind) -> None:
        self.s = section
        self.kind = kind
        self._seq2d: dict[tuple[int, int], Any] = {}

    # ------------------------------------------------------------------ entry

    def __call__(self, batch: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        image = batch["image"]
        first = image[0] if isinstance(image, list) else image
        device = first.device if self.s.on_gpu else torch.device("cpu")
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = dict(batch)
            if self.kind == "detection":
                return self._detection(out, device)
            img = image.to(device)
            mask = batch.get("mask")
            mask = mask.to(device) if mask is not None and self.kind == "segmentation" else None
            if img.ndim == 5:
                img, mask = self._geometry3d(img, mask)
            else:
                img, mask = warp2d(self.s, img, mask)
            out["image"] = self._intensity(img)
            if mask is not None:
                out["mask"] = mask
            return out

    # ------------------------------------------------------------------ 2D detection (kornia, per image)

    def _sequence(self, hw: tuple[int, int]) -> Any:
        """The kornia pipeline for detection images of size ``hw`` (no elastic: it would not move boxes)."""
        import kornia.augmentation as K

        if hw in self._seq2d:
            return self._seq2d[hw]
        s, ops = self.s, []
        if s.hflip:
            ops.append(K.RandomHorizontalFlip(p=s.p_flip))
        if s.vflip:
            ops.append(K.RandomVerticalFlip(p=s.p_flip))
        if s.rotate90 and hw[0] == hw[1]:  # a quarter turn of a non-square image would crop it
            ops.append(K.RandomRotation90(times=(0, 3), p=s.p_rotate90))
        if s.rotate_deg > 0:
            ops.append(K.RandomRotation(degrees=s.rotate_deg, p=s.p_rotate))
        if s.crop_size is not None:
            ops.append(K.RandomCrop(tuple(s.crop_size), p=1.0))
        seq = K.AugmentationSequential(*ops, data_keys=None, random_apply=False) if ops else None
        self._seq2d[hw] = seq
        return seq

    def _geometry2d(self, img: torch.Tensor, mask: torch.Tensor | None,
                    boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Detection: img (B, C, H, W); mask (B, H, W) int or (B, K, H, W) uint8 instance masks; boxes (B, N, 4)."""
        seq = self._sequence((int(img.shape[-2]), int(img.shape[-1])))
        if seq is None:
            return img, mask, boxes
        inputs: dict[str, torch.Tensor] = {"input": img}
        instance = mask is not None and mask.ndim == 4
        if mask is not None:
            inputs["mask"] = (mask if instance else mask[:, None]).to(img.dtype)
        if boxes is not None:
            b = boxes.clone()
            b[..., 2:] -= 1.0  # continuous x2, y2 -> kornia's last-pixel convention
            inputs["bbox_xyxy"] = b
        out = seq(inputs)
        img = out["input"].clamp(0, 1)
        if mask is not None:
            m = out["mask"].round()
            mask = m.to(torch.uint8) if instance else m[:, 0].long()
        if boxes is not None:
            boxes = out["bbox_xyxy"].clone()
            boxes[..., 2:] += 1.0
        return img, mask, boxes

    def _detection(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Per image (sizes and box counts differ): geometry, box clipping, intensity."""
        images, boxes, labels = list(batch["image"]), list(batch["boxes"]), list(batch["labels"])
        masks = list(batch["masks"]) if "masks" in batch else None
        for i in range(len(images)):  # loop over images, not pixels: each has its own size and K
            img = images[i].to(device)[None]
            b = boxes[i].to(device, torch.float32)[None]
            m = masks[i].to(device)[None] if masks is not None else None
            img, m, b = self._geometry2d(img, m, b)
            H, W = img.shape[-2:]
            bb = b[0]
            bb[:, 0::2] = bb[:, 0::2].clamp(0, W)
            bb[:, 1::2] = bb[:, 1::2].clamp(0, H)
            keep = ((bb[:, 2] - bb[:, 0]) >= MIN_BOX_PX) & ((bb[:, 3] - bb[:, 1]) >= MIN_BOX_PX)
            images[i] = self._intensity(img)[0]
            boxes[i] = bb[keep]
            labels[i] = labels[i].to(device)[keep]
            if masks is not None and m is not None:
                masks[i] = m[0][keep]
        batch.update(image=images, boxes=boxes, labels=labels)
        if masks is not None:
            batch["masks"] = masks
        return batch

    # ------------------------------------------------------------------ 3D (index ops + one grid_sample)

    def _geometry3d(self, img: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        s, B, dev = self.s, img.shape[0], img.device

        def per_sample(p: float) -> torch.Tensor:
            return torch.rand(B, device=dev) < p

        def choose(flag: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(flag.view(-1, *([1] * (a.ndim - 1))), a, b)

        m = mask[:, None] if mask is not None else None  # (B, 1, D, H, W)
        flips = [(dim, on) for dim, on in ((2, True), (3, s.vflip), (4, s.hflip)) if on and s.p_flip > 0]
        for dim, _ in flips:
            f = per_sample(s.p_flip)
            img = choose(f, img.flip(dim), img)
            m = choose(f, m.flip(dim), m) if m is not None else None
        if s.rotate90 and img.shape[-1] == img.shape[-2] and s.p_rotate90 > 0:
            k = torch.randint(0, 4, (B,), device=dev) * per_sample(s.p_rotate90)
            img = torch.stack([torch.rot90(img, q, (3, 4)) for q in range(4)])[k, torch.arange(B, device=dev)]
            if m is not None:
                m = torch.stack([torch.rot90(m, q, (3, 4)) for q in range(4)])[k, torch.arange(B, device=dev)]
        if s.rotate_deg > 0 or s.elastic_alpha > 0:
            img, m = self._warp3d(img, m)
        if s.crop_size_3d is not None:
            img, m = self._crop3d(img, m, s.crop_size_3d)
        return img.clamp(0, 1), (m[:, 0].long() if m is not None else None)

    def _warp3d(self, img: torch.Tensor, m: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        s, B, dev = self.s, img.shape[0], img.device
        D, H, W = img.shape[-3:]
        ang = torch.zeros(B, device=dev)
        if s.rotate_deg > 0:
            on = torch.rand(B, device=dev) < s.p_rotate
            ang = (torch.rand(B, device=dev) * 2 - 1) * math.radians(s.rotate_deg) * on
        c, sn = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(B, 3, 4, device=dev)
        # rotation in the (x=W, y=H) plane, about the D axis; grid coords are (x, y, z)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1], theta[:, 2, 2] = c, -sn, sn, c, 1.0
        grid = F.affine_grid(theta, [B, 1, D, H, W], align_corners=False)
        if s.elastic_alpha > 0:
            on = (torch.rand(B, device=dev) < s.p_elastic).view(B, 1, 1, 1, 1).float()
            noise = torch.rand(B, 3, D, H, W, device=dev) * 2 - 1
            field = _gaussian_blur3d(noise, s.elastic_sigma)
            field = field / field.abs().amax(dim=(2, 3, 4), keepdim=True).clamp_min(1e-8)
            scale = torch.tensor([2.0 / W, 2.0 / H, 2.0 / D], device=dev).view(1, 3, 1, 1, 1)  # voxels -> grid units
            grid = grid + (field * s.elastic_alpha * scale * on).permute(0, 2, 3, 4, 1)
        img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if m is not None:
            m = F.grid_sample(m.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
        return img, m

    @staticmethod
    def _crop3d(img: torch.Tensor, m: torch.Tensor | None, size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        D, H, W = img.shape[-3:]
        sd, sh, sw = (min(a, b) for a, b in zip(size, (D, H, W), strict=True))
        starts = [(int(torch.randint(0, D - sd + 1, ())), int(torch.randint(0, H - sh + 1, ())), int(torch.randint(0, W - sw + 1, ())))
                  for _ in range(img.shape[0])]
        img = torch.stack([x[:, z:z + sd, y:y + sh, w:w + sw] for x, (z, y, w) in zip(img, starts, strict=True)])
        if m is not None:
            m = torch.stack([x[:, z:z + sd, y:y + sh, w:w + sw] for x, (z, y, w) in zip(m, starts, strict=True)])
        return img, m

    # ------------------------------------------------------------------ intensity

    def _intensity(self, img: torch.Tensor) -> torch.Tensor:
        s, B, dev = self.s, img.shape[0], img.device
        if s.p_intensity <= 0:
            return img
        shape = (B,) + (1,) * (img.ndim - 1)

        r = torch.rand(4, *shape, device=dev)  # one draw for scale, shift, gamma and on/off (one kernel)

        def uniform(u: torch.Tensor, lo_hi: tuple[float, float]) -> torch.Tensor:
            lo, hi = lo_hi
            return (u * (hi - lo) + lo).to(img.dtype)

        scale, shift = uniform(r[0], s.intensity_scale), uniform(r[1], s.intensity_shift)
        gamma = uniform(r[2], s.intensity_gamma)
        out = (img * scale + shift).clamp(0, 1) ** gamma
        on = r[3] < s.p_intensity
        return torch.where(on, out, img).clamp(0, 1)


def _gaussian_blur3d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, D, H, W) along each spatial axis (reflect padding)."""
    for axis in (2, 3, 4):
        n = x.shape[axis]
        r = max(1, min(int(ELASTIC_KERNEL_SIGMAS * sigma), (n - 1) // 2)) if n > 2 else 0
        if r == 0:
            continue
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[axis] = 2 * r + 1
        C = x.shape[1]
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (4 - axis)] = pad[2 * (4 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="reflect"), k.view(shape).expand(C, 1, *shape[2:]).contiguous(), groups=C)
    return x
