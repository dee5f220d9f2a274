"""ONNX export of torchvision detectors (Faster R-CNN, RetinaNet) for one image of a fixed size.

torchvision's detectors take a *list* of images and return a list of dicts, with a data-dependent number of
boxes per image; ``neurotrain export`` (``export_report.export_for_deploy``) exports tensor-in/tensor-out networks
with a dynamic batch axis, so detection goes through :func:`export_detector` instead:

* :class:`DetectorOnnx` wraps the detector: input ``image`` float32 (1, C, H, W) in [0, 1] (the size fixed at
  export: torchvision's transform resizes to ``min_size`` / ``max_size`` and normalises inside the graph),
  outputs ``boxes`` (K, 4) xyxy in input pixels, ``scores`` (K,), ``labels`` (K,) int64, K <= the detector's
  ``detections_per_img``; boxes below the detector's own ``score_thresh`` are already gone, the config's
  ``postprocess.score_threshold`` is applied by the caller as ``predict`` does.
* The graph is traced (TorchScript exporter, opset >= 11: torchvision registers ONNX forms of ``nms`` and
  ``roi_align``), checked in onnxruntime against PyTorch on the traced image and on a second image, and
  published with one atomic rename; a check over ``atol`` writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.export import ExportError
from neurotrain.io.atomic import atomic_path

OUTPUT_NAMES = ["boxes", "scores", "labels"]
DETECTOR_OPSET = 17
BOX_ATOL_PX = 1e-3  # largest |onnxruntime - torch| box coordinate accepted, pixels


class DetectorOnnx(nn.Module):
    """One image (1, C, H, W) -> (boxes, scores, labels) of a torchvision detector in eval mode."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def _ort_outputs(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(OUTPUT_NAMES, {"image": x.numpy()})


def compare(ref: tuple[torch.Tensor, ...], got: list[np.ndarray]) -> dict[str, Any]:
    """Box count, largest box-coordinate and score differences and label agreement of ONNX vs torch outputs,
    both sides put in one order first (label, score, then coordinates): detections of equal score may come out
    of the top-k selection in either order."""
    boxes, scores, labels = (t.detach().numpy() for t in ref)
    if got[0].shape != boxes.shape:
        return {"n_torch": len(boxes), "n_onnx": len(got[0]), "max_box_error_px": float("inf"),
                "max_score_error": float("inf"), "labels_equal": False}

    def order(b: np.ndarray, s: np.ndarray, lab: np.ndarray) -> np.ndarray:
        return np.lexsort((*np.round(b, 3).T[::-1], np.round(s, 5), lab))

    a, o = order(boxes, scores, labels), order(got[0], got[1], got[2])
    boxes, scores, labels = boxes[a], scores[a], labels[a]
    got = [got[0][o], got[1][o], got[2][o]]
    return {"n_torch": len(boxes), "n_onnx": len(got[0]),
            "max_box_error_px": float(np.abs(got[0] - boxes).max(initial=0.0)),
            "max_score_error": float(np.abs(got[1] - scores).max(initial=0.0)),
            "labels_equal": bool(np.array_equal(got[2], labels))}


def export_detector(model: nn.Module, path: str | Path, image_size: tuple[int, int], in_channels: int = 3, *,
                    opset: int = DETECTOR_OPSET, atol: float = BOX_ATOL_PX, seed: int = 0) -> dict[str, Any]:
    """Export ``model`` (a torchvision detector) for (1, ``in_channels``, H, W) images to ``path``; returns the
    check on two random images (``compare``'s keys per image, under ``checks``). Raises :class:`ExportError`
    (nothing written) when the exporter fails or the ONNX boxes differ from torch's by more than ``atol`` px."""
    path = Path(path)
    was_training = model.training
    wrapper = DetectorOnnx(model.cpu()).eval()
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.rand(1, in_channels, *image_size, generator=gen) for _ in range(2)]
    try:
        with torch.no_grad():
            refs = [wrapper(x) for x in xs]
        with atomic_path(path) as tmp:
            try:
                torch.onnx.export(wrapper, (xs[0],), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["image"], output_names=OUTPUT_NAMES, do_constant_folding=True,
                                  dynamic_axes={n: {0: "detections"} for n in OUTPUT_NAMES})
            except Exception as exc:  # noqa: BLE001 - any exporter failure is one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ExportError(f"{path}: torch.onnx export of the detector failed: {first}") from exc
            checks = [compare(r, _ort_outputs(tmp, x)) for r, x in zip(refs, xs, strict=True)]
            worst = max(c["max_box_error_px"] for c in checks)
            if not worst <= atol or not all(c["labels_equal"] for c in checks):
                raise ExportError(f"{path}: ONNX detections differ from PyTorch (largest box difference {worst:.3g} px, "
                                  f"atol {atol:g}; boxes {[(c['n_torch'], c['n_onnx']) for c in checks]}); nothing written")
    finally:
        model.train(was_training)
    return {"path": str(path), "image_size": list(image_size), "opset": opset, "checks": checks}
