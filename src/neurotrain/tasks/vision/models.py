"""Vision networks by name, through ``neurotrain.registry.MODELS``.

Every factory is called as ``factory(in_channels=, num_classes=, spatial_dims=, **kwargs)`` and returns an
``nn.Module`` with random weights: nothing is ever downloaded (torchvision ``weights=None``, timm
``pretrained=False``). Weights a user has on disk come in through ``pretrained_path`` (:func:`load_pretrained`).

Names:

* segmentation: ``unet`` (``neurotrain.nn.unet.UNet``, Ronneberger 2015), ``monai:UNet``, ``monai:BasicUNet``,
  ``monai:SegResNet``, ``monai:AttentionUnet``, ``monai:SwinUNETR``;
* classification: ``simplenet`` (the seed's small example CNN), ``tv:<torchvision classifier>``
  (``tv:resnet18``, ``tv:mobilenet_v3_small``, ...), ``timm:<timm model>`` (``timm:resnet18``, ...);
* detection: ``tv:fasterrcnn_resnet50_fpn``, ``tv:fasterrcnn_mobilenet_v3_large_fpn``,
  ``tv:retinanet_resnet50_fpn`` (``num_classes`` counts the background as class 0, as torchvision and the
  segmentation masks do: object labels are 1..num_classes-1).

Segmentation models return logits ``(B, num_classes, *spatial)``, classifiers ``(B, num_classes)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurotrain.errors import ConfigError, UnknownNameError
from neurotrain.registry import MODELS

SEGMENTATION = ("unet", "monai:UNet", "monai:BasicUNet", "monai:SegResNet", "monai:AttentionUnet", "monai:SwinUNETR")
DETECTION = ("tv:fasterrcnn_resnet50_fpn", "tv:fasterrcnn_mobilenet_v3_large_fpn", "tv:retinanet_resnet50_fpn")
#: torchvision classifiers registered by name; any other one in ``torchvision.models.list_models`` works too
TV_CLASSIFIERS = ("tv:resnet18", "tv:resnet34", "tv:resnet50", "tv:mobilenet_v3_small", "tv:efficientnet_b0",
                  "tv:convnext_tiny", "tv:densenet121", "tv:vgg11_bn")
TIMM_CLASSIFIERS = ("timm:resnet18", "timm:resnet50", "timm:efficientnet_b0", "timm:convnext_tiny",
                    "timm:vit_tiny_patch16_224")


# --------------------------------------------------------------------------- segmentation


#: ``model.kwargs.layout`` of ``unet``: "lean" (the default since the 512 px speed work) runs every level at half
#: resolution with strided down-sampling and channel-halving up-convolutions (``neurotrain.nn.unet`` docstring:
#: about 4x fewer FLOPs than "classic" at the same widths, like MONAI's UNet); "classic" is Ronneberger's layout
#: with full-resolution features, and the layout of every vision checkpoint written before "lean" existed.
UNET_LAYOUTS: dict[str, dict[str, Any]] = {
    "classic": {"stem_stride": 1, "down": "maxpool", "upsample": "interp", "up_channels": "same"},
    "lean": {"stem_stride": 2, "down": "stride", "upsample": "transpose", "up_channels": "skip"},
}


@MODELS.register("unet")
def _unet(*, in_channels: int, num_classes: int, spatial_dims: int = 2, depth: int = 3, base_channels: int = 16,
          norm: str = "batch", act: str = "relu", layout: str = "lean", dropout: float = 0.0,
          **options: Any) -> nn.Module:
    """``layout`` picks the preset; ``stem_stride``, ``down``, ``upsample``, ``up_channels`` override its entries."""
    from neurotrain.nn.unet import UNet

    if layout not in UNET_LAYOUTS:
        raise ConfigError(f"config error: model.kwargs.layout: expected one of {sorted(UNET_LAYOUTS)} (got {layout!r})")
    unknown = sorted(set(options) - set(UNET_LAYOUTS[layout]))
    if unknown:
        raise ConfigError(f"config error: model.kwargs: unet does not take {unknown}")
    arch = {**UNET_LAYOUTS[layout], **options}
    net = UNet(spatial_dims, in_channels, num_classes, depth=depth, base_channels=base_channels, norm=norm,  # type: ignore[arg-type]
               act=act, dropout=dropout, **arch)  # type: ignore[arg-type]
    net.register_load_state_dict_pre_hook(_classic_weights_hint)
    return net


def _classic_weights_hint(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Weights of the full-resolution (classic) layout offered to a lean U-Net: say how to load them, in one line
    (``load_state_dict`` would list every mismatching tensor)."""
    if getattr(module, "stem_up", None) is not None and f"{prefix}enc.0.0.weight" in state_dict \
            and f"{prefix}stem_up.weight" not in state_dict:
        raise RuntimeError("these are weights of the classic (full-resolution) U-Net, written before the lean "
                           "layout became the default: load them with --set model.kwargs.layout=classic")


def _monai(cls_name: str) -> Any:
    def factory(*, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
        import monai.networks.nets as nets

        cls = getattr(nets, cls_name)
        if cls_name == "SwinUNETR" and importlib.util.find_spec("einops") is None:
            # MONAI imports einops lazily, inside forward(): fail at build time instead of mid-epoch
            raise ConfigError("config error: model.name: monai:SwinUNETR needs the einops package (pip install einops)")
        if cls_name in ("UNet", "AttentionUnet"):
            kwargs.setdefault("channels", (16, 32, 64, 128))
            kwargs.setdefault("strides", (2, 2, 2))
        return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)

    factory.__name__ = f"monai_{cls_name}"
    return factory


for _n in SEGMENTATION[1:]:
    MODELS.register(_n)(_monai(_n.split(":", 1)[1]))


# --------------------------------------------------------------------------- classification


class SimpleNet(nn.Module):
    """The seed's small example classifier: ``depth`` x (conv 3x3, BN, ReLU, 2x max-pool), global average pool,
    linear head. About 25 k parameters at ``width`` 16, depth 3: trains on a CPU in seconds."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            w = width * 2**i
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3), keepdim=True))


@MODELS.register("simplenet")
def _simplenet(*, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    _need_2d("simplenet", spatial_dims)
    return SimpleNet(in_channels, num_classes, **kwargs)


class ChannelAdapter(nn.Module):
    """Feeds a ``in_channels`` image to a 3-channel backbone: a grey channel is repeated (what an RGB backbone
    sees for a grey photograph); other counts go through a learned 1x1 convolution."""

    def __init__(self, in_channels: int, net: nn.Module) -> None:
        super().__init__()
        self.proj = None if in_channels == 1 else nn.Conv2d(in_channels, 3, 1)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, *x.shape[2:]) if self.proj is None else self.proj(x)
        return self.net(x)


def _need_2d(name: str, spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ConfigError(f"config error: model.name: {name} takes 2D images (got spatial_dims={spatial_dims})")


def _torchvision_classifier(arch: str, *, in_channels: int, num_classes: int, spatial_dims: int = 2,
                            **kwargs: Any) -> nn.Module:
    import torchvision

    _need_2d(f"tv:{arch}", spatial_dims)
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise UnknownNameError(f"unknown model 'tv:{arch}' (not a torchvision classifier; known: {', '.join(model_names())})")
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return net if in_channels == 3 else ChannelAdapter(in_channels, net)


def _timm_classifier(arch: str, *, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    import timm

    _need_2d(f"timm:{arch}", spatial_dims)
    if not timm.is_model(arch):
        raise UnknownNameError(f"unknown model 'timm:{arch}' (not a timm model; known: {', '.join(model_names())})")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


for _n in TV_CLASSIFIERS:
    MODELS.register(_n)(lambda _a=_n.split(":", 1)[1], **kw: _torchvision_classifier(_a, **kw))
for _n in TIMM_CLASSIFIERS:
    MODELS.register(_n)(lambda _a=_n.split(":", 1)[1], **kw: _timm_classifier(_a, **kw))


# --------------------------------------------------------------------------- detection


def _detector(arch: str) -> Any:
    def factory(*, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
        import torchvision.models.detection as det

        _need_2d(f"tv:{arch}", spatial_dims)
        if in_channels != 3:
            # the detectors normalise with 3 ImageNet means/stds; other channel counts get their own, and the
            # backbone's first convolution is rebuilt for them below
            kwargs.setdefault("image_mean", [0.5] * in_channels)
            kwargs.setdefault("image_std", [0.25] * in_channels)
        net = getattr(det, arch)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            _replace_first_conv(net, in_channels)
        return net

    factory.__name__ = arch
    return factory


def _replace_first_conv(net: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel convolution of a detector's backbone for one taking ``in_channels``."""
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, bias=mod.bias is not None)
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


for _n in DETECTION:
    MODELS.register(_n)(_detector(_n.split(":", 1)[1]))


# --------------------------------------------------------------------------- building


def model_names() -> list[str]:
    """Registered vision model names, plus the open-ended ``tv:<name>`` / ``timm:<name>`` families."""
    own = [n for n in MODELS.names() if n in SEGMENTATION + DETECTION + TV_CLASSIFIERS + TIMM_CLASSIFIERS
           or n == "simplenet"]
    return own + ["tv:<any torchvision classifier>", "timm:<any timm model>"]


def create_model(name: str, *, in_channels: int, num_classes: int, spatial_dims: int = 2,
                 kwargs: dict[str, Any] | None = None, pretrained_path: Path | None = None,
                 pretrained_strict: bool = False) -> nn.Module:
    """Build the named network with random weights, then load ``pretrained_path`` if given.

    ``name`` is a registered name or ``tv:<arch>`` / ``timm:<arch>`` for any classifier of those libraries.
    Unknown names raise :class:`UnknownNameError` listing the known ones.
    """
    kw = dict(kwargs or {})
    common = dict(in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims)
    if name in MODELS:
        factory = MODELS.get(name)
        try:
            net = factory(**common, **kw)
        except TypeError as exc:
            raise ConfigError(f"config error: model.kwargs: {name} rejects them ({exc})") from None
    elif name.startswith("tv:"):
        net = _torchvision_classifier(name[3:], **common, **kw)
    elif name.startswith("timm:"):
        net = _timm_classifier(name[5:], **common, **kw)
    else:
        raise UnknownNameError(f"unknown model {name!r} (known: {', '.join(model_names())})")
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, strict=pretrained_strict)
    return net


def load_pretrained(net: nn.Module, path: str | Path, strict: bool = False) -> dict[str, list[str]]:
    """Load a local state dict (a plain ``state_dict``, a ``{"state_dict": ...}`` file or a neurotrain
    checkpoint, whose ``model.`` prefix is dropped) into ``net``. Never downloads anything.

    With ``strict`` False, entries whose name or shape does not fit (a classifier head of another class count)
    are skipped and returned as ``{"loaded", "skipped", "missing"}``; if none fits it is an error.
    """
    from neurotrain.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model.pretrained_path: expected a local state-dict file (not found)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise CheckpointError(f"{path}: model.pretrained_path: not a readable state dict ({type(exc).__name__})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: model.pretrained_path: expected a state dict (got {type(obj).__name__})")
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    own = net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = sorted(set(state) - set(fits))
    if strict and (skipped or set(own) - set(fits)):
        raise CheckpointError(
            f"{path}: model.pretrained_path: expected weights matching the model (got {len(skipped)} unfit, "
            f"{len(set(own) - set(fits))} missing; first: {(skipped or sorted(set(own) - set(fits)))[0]})"
        )
    if not fits:
        raise CheckpointError(f"{path}: model.pretrained_path: expected weights for this model (no entry fits)")
    net.load_state_dict(fits, strict=False)
    return {"loaded": sorted(fits), "skipped": skipped, "missing": sorted(set(own) - set(fits))}
