"""``neurotrain predict`` for vision: one file or a folder -> masks (PNG/TIFF; NIfTI for volumes), a labels CSV
(classification) or a boxes CSV + JSON (detection). Every file is written under a temporary name and renamed.
Every input's header is read before any output is written: a bad file stops the run with one line naming it, or,
with ``data_source.on_bad_file: skip`` (``--set data_source.on_bad_file=skip``), is skipped, counted on the console
and listed with its reason in ``<out>/skipped.csv``.

Inference is memory-bounded: whole 2D images go through ``engine.inference.run_batched`` (batch size chosen to
fit ``inference.max_memory_gb``); images larger than ``predict.roi_size`` and 3D volumes go through MONAI's
``sliding_window_inference`` (Gaussian-weighted overlapping tiles, ``predict.sw_overlap``), tiles on the device
and the stitched probabilities on the CPU.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotrain.errors import DataError
from neurotrain.io.atomic import atomic_path
from neurotrain.tasks.vision.config import VisionConfig
from neurotrain.tasks.vision.postprocess import flip_tta, label_instances, postprocess

NIFTI = (".nii.gz", ".nii")


# --------------------------------------------------------------------------- inference


def inference_device(cfg: VisionConfig, model: nn.Module) -> torch.device:
    from neurotrain.engine.inference import resolve_device

    return resolve_device(cfg.inference.device, model)


def _net_fn(model: nn.Module) -> Any:
    from neurotrain.tasks.vision.task import CHANNELS_LAST_ATTR

    cl = getattr(model, CHANNELS_LAST_ATTR, False)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=torch.channels_last) if cl and x.ndim == 4 else x).float()

    return fn


def roi_for(cfg: VisionConfig, spatial: tuple[int, ...]) -> tuple[int, ...] | None:
    """The sliding-window tile for an input of this spatial size, or None to run it whole."""
    roi = cfg.predict.roi_size
    if roi is None and len(spatial) == 3 and cfg.patch.enabled:
        roi = list(cfg.patch.size)
    if roi is None:
        return None
    if len(roi) != len(spatial):
        raise DataError(f"predict.roi_size: expected {len(spatial)} values for a {len(spatial)}D input (got {list(roi)})")
    return tuple(int(r) for r in roi) if any(s > r for s, r in zip(spatial, roi)) else None


def segment_probs(cfg: VisionConfig, model: nn.Module, images: torch.Tensor,
                  device: torch.device | None = None) -> torch.Tensor:
    """Class probabilities ``(B, C, *S)`` on the CPU for images ``(B, C_in, *S)``, with test-time flips when
    ``postprocess.tta_flips``."""
    from neurotrain.engine.inference import autocast, run_batched

    device = device or inference_device(cfg, model)
    was_training = model.training
    model.to(device).eval()
    fn = _net_fn(model)
    tta = cfg.postprocess.tta_flips

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, cfg.inference.precision):
            return flip_tta(fn, x, tta)

    roi = roi_for(cfg, tuple(images.shape[2:]))
    try:
        if roi is not None:
            from monai.inferers import sliding_window_inference

            with torch.inference_mode():
                return sliding_window_inference(images, roi, cfg.predict.sw_batch_size, predictor,
                                                overlap=cfg.predict.sw_overlap, mode="gaussian",
                                                sw_device=device, device=torch.device("cpu")).float()
        return run_batched(predictor, images, max_memory_gb=cfg.inference.max_memory_gb, device=device,
                           batch_size=cfg.inference.batch_size)
    finally:
        model.train(was_training)


def classify_probs(cfg: VisionConfig, model: nn.Module, images: torch.Tensor,
                   device: torch.device | None = None) -> torch.Tensor:
    """Softmax class probabilities ``(B, C)`` on the CPU."""
    from neurotrain.engine.inference import autocast, run_batched

    device = device or inference_device(cfg, model)
    was_training = model.training
    model.to(device).eval()
    fn = _net_fn(model)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, cfg.inference.precision):
            return fn(x).softmax(1)

    try:
        return run_batched(predictor, images, max_memory_gb=cfg.inference.max_memory_gb, device=device,
                           batch_size=cfg.inference.batch_size)
    finally:
        model.train(was_training)


def detect(cfg: VisionConfig, model: nn.Module, images: list[torch.Tensor],
           device: torch.device | None = None) -> list[dict[str, torch.Tensor]]:
    """torchvision detections per image (CPU), boxes below ``postprocess.score_threshold`` dropped."""
    device = device or inference_device(cfg, model)
    was_training = model.training
    model.to(device).eval()
    bs = cfg.inference.batch_size or 4
    out: list[dict[str, torch.Tensor]] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                for d in model([im.to(device) for im in images[i:i + bs]]):
                    keep = d["scores"] >= cfg.postprocess.score_threshold
                    out.append({k: v[keep].cpu() for k, v in d.items()})
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- files


def gather_inputs(inputs: list[Path], suffixes: list[str], recursive: bool = False) -> list[Path]:
    """Files given, plus the files with a known suffix in each folder given (sorted); DataError if none."""
    files: list[Path] = []
    low = tuple(s.lower() for s in suffixes)
    for p in map(Path, inputs):
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(f for f in it if f.is_file() and f.name.lower().endswith(low))
            if not found:
                raise DataError(f"{p}: input folder: expected image files ({', '.join(suffixes)}) (got none)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: input: expected an existing file or folder (got nothing)")
    return files


def _stem(path: Path) -> str:
    name = path.name
    for s in NIFTI:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def read_volume(path: Path, cfg: VisionConfig) -> tuple[torch.Tensor, Any]:
    """A NIfTI file -> float32 (C, Z, Y, X) in [0, 1] (robust min-max per channel, as the training volumes) and
    the nibabel image (for its affine and header)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise DataError(f"{path}: NIfTI: expected a readable volume (got {type(exc).__name__})") from None
    arr = np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]
    lo, hi = np.percentile(arr.reshape(arr.shape[0], -1), cfg.primary_source.intensity_percentiles, axis=1)
    arr = np.clip((arr - lo[:, None, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None, None], 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 2, 1))), img


def read_input(path: Path, cfg: VisionConfig) -> tuple[torch.Tensor, Any]:
    """(image (C, *S) in [0, 1], nibabel image or None)."""
    if path.name.lower().endswith(NIFTI):
        return read_volume(path, cfg)
    from neurotrain.tasks.vision.dataset_base import read_image

    src = cfg.primary_source
    return read_image(path, src.channels, src.convert_gray), None


def write_mask(path: Path, arr: np.ndarray, ref_nifti: Any = None) -> Path:
    """Write a label/mask array atomically: NIfTI (``(Z, Y, X)`` back to nibabel's ``(X, Y, Z)``, the input's
    affine), PNG (uint8, or uint16 above 255) or TIFF."""
    with atomic_path(path) as tmp:
        if ref_nifti is not None:
            import nibabel as nib

            nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0).astype(np.int16), ref_nifti.affine), str(tmp))
        elif path.suffix.lower() == ".png":
            from PIL import Image

            dtype = np.uint8 if arr.max(initial=0) < 256 else np.uint16
            Image.fromarray(arr.astype(dtype)).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, arr)
    return path


def _out_dir(output: Path | None, inputs: list[Path]) -> Path:
    if output is not None:
        return Path(output)
    first = Path(inputs[0])
    return (first if first.is_dir() else first.parent) / "predictions"


class _BadFiles:
    """The bad-input rule of ``data_source.on_bad_file`` at predict time: ``error`` raises the file's one-line
    :class:`DataError`; ``skip`` records ``(file, reason)`` and the run goes on with the other files."""

    def __init__(self, cfg: VisionConfig) -> None:
        self.cfg = cfg
        self.skip = cfg.primary_source.on_bad_file == "skip"
        self.skipped: list[tuple[Path, str]] = []

    def check_headers(self, files: list[Path]) -> list[Path]:
        """The files whose header reads and whose channels fit the model, checked before any output is written
        (a bad file found only after half the masks were written would leave a half-done folder)."""
        from neurotrain.tasks.vision.dataset_base import fit_channels, image_header

        src = self.cfg.primary_source
        good = []
        for f in files:
            try:
                if not f.name.lower().endswith(NIFTI):
                    channels = image_header(f)[2]
                    fit_channels(np.zeros((1, 1, channels), np.float32), src.channels, src.convert_gray, f)
            except DataError as exc:
                self.record(f, exc)
                continue
            good.append(f)
        return good

    def record(self, f: Path, exc: DataError) -> None:
        if not self.skip:
            raise exc
        self.skipped.append((f, str(exc)))

    def read(self, f: Path) -> tuple[torch.Tensor, Any] | None:
        """``read_input``, or None for a file skipped now (pixel data that fails to decode past its header)."""
        try:
            return read_input(f, self.cfg)
        except DataError as exc:
            self.record(f, exc)
            return None

    def report(self, n_files: int, inputs: list[Path], out_dir: Path | None) -> list[Path]:
        """One console line and ``<out>/skipped.csv`` (file, reason) when files were skipped; a DataError when
        none was left."""
        if not self.skipped:
            return []
        first = self.skipped[0][1]  # each reason starts with its file
        if out_dir is None:
            raise DataError(f"{', '.join(str(p) for p in inputs)}: none of {n_files} images could be read (first: {first})")
        path = out_dir / "skipped.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "reason"])
            w.writerows([str(f), r] for f, r in self.skipped)
        print(f"skipped {len(self.skipped)} of {n_files} files (first: {first}; every reason in {path})", file=sys.stderr)
        return [path]


def predict_files(cfg: VisionConfig, model: nn.Module, inputs: list[Path], output: Path | None,
                  **options: Any) -> list[Path]:
    """Predict every input file; returns the paths written (masks, or one CSV/JSON per run). A file that cannot
    be read stops the run with one line naming it, before any output when its header already fails; with
    ``data_source.on_bad_file: skip`` it is skipped, counted on the console and listed in ``<out>/skipped.csv``."""
    all_files = gather_inputs(inputs, cfg.predict.suffixes, cfg.predict.recursive)
    bad = _BadFiles(cfg)
    files = bad.check_headers(all_files)
    if not files:
        bad.report(len(all_files), inputs, None)
    out_dir = _out_dir(output, inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _predict_checked(cfg, model, files, out_dir, bad)
    if not written:
        bad.report(len(all_files), inputs, None)
    return written + bad.report(len(all_files), inputs, out_dir)


def _predict_checked(cfg: VisionConfig, model: nn.Module, files: list[Path], out_dir: Path, bad: _BadFiles) -> list[Path]:
    kind = cfg.task_kind
    device = inference_device(cfg, model)
    written: list[Path] = []
    if kind == "segmentation":
        for f in files:
            read = bad.read(f)
            if read is None:
                continue
            image, ref = read
            probs = segment_probs(cfg, model, image[None], device)
            mask = postprocess(probs, cfg.postprocess)[0].numpy()
            ext = ".nii.gz" if ref is not None else f".{cfg.predict.mask_format}"
            written.append(write_mask(out_dir / f"{_stem(f)}_mask{ext}", mask, ref))
            if cfg.predict.save_instances:
                inst = label_instances(torch.from_numpy(mask)[None], cfg.postprocess.instances,
                                       cfg.postprocess.min_distance, cfg.postprocess.min_size)[0].numpy()
                ext_i = ".nii.gz" if ref is not None else ".tif"
                written.append(write_mask(out_dir / f"{_stem(f)}_instances{ext_i}", inst.astype(np.int32), ref))
            if cfg.predict.save_probabilities:
                fg = (1 - probs[0, 0]).numpy().astype(np.float32)
                ext_p = ".nii.gz" if ref is not None else ".tif"
                written.append(write_mask(out_dir / f"{_stem(f)}_prob{ext_p}", fg, ref))
        return written
    reads = [bad.read(f) for f in files]
    files = [f for f, r in zip(files, reads) if r is not None]
    images = [r[0] for r in reads if r is not None]
    if not images:
        return []
    if kind == "classification":
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise DataError(f"{files[0].parent}: image size: expected one size for a classifier batch (got {sorted(sizes)[:3]})")
        probs = classify_probs(cfg, model, torch.stack(images), device)
        names = class_names(cfg)
        path = out_dir / "labels.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "class", "score"] + [f"p_{n}" for n in names])
            for f, p in zip(files, probs):
                k = int(p.argmax())
                w.writerow([str(f), k, names[k], f"{float(p[k]):.6f}"] + [f"{float(x):.6f}" for x in p])
        written.append(path)
        if cfg.predict.explain != "none":
            from neurotrain.tasks.vision.explain import explain_files

            written += explain_files(cfg, model, torch.stack(images), files, probs.argmax(1), out_dir / "explain")
        return written
    dets = detect(cfg, model, images, device)
    rows = [{"path": str(f), "x0": float(b[0]), "y0": float(b[1]), "x1": float(b[2]), "y1": float(b[3]),
             "label": int(lab), "score": float(s)}
            for f, d in zip(files, dets) for b, lab, s in zip(d["boxes"], d["labels"], d["scores"])]
    path = out_dir / "boxes.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "x0", "y0", "x1", "y1", "label", "score"])
        w.writeheader()
        w.writerows(rows)
    jpath = out_dir / "boxes.json"
    with atomic_path(jpath) as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return [path, jpath]


def class_names(cfg: VisionConfig) -> list[str]:
    """Class names from the config (``data_source.class_names``; the synthetic set's shapes), else indices."""
    from neurotrain.tasks.vision.config import SYNTHETIC_CLASSES

    src = cfg.primary_source
    if src.class_names:
        return list(src.class_names)
    if src.name == "synthetic_shapes" and cfg.task_kind == "classification":
        return list(SYNTHETIC_CLASSES)
    return [str(i) for i in range(cfg.num_classes)]
