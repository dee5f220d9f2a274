"""The seed's SMLM networks, built on :class:`neurotrain.nn.unet.UNet`.

Output channels (all networks emit activated, normalised values; :mod:`postprocess` scales them):

* 5ch: ``p, photons, x, y, z``; 6ch adds ``bg``.
* 10ch (SigmaMUNet, DECODE): ``p, photons, x, y, z, sigma_photons, sigma_x, sigma_y, sigma_z, bg``.

p, photons, sigmas and bg use a sigmoid (photons in units of ``photon_scale``, bg of
``bg_scale``); x, y (pixel offsets from the pixel centre, [-1, 1] px) and z (units of the
largest |z|) use tanh. Sigmas are mapped to ``3 sigmoid + 0.01`` by the loss and post-processing,
as in DECODE (Speiser et al., Nat. Methods 18:1082, 2021).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neurotrain.nn.unet import UNet

TANH_CHANNELS = {5: (2, 3, 4), 6: (2, 3, 4), 10: (2, 3, 4)}
P_BIAS = -6.0  # initial detection logit (p ~ 0.0025 per pixel), as DECODE initialises its p head


def activate(raw: torch.Tensor) -> torch.Tensor:
    """Per-channel activations of a raw 5/6/10-channel map: tanh on x, y, z, sigmoid elsewhere."""
    c = raw.shape[1]
    idx = torch.zeros(c, dtype=torch.bool, device=raw.device)
    idx[list(TANH_CHANNELS[c])] = True
    return torch.where(idx[None, :, None, None], torch.tanh(raw), torch.sigmoid(raw))


class SimpleSMLMNet(nn.Module):
    """A 2D U-Net on the frame window (frames as channels) with a 5- or 6-channel output."""

    def __init__(self, in_channels: int = 3, mode: Literal["5ch", "6ch"] = "6ch", depth: int = 2,
                 base_channels: int = 32, norm: str = "none", act: str = "elu") -> None:
        super().__init__()
        self.out_channels = 5 if mode == "5ch" else 6
        self.unet = UNet(2, in_channels, self.out_channels, depth=depth, base_channels=base_channels,
                         norm=norm, act=act)  # type: ignore[arg-type]
        nn.init.constant_(self.unet.head.bias[:1], P_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.unet(x))

    @staticmethod
    def decode_output(out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split an output map into named components (``p``, ``photons``, ``xyz``, optional ``bg``)."""
        d = {"p": out[:, 0], "photons": out[:, 1], "xyz": out[:, 2:5]}
        if out.shape[1] == 6:
            d["bg"] = out[:, 5]
        return d


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018): a 7x7 conv on channel mean and max -> sigmoid gate."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(s))


class MultiscaleFusion(nn.Module):
    """Features average-pooled at scales 1, 2, 4, convolved, upsampled back and fused by a 1x1 conv."""

    def __init__(self, channels: int, scales: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.scales = scales
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in scales])
        self.fuse = nn.Conv2d(channels * len(scales), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        outs = []
        for s, conv in zip(self.scales, self.convs):
            y = F.avg_pool2d(x, s, ceil_mode=True) if s > 1 else x
            y = F.elu(conv(y))
            if s > 1:
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            outs.append(y)
        return x + self.fuse(torch.cat(outs, 1))


class EnhancedSimpleSMLMNet(nn.Module):
    """SimpleSMLMNet with multiscale feature fusion and spatial attention before the output head."""

    def __init__(self, in_channels: int = 3, mode: Literal["5ch", "6ch"] = "6ch", depth: int = 2,
                 base_channels: int = 32, norm: str = "none", act: str = "elu") -> None:
        super().__init__()
        self.out_channels = 5 if mode == "5ch" else 6
        self.unet = UNet(2, in_channels, None, depth=depth, base_channels=base_channels, norm=norm, act=act)  # type: ignore[arg-type]
        self.fusion = MultiscaleFusion(base_channels)
        self.attention = SpatialAttention()
        self.head = nn.Conv2d(base_channels, self.out_channels, 1)
        nn.init.constant_(self.head.bias[:1], P_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.head(self.attention(self.fusion(self.unet(x)))))


class DoubleMUnet(nn.Module):
    """DECODE's double U-Net: a shared U-Net applied to every frame of the window, the per-frame
    features concatenated and fused by a union U-Net.

    :meth:`frame_features` and :meth:`from_features` split the forward pass so that a movie is
    encoded once per frame and each window reuses the cached features (predict does this).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 6, depth_shared: int = 2, depth_union: int = 2,
                 initial_features: int = 48, inter_features: int = 48, norm: str = "none", act: str = "elu",
                 activation: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.inter_features = inter_features
        self.activation = activation
        self.shared_unet = UNet(2, 1, inter_features, depth=depth_shared, base_channels=initial_features,
                                norm=norm, act=act)  # type: ignore[arg-type]
        self.union_unet = UNet(2, in_channels * inter_features, out_channels, depth=depth_union,
                               base_channels=initial_features, norm=norm, act=act)  # type: ignore[arg-type]
        if activation:
            nn.init.constant_(self.union_unet.head.bias[:1], P_BIAS)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, H, W]`` frames -> ``[B, T, inter_features, H, W]`` shared features (frames batched)."""
        b, t, h, w = frames.shape
        f = F.elu(self.shared_unet(frames.reshape(b * t, 1, h, w)))
        return f.view(b, t, self.inter_features, h, w)

    def union_features(self, feats: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = feats.shape
        return self.union_unet(feats.reshape(b, t * c, h, w))

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.union_features(feats)
        return activate(out) if self.activation else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.frame_features(x))


class SigmaMUNet(DoubleMUnet):
    """DoubleMUnet with DECODE's 10 outputs: p; photons, x, y, z means; their sigmas; background.

    With ``use_separate_heads`` the union U-Net emits features and four heads (conv 3x3 + ELU +
    conv 1x1) predict p (1), means (4), sigmas (4) and background (1).
    """

    def __init__(self, in_channels: int = 3, depth_shared: int = 2, depth_union: int = 2, initial_features: int = 48,
                 inter_features: int = 48, norm: str = "none", act: str = "elu", use_separate_heads: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__(in_channels, inter_features if use_separate_heads else 10, depth_shared, depth_union,
                         initial_features, inter_features, norm, act, activation=False)
        self.use_separate_heads = use_separate_heads
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        if use_separate_heads:
            def head(n: int) -> nn.Sequential:
                return nn.Sequential(nn.Conv2d(inter_features, inter_features, 3, padding=1), nn.ELU(),
                                     nn.Conv2d(inter_features, n, 1))
            self.p_head, self.phot_xyz_mu_head, self.phot_xyz_sig_head, self.bg_head = head(1), head(4), head(4), head(1)
            nn.init.constant_(self.p_head[-1].bias, P_BIAS)
        else:
            nn.init.constant_(self.union_unet.head.bias[:1], P_BIAS)
        self.out_channels = 10

    def heads(self, u: torch.Tensor) -> torch.Tensor:
        """Union U-Net output ``[B, C, H, W]`` -> the 10 activated maps. Dropout (MC dropout's only
        random layer) sits here, after the deterministic U-Nets, so Monte-Carlo sampling repeats
        only this part."""
        if self.use_separate_heads:
            u = self.dropout(F.elu(u))
            if self.training or not u.is_cuda:
                # on the CPU the head modules stay visible to run_batched's memory estimate (hooks)
                u = torch.cat([self.p_head(u), self.phot_xyz_mu_head(u), self.phot_xyz_sig_head(u), self.bg_head(u)], 1)
            else:
                u = self._fused_heads(u)
        else:
            u = self.dropout(u)
        return activate(u)

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.heads(self.union_features(feats))

    def _fused_heads(self, u: torch.Tensor) -> torch.Tensor:
        """The four heads as one 3x3 convolution (their weights stacked) and one block-diagonal
        1x1 convolution: the same function, but one wide GEMM instead of four 48-column ones."""
        hs = (self.p_head, self.phot_xyz_mu_head, self.phot_xyz_sig_head, self.bg_head)
        w1 = torch.cat([h[0].weight for h in hs])
        b1 = torch.cat([h[0].bias for h in hs])
        z = F.elu(F.conv2d(u, w1, b1, padding=1))
        w2 = torch.block_diag(*[h[2].weight[:, :, 0, 0] for h in hs])[:, :, None, None]
        b2 = torch.cat([h[2].bias for h in hs])
        return F.conv2d(z, w2, b2)


class SigmaMUNetWithUncertainty(SigmaMUNet):
    """SigmaMUNet with dropout before the heads, used at inference as Monte-Carlo dropout
    (Gal & Ghahramani, ICML 2016): :meth:`mc_predict` averages ``n_samples`` stochastic passes and
    returns the spread of each channel as epistemic uncertainty."""

    def __init__(self, *args: object, dropout: float = 0.1, mc_samples: int = 8, **kwargs: object) -> None:
        super().__init__(*args, dropout=dropout, **kwargs)  # type: ignore[arg-type]
        self.mc_samples = mc_samples

    def sample_heads(self, u: torch.Tensor, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the heads over ``n_samples`` dropout masks, for union
        U-Net output ``u`` ``[B, C, H, W]``: the copies run as one batch, dropout sampling, the
        rest of the network in its current mode."""
        b = u.shape[0]
        reps = u.expand(n_samples, *u.shape).reshape(n_samples * b, *u.shape[1:])
        drops = [m for m in self.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        was = [m.training for m in drops]
        for m in drops:
            m.train()
        try:
            outs = self.heads(reps).float()
        finally:
            for m, w in zip(drops, was, strict=True):
                m.train(w)
        std, mean = torch.std_mean(outs.view(n_samples, b, *outs.shape[1:]), dim=0)
        return mean, std

    @torch.no_grad()
    def mc_predict(self, x: torch.Tensor, n_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation over ``n_samples`` passes with dropout on (the U-Nets run
        once; only the heads are sampled)."""
        was = self.training
        self.eval()
        try:
            return self.sample_heads(self.union_features(self.frame_features(x)), n_samples or self.mc_samples)
        finally:
            self.train(was)


def build_model(cfg: object) -> nn.Module:
    """The network named by ``cfg.model.name`` with the window as input channels."""
    m = cfg.model  # type: ignore[attr-defined]
    cin = cfg.simulate.window  # type: ignore[attr-defined]
    if m.name == "SimpleSMLMNet":
        return SimpleSMLMNet(cin, m.mode, m.depth, m.initial_features, m.norm, m.act)
    if m.name == "EnhancedSimpleSMLMNet":
        return EnhancedSimpleSMLMNet(cin, m.mode, m.depth, m.initial_features, m.norm, m.act)
    if m.name == "DoubleMUnet":
        return DoubleMUnet(cin, 5 if m.mode == "5ch" else 6, m.depth_shared, m.depth_union, m.initial_features,
                           m.inter_features, m.norm, m.act)
    if m.name == "SigmaMUNet":
        return SigmaMUNet(cin, m.depth_shared, m.depth_union, m.initial_features, m.inter_features, m.norm, m.act,
                          m.use_separate_heads)
    return SigmaMUNetWithUncertainty(cin, m.depth_shared, m.depth_union, m.initial_features, m.inter_features,
                                     m.norm, m.act, m.use_separate_heads, dropout=m.dropout)
