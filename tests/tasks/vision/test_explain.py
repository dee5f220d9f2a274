"""Grad-CAM and integrated gradients point at the pixels a classifier uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from neurotrain.tasks.vision.explain import attribute, save_overlay


class _Bright(nn.Module):
    """Class 1 logit = mean response of a fixed 3x3 box filter: the evidence is wherever the image is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        score = h.mean(dim=(1, 2, 3))
        return torch.stack([-score, score], 1)


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_attribution_lies_where_the_decision_is(method: str, tmp_path: Path) -> None:
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 1:7, 1:7] = 1.0  # the only bright patch
    maps = attribute(_Bright(), x, torch.tensor([1, 1]), method)
    assert maps.shape == (2, 16, 16) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    inside = maps[:, :7, :7].mean()
    outside = maps[:, 10:, 10:].mean()
    assert inside > 0.3 and outside < 0.05, (float(inside), float(outside))
    p = save_overlay(x[0], maps[0], tmp_path / "o.png", "class 1")
    assert p.is_file() and p.stat().st_size > 0
