"""Why a classifier said what it said: Grad-CAM (Selvaraju et al. 2017) on the last convolution, or integrated
gradients (Sundararajan et al. 2017, black-image baseline, ``IG_STEPS`` steps) on the input pixels, through captum.
Maps are normalised to [0, 1] per image and saved as overlays on the image (PNG, atomic)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

IG_STEPS = 32  # Riemann steps of the path integral; captum's default is 50, 32 keeps CPU runs short


def last_conv(model: nn.Module) -> nn.Module:
    """The last ``Conv2d`` of the network (Grad-CAM's layer: the deepest one that still has a spatial map)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a convolutional network (no Conv2d found)")
    return convs[-1]


def attribute(model: nn.Module, images: torch.Tensor, target: torch.Tensor, method: str = "gradcam") -> torch.Tensor:
    """Attribution maps ``(B, H, W)`` in [0, 1] for class ``target`` ``(B,)`` of images ``(B, C, H, W)``."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    was_training = model.training
    model.eval()
    x = images.detach().clone().requires_grad_(True)
    try:
        if method == "gradcam":
            cam = LayerGradCam(model, last_conv(model)).attribute(x, target=target, relu_attributions=True)
            maps = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")[:, 0]
        elif method == "integrated_gradients":
            ig = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=IG_STEPS)
            maps = ig.abs().sum(1)
        else:
            raise ValueError(f"explain: expected gradcam or integrated_gradients (got {method!r})")
    finally:
        model.train(was_training)
    maps = maps.detach()
    lo = maps.flatten(1).amin(1).view(-1, 1, 1)
    hi = maps.flatten(1).amax(1).view(-1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def save_overlay(image: torch.Tensor, attr: torch.Tensor, path: Path, title: str = "") -> Path:
    """The image in grey with the attribution map in ``jet`` on top (alpha 0.45)."""
    from neurotrain.tasks.vision.plots import _plt, _save, _show_image

    plt = _plt()
    fig, ax = plt.subplots(figsize=(3, 3))
    _show_image(ax, image)
    ax.imshow(attr.cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def explain_files(cfg: Any, model: nn.Module, images: torch.Tensor, files: Sequence[Path], targets: torch.Tensor,
                  out_dir: Path) -> list[Path]:
    """One overlay per input file, ``<stem>_<method>.png``, for the predicted class."""
    method = cfg.predict.explain
    maps = attribute(model.cpu(), images, targets, method)
    return [save_overlay(img, m, Path(out_dir) / f"{Path(f).stem}_{method}.png", f"class {int(t)}")
            for img, m, f, t in zip(images, maps, files, targets)]
