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

``neurotrain export CKPT -o det.onnx`` of a detection checkpoint reaches :func:`export_detection_for_deploy`
through ``VisionTask.export_model``: the size is fixed from the config (``predict.export_size``, else
``data_source.size``), the check images are validation images resized to it when the data is there (random
images otherwise), and the sidecar ``det.json`` says how to resize an image, which threshold to apply and how
to scale the boxes back (``deploy.OnnxPredictor.detect`` does exactly that). int8 (dynamic, static, QAT) of a
detector is refused in one line: only fp32 exports.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.errors import ConfigError, NeurotrainError, NotAvailableError
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
                    opset: int = DETECTOR_OPSET, atol: float = BOX_ATOL_PX, seed: int = 0,
                    images: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Export ``model`` (a torchvision detector) for (1, ``in_channels``, H, W) images to ``path``; returns the
    check on ``images`` ((1, C, H, W) each; default two random images; the first is the one traced) with
    ``compare``'s keys per image under ``checks``. Raises :class:`ExportError` (nothing written) when the
    exporter fails or the ONNX boxes differ from torch's by more than ``atol`` px."""
    path = Path(path)
    was_training = model.training
    wrapper = DetectorOnnx(model.cpu()).eval()
    gen = torch.Generator().manual_seed(seed)
    xs = list(images) if images else [torch.rand(1, in_channels, *image_size, generator=gen) for _ in range(2)]
    try:
        with torch.no_grad():
            refs = [wrapper(x) for x in xs]
        with atomic_path(path) as tmp:
            try:
                with warnings.catch_warnings():
                    # the tracer's notes on torchvision's size arithmetic: the size is fixed by design here
                    warnings.simplefilter("ignore")
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


# --------------------------------------------------------------------------- neurotrain export (Task hook)


def detection_export_size(cfg: Any) -> tuple[int, int]:
    """The fixed (H, W) of a detector's ONNX graph: ``predict.export_size``, else ``data_source.size``."""
    if cfg.predict.export_size is not None:
        return tuple(int(v) for v in cfg.predict.export_size)  # type: ignore[return-value]
    if cfg.primary_source.size is not None:
        return tuple(int(v) for v in cfg.primary_source.size)  # type: ignore[return-value]
    raise ConfigError("predict.export_size: expected the fixed [H, W] a detector's ONNX graph takes (got none, "
                      "and data_source.size is not set either): add --set predict.export_size=[H,W]")


def refuse_int8(cfg: Any) -> None:
    """One line when the export section asks for int8 of a detector (not available: only fp32 is exported)."""
    s = cfg.export
    if s.qat or s.quantize != "none":
        which = "quantisation-aware training" if s.qat else f"{s.quantize} int8"
        raise NotAvailableError(f"neurotrain export: {which} of a detector is not available yet (only fp32 is "
                                "exported and checked): drop --quantize/--static/--qat (export.quantize: none, "
                                "export.qat: false)")


def check_images(cfg: Any, size: tuple[int, int], n: int) -> tuple[list[torch.Tensor], str]:
    """Up to ``n`` images of the validation split resized (bilinear) to ``size``, each (1, C, H, W) in [0, 1],
    and where they came from; none, and why, when the config's data cannot be read here."""
    from neurotrain.registry import TASKS
    from neurotrain.tasks.vision.augment import to_float_batch

    try:
        batches = TASKS.get("vision").calibration_batches(cfg, n, "val")
    except (NeurotrainError, OSError) as exc:
        return [], f"no validation data to check on ({str(exc).splitlines()[0]}): checked on random images"
    out: list[torch.Tensor] = []
    for b in batches:
        imgs = to_float_batch(b)["image"]
        for im in imgs if isinstance(imgs, (list, tuple)) else list(imgs):
            if len(out) < n:
                out.append(resize_image(im.float(), size)[None])
    if not out:
        return [], "no validation images to check on: checked on random images"
    return out, f"{len(out)} validation images resized to {size[0]}x{size[1]}"


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H0, W0) -> (C, H, W), bilinear (align_corners False, no antialias), as the sidecar tells a user."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def detection_sidecar(cfg: Any, path: Path, size: tuple[int, int]) -> dict[str, Any]:
    """The sidecar of a detector: input, resize, value scaling and channels (``deploy.vision_export_metadata``'s
    preprocess), the score threshold and how boxes map back to the original image."""
    from neurotrain.export_report import SIDECAR_FORMAT
    from neurotrain.tasks.vision.deploy import vision_export_metadata

    meta = vision_export_metadata(cfg)
    pre = dict(meta["preprocess"], train_size=list(size),
               resize={"size": list(size), "mode": "bilinear", "align_corners": False, "antialias": False})
    return {
        "format": SIDECAR_FORMAT, "task": cfg.task, "model": path.name, "precision": "fp32",
        "inputs": [{"name": "image", "shape": [1, cfg.in_channels, *size], "dtype": "float32"}],
        "outputs": list(OUTPUT_NAMES),
        "kind": "detection", "spatial_dims": 2, "classes": meta["classes"],
        "preprocess": pre,
        "postprocess": {
            "score_threshold": cfg.postprocess.score_threshold,  # keep detections scoring at least this
            "boxes": "xyxy, pixels of the resized input: x * W0 / W and y * H0 / H give the original image's",
            "labels": "class index into classes (0, the background, is never output)",
        },
    }


def export_detection_for_deploy(cfg: Any, model: nn.Module, path: str | Path, *, opset: int, atol: float) -> Any:
    """``neurotrain export`` of a detection checkpoint: fp32 ONNX for one image of the configured size, checked
    against PyTorch (boxes within ``max(atol, BOX_ATOL_PX)`` px), its sidecar, the CPU latency and the report
    file; returns an ``export_report.DeployReport`` (what the CLI prints)."""
    import statistics
    import time

    from neurotrain.export import ExportReport
    from neurotrain.export_report import (
        DeployReport, ModelRow, _session, onnx_file_bytes, report_path_for, sidecar_path, write_json)

    refuse_int8(cfg)
    size = detection_export_size(cfg)
    path = Path(path)
    s = cfg.export
    images, source = check_images(cfg, size, max(2, s.report_batches))
    tol = max(atol, BOX_ATOL_PX)
    res = export_detector(model, path, size, cfg.in_channels, opset=max(opset, 11), atol=tol, seed=cfg.seed,
                          images=images or None)
    checks = res["checks"]
    worst = max(c["max_box_error_px"] for c in checks)
    notes = [] if images else [source]
    if not images:
        source = f"{len(checks)} random images"
    notes += [f"detections per check image, torch / onnx: {[(c['n_torch'], c['n_onnx']) for c in checks]}",
              f"largest score difference {max(c['max_score_error'] for c in checks):.3g}; labels equal"]
    rep = ExportReport(path=path, exporter="torchscript", opset=res["opset"], input_names=["image"],
                       output_names=list(OUTPUT_NAMES), dynamic_batch=False, file_bytes=onnx_file_bytes(path),
                       max_abs_error=worst, atol=tol,
                       notes=[f"detector: one {size[0]}x{size[1]} image per run; boxes in px (max |diff| above)"])
    sess = _session(path, s.latency_threads)
    feed = {"image": (images[0] if images else torch.rand(1, cfg.in_channels, *size)).numpy()}
    for _ in range(s.latency_warmup):
        sess.run(None, feed)
    times = []
    for _ in range(s.latency_repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    row = ModelRow(name="fp32", path=path, file_bytes=rep.file_bytes, latency_ms=1e3 * statistics.median(times),
                   latency_batch=1, max_abs_error=worst)
    sidecars = [write_json(sidecar_path(path), detection_sidecar(cfg, path, size))] if s.sidecar else []
    report = DeployReport(export=rep, rows=[row], scored_on=f"{source} (ONNX boxes against PyTorch's)",
                          sidecars=sidecars, notes=notes)
    report.report_path = write_json(report_path_for(path), report.to_dict())
    return report
