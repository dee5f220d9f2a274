"""2D geometry augmentation of image + mask batches as one fused warp, every random number drawn on the device.

Why not kornia's ``AugmentationSequential`` here (it is kept for detection boxes, ``augment.py``): for a batch of
16 images of 512x512 it runs about 1,400 tensor operations per call (one chain per transform, each with its
own masks, ``where``s and copies), and its random parameters are drawn on the CPU and copied to the GPU with
blocking copies, each of which waits for the GPU queue to drain. The host then cannot run ahead of the GPU:
on the H200 the U-Net fed by the loader trained at 498 images/s with the GPU 44 % busy, against 1,275 images/s
on synthetic batches (``docs/results/vision.md``). Here the whole geometry is ~40 small kernels and one
``grid_sample`` per target, with no host synchronisation.

The map, per sample, from an output pixel to the input (pixels; x along W, y along H):

    p_in = q_c + A @ (p_out - c_out) + d(p_out)

* ``A = R(k * 90 deg + theta) @ diag(sx, sy)``: flips ``sx, sy`` in {-1, +1} (probability ``p_flip`` each),
  quarter turns ``k`` in {0..3} (with probability ``p_rotate90``; only when the output is square, as a
  quarter turn of a non-square window would read outside it), rotation ``theta`` ~ U(-rotate_deg,
  rotate_deg) (probability ``p_rotate``). Cosines and sines of the quarter turns are exact (0, +-1), so flips
  and turns alone sample pixel centres exactly: the result equals ``torch.flip`` / ``torch.rot90``.
* ``q_c``: the centre of the output window in the input; the window (``crop_size``, else the whole image) sits
  at a random integer offset, so it is an exact crop when nothing rotates. The window turns about its own centre
  (crop, then rotate): pixels that a rotation brings in from outside the window are real image pixels where
  they lie inside the image, zeros (image) and class 0 (mask) outside it.
* ``d``: the elastic displacement (probability ``p_elastic``): white noise U(-1, 1) * ``elastic_alpha`` px on a
  coarse grid of one control point per ``elastic_sigma`` px, upsampled once, bicubically, to the output size:
  a smooth field whose correlation length is about ``elastic_sigma`` px, rms displacement about half of
  ``elastic_alpha`` px (bicubic interpolation overshoots the control values in places: measured for alpha 4 px,
  sigma 16 px on 8 fields of 256x256, rms 1.97 px, largest 5.7 px, largest displacement gradient 0.75; a
  gradient below 1 does not fold the image).

The image is resampled bilinearly (nearest when neither rotation nor elastic is on: the map then lands on pixel
centres and nearest copies them exactly), the mask (class indices) nearest, with the same grid, so labels stay
in the class set and move with their pixels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

N_UNIFORMS = 9  # random numbers per sample: hflip, vflip, turn on, turn k, rotate on, angle, x0, y0, elastic on
MIN_CONTROL_POINTS = 2  # per axis of the elastic field's coarse grid (a 1-point grid cannot bend)


def output_size(section: Any, hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the augmented batch: ``crop_size`` clipped to the image, else the image size."""
    if section.crop_size is None:
        return hw
    return min(int(section.crop_size[0]), hw[0]), min(int(section.crop_size[1]), hw[1])


def is_active(section: Any, hw: tuple[int, int]) -> bool:
    """Whether any geometric transform can change a batch of spatial size ``hw``."""
    s = section
    oh, ow = output_size(s, hw)
    return bool((s.hflip or s.vflip) and s.p_flip > 0) or bool(s.rotate90 and oh == ow and s.p_rotate90 > 0) or (
        s.rotate_deg > 0 and s.p_rotate > 0) or (s.elastic_alpha > 0 and s.p_elastic > 0) or (oh, ow) != tuple(hw)


def sample_theta(section: Any, batch: int, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(B, 2, 3) ``affine_grid`` matrices (normalised coordinates, ``align_corners=False``) of the flips, turns,
    rotation and crop described in the module docstring, drawn with ``torch.rand`` on ``device``.

    Only Python scalars enter the arithmetic (a constant tensor made on the CPU would be a blocking copy to the
    GPU), and only the transforms the section enables cost operations."""
    s = section
    H, W = hw
    oh, ow = output_size(s, hw)
    u = torch.rand(batch, N_UNIFORMS, device=device, dtype=torch.float32)
    zero = torch.zeros(batch, device=device)
    # cos and sin of the rotation angle, exact for quarter turns: cos(x - pi/2) = sin(x)
    c, sn = zero + 1.0, zero
    if s.rotate90 and oh == ow and s.p_rotate90 > 0:
        k = torch.floor(u[:, 3] * 4).clamp_max_(3).mul_(u[:, 2] < s.p_rotate90)
        q = torch.stack([k, k - 1], dim=1).mul_(math.pi / 2).cos_().round_()  # (cos, sin) of k * 90 deg
        c, sn = q[:, 0], q[:, 1]
    if s.rotate_deg > 0 and s.p_rotate > 0:
        ang = (u[:, 5] * 2 - 1).mul_((u[:, 4] < s.p_rotate) * math.radians(s.rotate_deg))
        t = torch.stack([ang, ang - math.pi / 2], dim=1).cos_()  # (cos, sin) of theta
        c, sn = c * t[:, 0] - sn * t[:, 1], sn * t[:, 0] + c * t[:, 1]
    # A = R @ diag(sx, sy): the flips scale A's columns
    cx, sx = c, sn
    cy, sy = -sn, c
    if s.p_flip > 0 and (s.hflip or s.vflip):
        flip = 1.0 - 2.0 * (u[:, 0:2] < s.p_flip).float()  # -1 where flipped
        if s.hflip:
            cx, sx = cx * flip[:, 0], sx * flip[:, 0]
        if s.vflip:
            cy, sy = cy * flip[:, 1], sy * flip[:, 1]
    # the window's centre, at a random integer offset (an exact crop)
    tx = ty = zero
    if ow < W:
        tx = torch.floor(u[:, 6] * (W - ow + 1)).clamp_max_(W - ow).mul_(2 / W).add_(ow / W - 1)
    if oh < H:
        ty = torch.floor(u[:, 7] * (H - oh + 1)).clamp_max_(H - oh).mul_(2 / H).add_(oh / H - 1)
    row0 = torch.stack([cx * (ow / W), cy * (oh / W), tx], dim=1)
    row1 = torch.stack([sx * (ow / H), sy * (oh / H), ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def elastic_field(section: Any, batch: int, in_hw: tuple[int, int], out_hw: tuple[int, int],
                  device: torch.device) -> torch.Tensor:
    """(B, oh, ow, 2) displacement in ``grid_sample`` units of the input (x, y); zero for the samples not drawn."""
    s = section
    H, W = in_hw
    oh, ow = out_hw
    gy = max(MIN_CONTROL_POINTS, math.ceil(oh / s.elastic_sigma) + 1)
    gx = max(MIN_CONTROL_POINTS, math.ceil(ow / s.elastic_sigma) + 1)
    coarse = torch.rand(batch, 3, gy, gx, device=device)  # x, y displacement noise; on/off from channel 2
    on = coarse[:, 2:, :1, :1] < s.p_elastic
    amp = (coarse[:, :2] * 2 - 1).mul_(on * s.elastic_alpha)
    f = F.interpolate(amp, size=(oh, ow), mode="bicubic", align_corners=True)
    # pixels -> normalised units of the input: 2 / W along x, 2 / H along y
    return torch.stack([f[:, 0] * (2 / W), f[:, 1] * (2 / H)], dim=-1)


def warp2d(section: Any, image: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment ``image`` (B, C, H, W) float in [0, 1] and ``mask`` (B, H, W) class indices (any integer dtype)
    with one random map per sample; returns the image (float, clamped to [0, 1]) and the mask as int64, both at
    :func:`output_size`. Unchanged when no transform is active."""
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    if not is_active(section, hw):
        return image, (mask.long() if mask is not None else None)
    B, C = image.shape[:2]
    oh, ow = output_size(section, hw)
    theta = sample_theta(section, B, hw, image.device)
    grid = F.affine_grid(theta if image.dtype == torch.float32 else theta.to(image.dtype), [B, C, oh, ow],
                         align_corners=False)
    if section.elastic_alpha > 0 and section.p_elastic > 0:
        grid = grid + elastic_field(section, B, hw, (oh, ow), image.device).to(grid.dtype)  # a no-op in fp32
    # flips, quarter turns and integer crops land on pixel centres: nearest copies them exactly (and is cheaper)
    smooth = (section.rotate_deg > 0 and section.p_rotate > 0) or (section.elastic_alpha > 0 and section.p_elastic > 0)
    out = F.grid_sample(image, grid, mode="bilinear" if smooth else "nearest", padding_mode="zeros",
                        align_corners=False).clamp_(0, 1)
    if mask is None:
        return out, None
    m = F.grid_sample(mask[:, None].to(grid.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, m[:, 0].round_().long()
