"""Deploying a vision model: what travels with the ONNX file, and a predictor that applies it.

``neurotrain export`` writes ``<name>.json`` next to ``<name>.onnx`` (the sidecar, ``export_report.py``); for
the vision task its task part comes from :func:`vision_export_metadata`: the kind, the class names, how an image
file becomes the network input (``preprocess``: channels, value scaling by pixel type, gray/alpha handling,
mean/std, the training size) and how the output becomes masks or labels (``postprocess``: softmax over axis 1,
the binary threshold or argmax, test-time flips, morphological open/close with a disk, minimum component size,
the sliding window). :class:`OnnxPredictor` reads that file and reproduces ``neurotrain predict``: the ONNX
session stands in for the network and the same post-processing functions (``postprocess.py``) run after it,
so masks and labels are identical to the PyTorch path wherever the fp32 ONNX logits are (onnxruntime and torch
differ by ~1e-6, which changes a pixel only if its probability lies that close to the threshold).

Hooks the vision ``Task`` calls: :func:`vision_export_inputs` (the network input is ``batch["image"]``),
:func:`vision_export_metadata` and :func:`vision_export_dynamic_spatial` (segmentation networks are fully
convolutional and are exported with dynamic height/width, as ``predict`` runs whole images of any size).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from neurotrain.errors import DataError

SIDECAR_KIND = "neurotrain-vision"
VALUE_SCALING = {"uint8": 255.0, "uint16": 65535.0, "bool": 1.0, "float": 1.0}
"""Pixel value -> [0, 1]: integer images are divided by their type's full range (other integer types: mapped
from [min, max] of the type), float images are used as stored (``dataset_base.to_unit_float``)."""


# --------------------------------------------------------------------------- task hooks


def vision_export_inputs(cfg: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The network input of a vision batch: ``batch["image"]`` (B, C, H, W) or (B, C, D, H, W), float in [0, 1]
    (a cached loader's uint8 images are scaled as ``VisionTask.on_batch`` does)."""
    from neurotrain.tasks.vision.augment import to_float_batch

    return (to_float_batch(batch)["image"],)


def vision_export_dynamic_spatial(cfg: Any) -> bool:
    """Segmentation networks run on whole images of any size: export them with dynamic spatial axes."""
    return cfg.task_kind == "segmentation"


def vision_export_metadata(cfg: Any) -> dict[str, Any]:
    """The vision part of the sidecar JSON: plain data, read by :class:`OnnxPredictor` (and by anyone who
    deploys the ONNX file without neurotrain)."""
    from neurotrain.tasks.vision.dataset_base import LUMA
    from neurotrain.tasks.vision.predict import class_names
    from neurotrain.tasks.vision.task import example_size

    src = cfg.primary_source
    pp = cfg.postprocess
    c = cfg.in_channels
    mean = list(getattr(src, "mean", None) or [0.0] * c)  # the vision data side feeds [0, 1] images unnormalised
    std = list(getattr(src, "std", None) or [1.0] * c)
    return {
        "kind": cfg.task_kind,
        "spatial_dims": cfg.spatial_dims,
        "classes": class_names(cfg),
        "preprocess": {
            "layout": "NCHW" if cfg.spatial_dims == 2 else "NCDHW",
            "channels": c,
            "value_scaling": dict(VALUE_SCALING),
            "gray_to_rgb": "repeat" if c == 3 else None,
            "rgb_to_gray": list(LUMA) if src.convert_gray else None,
            "drop_alpha": True,
            "volume_percentiles": list(src.intensity_percentiles) if cfg.spatial_dims == 3 else None,
            "mean": mean,
            "std": std,
            "train_size": list(example_size(cfg)),
            "resize": False,  # predict runs each image at its own size (a classifier needs train_size inputs)
        },
        "postprocess": {
            "softmax_axis": 1,
            "threshold": pp.threshold,  # two classes: foreground where p(class 1) >= threshold, else argmax
            "tta_flips": pp.tta_flips,  # mean probabilities over the image and its flip along each axis
            "open_radius": pp.open_radius,  # binary opening with a disk of this radius (px), per class
            "close_radius": pp.close_radius,
            "min_size": pp.min_size,  # connected components (full connectivity) smaller than this -> background
            "instances": pp.instances,
            "min_distance": pp.min_distance,
        },
        "sliding_window": {
            "roi_size": list(cfg.predict.roi_size) if cfg.predict.roi_size else (
                list(cfg.patch.size) if cfg.spatial_dims == 3 and cfg.patch.enabled else None),
            "overlap": cfg.predict.sw_overlap,
            "batch_size": cfg.predict.sw_batch_size,
            "mode": "gaussian",
        },
    }


# --------------------------------------------------------------------------- the predictor


class OnnxPredictor:
    """An exported vision network with its sidecar: ``predict(image)`` -> mask (segmentation) or class index
    (classification), ``detect(image)`` -> boxes, scores and labels (detection), as ``neurotrain predict`` gives
    them.

    Args:
        onnx_path: the ``.onnx`` file (fp32 or int8); its sidecar is ``<stem>.json`` next to it.
        sidecar: another sidecar path.
        threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, onnx_path: str | Path, sidecar: str | Path | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        from neurotrain.export_report import sidecar_path

        self.path = Path(onnx_path)
        side = Path(sidecar) if sidecar is not None else sidecar_path(self.path)
        if not side.is_file():
            raise DataError(f"{side}: sidecar: expected the JSON written by neurotrain export (got no file)")
        try:
            self.meta: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{side}: sidecar: expected JSON (got a parse error at line {exc.lineno})") from None
        missing = [k for k in ("kind", "preprocess", "postprocess", "inputs") if k not in self.meta]
        if self.meta.get("task") != "vision" or missing:
            raise DataError(f"{side}: sidecar: expected a vision export with {missing or 'its keys'} "
                            f"(got task {self.meta.get('task')!r})")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads > 0:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.kind: str = self.meta["kind"]
        self.classes: list[str] = list(self.meta.get("classes") or [])

    # ---------------------------------------------------------------- steps
    def preprocess(self, image: np.ndarray, name: str = "<array>") -> np.ndarray:
        """An image as stored -> float32 network input (C, H, W) (2D: (H, W) or (H, W, C) array) or
        (C, D, H, W) (3D: a (D, H, W) or (C, D, H, W) volume, robust min-max per channel)."""
        pre = self.meta["preprocess"]
        arr = np.asarray(image)
        if self.meta.get("spatial_dims", 2) == 3:
            vol = (arr[None] if arr.ndim == 3 else arr).astype(np.float32)
            lo, hi = np.percentile(vol.reshape(vol.shape[0], -1), pre["volume_percentiles"], axis=1)
            shape = (-1,) + (1,) * (vol.ndim - 1)
            x = np.clip((vol - lo.reshape(shape)) / np.maximum(hi - lo, 1e-6).reshape(shape), 0, 1)
        else:
            x = self._channels(self._to_unit(arr, name), pre, name)
        mean = np.asarray(pre["mean"], np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        std = np.asarray(pre["std"], np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        return np.ascontiguousarray(((x - mean) / std).astype(np.float32))

    def _to_unit(self, arr: np.ndarray, name: str) -> np.ndarray:
        scale = self.meta["preprocess"]["value_scaling"]
        if arr.dtype == np.bool_:
            return arr.astype(np.float32) / scale["bool"]
        if arr.dtype in (np.uint8, np.uint16):
            return arr.astype(np.float32) / np.float32(scale[str(arr.dtype)])
        if np.issubdtype(arr.dtype, np.floating):
            return arr.astype(np.float32) / np.float32(scale["float"])
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(arr.dtype)
            return ((arr.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
        raise DataError(f"{name}: pixel type: expected integer or float pixels (got {arr.dtype})")

    @staticmethod
    def _channels(img: np.ndarray, pre: dict[str, Any], name: str) -> np.ndarray:
        want = int(pre["channels"])
        img = img[:, :, None] if img.ndim == 2 else img
        if img.ndim != 3:
            raise DataError(f"{name}: image shape: expected (H, W) or (H, W, C) (got {tuple(img.shape)})")
        c = img.shape[2]
        if pre.get("drop_alpha", True) and c in (2, 4) and want != c:
            img, c = img[:, :, : c - 1], c - 1
        if c != want:
            if c == 1 and want == 3:
                img = np.repeat(img, 3, axis=2)
            elif c == 3 and want == 1 and pre.get("rgb_to_gray"):
                img = (img * np.asarray(pre["rgb_to_gray"], dtype=np.float32)).sum(axis=2, keepdims=True)
            else:
                raise DataError(f"{name}: channels: expected {want} (got {c})")
        return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy())})[0]
        return torch.from_numpy(out).float()

    def probabilities(self, x: np.ndarray) -> torch.Tensor:
        """Class probabilities for network inputs ``(B, C, *S)``: softmax over axis 1; segmentation with the
        sidecar's test-time flips and, for inputs larger than its ``roi_size``, the Gaussian sliding window."""
        from neurotrain.tasks.vision.postprocess import flip_tta

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.kind != "segmentation":
            return self._net(t).softmax(1)
        tta = bool(self.meta["postprocess"].get("tta_flips", False))

        def fn(v: torch.Tensor) -> torch.Tensor:
            return flip_tta(self._net, v, tta)

        sw = self.meta.get("sliding_window") or {}
        roi = sw.get("roi_size")
        if roi and any(s > r for s, r in zip(t.shape[2:], roi)):
            from monai.inferers import sliding_window_inference

            with torch.inference_mode():
                return sliding_window_inference(t, list(roi), int(sw.get("batch_size", 4)), fn,
                                                overlap=float(sw.get("overlap", 0.25)), mode="gaussian").float()
        return fn(t)

    def predict(self, image: np.ndarray) -> np.ndarray | int:
        """One image as stored (an array read from its file) -> int64 mask (H, W) / (D, H, W) of class
        indices after the sidecar's post-processing, or the class index for a classifier."""
        probs = self.probabilities(self.preprocess(image)[None])
        if self.kind == "segmentation":
            from neurotrain.tasks.vision.postprocess import postprocess

            section = SimpleNamespace(**{k: self.meta["postprocess"][k]
                                         for k in ("threshold", "open_radius", "close_radius", "min_size")})
            return postprocess(probs, section)[0].numpy()
        if self.kind == "classification":
            return int(probs[0].argmax())
        raise DataError(f"{self.path}: kind: expected segmentation or classification (got {self.kind!r}; "
                        "a detector's boxes come from detect())")

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Detector: one image as stored -> ``boxes`` (K, 4) xyxy in the image's own pixels, ``scores`` (K,),
        ``labels`` (K,) int64, as ``neurotrain predict`` gives them: resized to the sidecar's size (bilinear),
        run, detections below ``postprocess.score_threshold`` dropped, boxes scaled back."""
        if self.kind != "detection":
            raise DataError(f"{self.path}: kind: expected detection for detect() (got {self.kind!r})")
        x = torch.from_numpy(self.preprocess(image))
        h0, w0 = x.shape[-2:]
        h, w = self.meta["preprocess"]["resize"]["size"]
        if (h0, w0) != (h, w):
            x = torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        boxes, scores, labels = self.session.run(["boxes", "scores", "labels"], {self.input_name: x[None].numpy()})
        keep = scores >= float(self.meta["postprocess"]["score_threshold"])
        scale = np.array([w0 / w, h0 / h, w0 / w, h0 / h], dtype=np.float32)
        return {"boxes": boxes[keep] * scale, "scores": scores[keep], "labels": labels[keep].astype(np.int64)}

    def label(self, image: np.ndarray) -> str:
        """Classifier: the class name of :meth:`predict`."""
        k = self.predict(image)
        return self.classes[int(k)] if self.classes else str(k)  # type: ignore[arg-type]
