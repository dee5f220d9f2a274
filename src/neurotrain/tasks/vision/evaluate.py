"""``neurotrain test`` / ``evaluate`` for vision: the network (and, for segmentation, the Otsu + watershed
baseline) on the held-out split -> metrics, a per-class table (CSV), figures and a markdown report.

Segmentation reports Dice, IoU, HD95 (px), normalised surface Dice and instance F1 at IoU thresholds (mF1) for
the network and the baseline side by side; the headline is the foreground Dice (all classes > 0 against the
background, pixels pooled over the split), the number both sides can be scored on. Network masks go through
the config's ``postprocess`` chain, as in ``predict``. True instances are the dataset's ``instances`` where it
has them (stardist nuclei), else connected components of the true mask.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurotrain.errors import NotAvailableError
from neurotrain.io.atomic import atomic_path
from neurotrain.task import EvalResult
from neurotrain.tasks.vision import plots
from neurotrain.tasks.vision.config import VisionConfig
from neurotrain.tasks.vision.metrics import InstanceF1, build_metrics
from neurotrain.tasks.vision.predict import class_names, classify_probs, detect, inference_device, segment_probs

log = logging.getLogger(__name__)


def _loader(cfg: VisionConfig, split: str) -> torch.utils.data.DataLoader:
    from neurotrain.tasks.vision.datasets import build_training_dataset, detection_collate

    ds = build_training_dataset(cfg.data_source, cfg.hybrid, split, cfg.patch)
    n = cfg.evaluate.max_images
    if n is not None and n < len(ds):
        ds = torch.utils.data.Subset(ds, list(range(n)))
    bs = 1 if cfg.spatial_dims == 3 else (cfg.inference.batch_size or cfg.data.batch_size)
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False, num_workers=cfg.data.num_workers,
                                       collate_fn=detection_collate if cfg.task_kind == "detection" else None)


def _scalars(collection: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in collection.compute().items():
        if isinstance(v, dict):
            out.update({kk: float(vv) for kk, vv in v.items() if torch.as_tensor(vv).numel() == 1})
        elif torch.as_tensor(v).numel() == 1:
            out[k] = float(v)
    return out


# --------------------------------------------------------------------------- the three kinds


def _segmentation(cfg: VisionConfig, model: nn.Module | None, split: str, baseline: bool) -> dict[str, Any]:
    from torchmetrics.classification import MulticlassJaccardIndex
    from torchmetrics.segmentation import DiceScore

    from neurotrain.tasks.vision.baseline import baseline_setting, run_baseline
    from neurotrain.tasks.vision.postprocess import label_instances, postprocess

    C, pp, thr = cfg.num_classes, cfg.postprocess, cfg.metrics.iou_thresholds
    device = inference_device(cfg, model) if model is not None else None
    sides: dict[str, dict[str, Any]] = {}
    if model is not None:
        sides["network"] = {"m": build_metrics("segmentation", C, ["dice", "iou", "hd95", "nsd"],
                                               nsd_tolerance=cfg.metrics.nsd_tolerance_px), "inst": InstanceF1(thr)}
        per_class = [DiceScore(C, include_background=True, average="none", input_format="index",
                               aggregation_level="global"), MulticlassJaccardIndex(C, average="none")]
    tuning = None
    if baseline:
        sides["baseline"] = {"m": None, "inst": InstanceF1(thr)}
        base_section, tuning = baseline_setting(cfg)  # baseline.tune: swept on the training split first
    for s in sides.values():
        s["fg"] = build_metrics("segmentation", 2, ["dice", "iou", "hd95", "nsd"], nsd_tolerance=cfg.metrics.nsd_tolerance_px)
    support = torch.zeros(C, dtype=torch.long)
    examples: dict[str, list[torch.Tensor]] = {"image": [], "truth": [], "network": [], "baseline": []}
    n_images = 0
    for batch in _loader(cfg, split):
        images, mask = batch["image"], batch["mask"]
        truth_inst = batch["instances"] if "instances" in batch else label_instances(mask)
        support += torch.bincount(mask.reshape(-1), minlength=C)[:C]
        preds: dict[str, torch.Tensor] = {}
        if model is not None:
            pred = postprocess(segment_probs(cfg, model, images, device), pp)
            preds["network"] = pred
            sides["network"]["m"].update(pred, mask)
            for m in per_class:
                m.update(pred, mask)
            sides["network"]["inst"].update(label_instances(pred, pp.instances, pp.min_distance, pp.min_size), truth_inst)
        if baseline:
            bmask, binst = run_baseline(images, base_section)
            preds["baseline"] = bmask
            sides["baseline"]["inst"].update(binst, truth_inst)
        for name, p in preds.items():
            sides[name]["fg"].update((p > 0).long(), (mask > 0).long())
        k = cfg.evaluate.n_examples - len(examples["image"])
        if k > 0:
            examples["image"] += list(images[:k])
            examples["truth"] += list(mask[:k])
            for name, p in preds.items():
                examples[name] += list(p[:k])
        n_images += images.shape[0]
    out: dict[str, Any] = {"n_images": n_images, "split": split}
    if tuning is not None:
        out["baseline_tuning"] = tuning
    for name, s in sides.items():
        fg = _scalars(s["fg"])
        r = {f"{k}_foreground": v for k, v in fg.items()} if C > 2 else dict(fg)
        if s["m"] is not None and C > 2:
            r.update(_scalars(s["m"]))
        r.update({f"instance_{k}": v for k, v in _scalars_dict(s["inst"].compute()).items()})
        out[name] = r
    if model is not None:
        dice_c, iou_c = (m.compute() for m in per_class)
        out["per_class"] = {"class": class_names(cfg), "dice": dice_c.tolist(), "iou": iou_c.tolist(),
                            "support_pixels": support.tolist()}
    out["_examples"] = examples
    return out


def _scalars_dict(d: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()}


def _classification(cfg: VisionConfig, model: nn.Module, split: str) -> dict[str, Any]:
    import torchmetrics.functional.classification as FC

    from neurotrain.tasks.vision.metrics import per_class_table

    C = cfg.num_classes
    device = inference_device(cfg, model)
    probs, labels, images = [], [], []
    for batch in _loader(cfg, split):
        probs.append(classify_probs(cfg, model, batch["image"], device))
        labels.append(batch["label"])
        if sum(len(x) for x in images) < cfg.evaluate.n_examples:
            images.append(batch["image"][: cfg.evaluate.n_examples])
    P, Y = torch.cat(probs), torch.cat(labels)
    m = build_metrics("classification", C, cfg.metric_names, top_k=cfg.metrics.top_k)
    m.update(P, Y)
    table = per_class_table("classification", C, P, Y)
    table = {"class": class_names(cfg), **table}
    cm = FC.multiclass_confusion_matrix(P, Y, C)
    ex = torch.cat(images)[: cfg.evaluate.n_examples] if images else torch.empty(0)
    return {"n_images": len(Y), "split": split, "network": _scalars(m), "per_class": table,
            "confusion_matrix": cm.tolist(), "_probs": P, "_labels": Y, "_examples": ex}


def _detection(cfg: VisionConfig, model: nn.Module, split: str) -> dict[str, Any]:
    from torchmetrics.detection import MeanAveragePrecision

    device = inference_device(cfg, model)
    mAP = MeanAveragePrecision(iou_type="bbox", class_metrics=True)
    f1 = InstanceF1(cfg.metrics.iou_thresholds)
    ex: dict[str, list[Any]] = {"image": [], "truth": [], "pred": []}
    n = 0
    for batch in _loader(cfg, split):
        dets = detect(cfg, model, batch["image"], device)
        mAP.update(dets, [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])])
        f1.update([d["boxes"] for d in dets], batch["boxes"])
        k = cfg.evaluate.n_examples - len(ex["image"])
        if k > 0:
            ex["image"] += batch["image"][:k]
            ex["truth"] += batch["boxes"][:k]
            ex["pred"] += [d["boxes"] for d in dets[:k]]
        n += len(dets)
    r = mAP.compute()
    net = {k: float(v) for k, v in r.items() if torch.as_tensor(v).numel() == 1 and k != "classes"}
    net.update({f"instance_{k}": v for k, v in _scalars_dict(f1.compute()).items()})
    classes = torch.atleast_1d(r["classes"]).tolist()
    table = {"class": [str(c) for c in classes], "map": torch.atleast_1d(r["map_per_class"]).tolist()}
    return {"n_images": n, "split": split, "network": net, "per_class": table, "_examples": ex}


# --------------------------------------------------------------------------- outputs


def _write_table(table: dict[str, list[Any]], path: Path) -> Path:
    keys = list(table)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for row in zip(*(table[k] for k in keys)):
            w.writerow([f"{x:.6g}" if isinstance(x, float) else x for x in row])
    return path


def _figures(cfg: VisionConfig, res: dict[str, Any], out_dir: Path, run_dir: Path) -> list[Path]:
    figs: list[Path] = []
    kind = cfg.task_kind
    ex = res.get("_examples")
    if kind == "segmentation" and ex and ex["image"]:
        cols = {k: torch.stack(ex[k]) for k in ("network", "baseline") if ex[k]}
        figs.append(plots.segmentation_examples(torch.stack(ex["image"]), torch.stack(ex["truth"]), cols,
                                                out_dir / "examples.png", cfg.num_classes))
    if kind == "classification":
        names = class_names(cfg)
        figs.append(plots.confusion_matrix(torch.tensor(res["confusion_matrix"]), names, out_dir / "confusion_matrix.png"))
        figs.append(plots.roc_pr_curves(res["_probs"], res["_labels"], names, out_dir / "roc_pr.png"))
        n = len(ex)
        if n:
            figs.append(plots.classification_examples(ex, res["_labels"][:n], res["_probs"][:n], names,
                                                      out_dir / "examples.png"))
    if kind == "detection" and ex and ex["image"]:
        figs.append(plots.detection_examples(ex["image"], ex["truth"], ex["pred"], out_dir / "examples.png"))
    if "per_class" in res and kind != "detection":
        keys = ["dice", "iou"] if kind == "segmentation" else ["precision", "recall", "f1"]
        figs.append(plots.per_class_bars(res["per_class"], res["per_class"]["class"], keys, out_dir / "per_class.png"))
    curve = plots.training_curves(run_dir, out_dir / "training_curves.png")
    if curve is not None:
        figs.append(curve)
    return figs


def _run(cfg: VisionConfig, model: nn.Module | None, out_dir: Path, baseline: bool) -> dict[str, Any]:
    kind, split = cfg.task_kind, cfg.evaluate.split
    if model is None and kind != "segmentation":
        raise NotAvailableError(f"vision {kind} has no classical baseline; run with a checkpoint")
    if kind == "segmentation":
        res = _segmentation(cfg, model, split, baseline)
    elif kind == "classification":
        res = _classification(cfg, model, split)  # type: ignore[arg-type]
    else:
        res = _detection(cfg, model, split)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if "per_class" in res:
        files.append(_write_table(res["per_class"], out_dir / "per_class.csv"))
    if cfg.evaluate.figures:
        files += _figures(cfg, res, out_dir, cfg.run_dir)
    res["files"] = [str(f) for f in files]
    return {k: v for k, v in res.items() if not k.startswith("_")}


HEADLINE = {"segmentation": ("dice", "Dice (foreground)"), "classification": ("accuracy", "accuracy"),
            "detection": ("map", "mAP@[.5:.95]")}


def _headline(kind: str, side: dict[str, float] | None, num_classes: int) -> float | None:
    if side is None:
        return None
    key = HEADLINE[kind][0]
    if kind == "segmentation" and num_classes > 2:
        key = "dice_foreground"
    return side.get(key)


def run_test(cfg: VisionConfig, model: nn.Module | None, *, baseline: bool = False, **_: Any) -> dict[str, Any]:
    """``neurotrain test``: one side (network, or the baseline with ``--baseline``) -> flat metrics, a per-class
    table ``<run>/test/per_class.csv`` and figures in ``<run>/test/``."""
    res = _run(cfg, None if baseline else model, cfg.run_dir / "test", baseline=baseline)
    side = res.get("baseline" if baseline else "network", {})
    flat: dict[str, Any] = dict(side)
    for key, values in res.get("per_class", {}).items():
        if key != "class":
            flat.update({f"{key}/{c}": v for c, v in zip(res["per_class"]["class"], values)})
    flat["n_images"] = res["n_images"]
    return flat


def evaluate(cfg: VisionConfig, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
    """Network and (segmentation) baseline side by side -> ``metrics.json`` section, ``report/`` (per-class CSV,
    figures, ``report.md``); then the ``evaluate.companions`` configs."""
    out_dir = Path(run_dir) / "report"
    kind = cfg.task_kind
    res = _run(cfg, model, out_dir, baseline=cfg.evaluate.baseline and kind == "segmentation")
    name = HEADLINE[kind][1]
    net = _headline(kind, res.get("network"), cfg.num_classes)
    base = _headline(kind, res.get("baseline"), cfg.num_classes)
    extra: dict[str, Any] = {}
    if cfg.evaluate.companions:
        res["companions"] = extra["companions"] = run_companions(cfg.evaluate.companions,
                                                                 cfg.evaluate.companion_checkpoint)
    report = _write_report(cfg, res, name, net, base, out_dir / "report.md")
    return EvalResult(metrics=res, headline_name=name, headline_network=net, headline_baseline=base,
                      report_path=report, lower_is_better=False, extra=extra)


def run_companions(paths: list[Path], checkpoint: str = "retrain") -> dict[str, Any]:
    """Train and evaluate each companion config; returns their headlines, whether each was trained now and the
    checkpoint scored. ``checkpoint: "reuse"`` skips training when the run's checkpoint was made from the same
    config (compared as resolved data), and says so in the log and the result (``reused``)."""
    from neurotrain.config import load_config
    from neurotrain.engine import api

    out: dict[str, Any] = {}
    for p in paths:
        ccfg = load_config(_config_path(Path(p)))
        ckpt = _reusable_checkpoint(ccfg) if checkpoint == "reuse" else None
        reused = ckpt is not None
        if ckpt is None:
            api.train(ccfg, overwrite=True)
            ckpt = api.default_checkpoint(ccfg)
        else:
            log.warning("companion %s: reused the checkpoint %s (evaluate.companion_checkpoint: reuse)", p, ckpt)
        r = api.evaluate(ccfg, ckpt)
        out[str(p)] = {"kind": getattr(ccfg, "task_kind", ccfg.task), "headline": r.headline_name,
                       "network": r.headline_network, "baseline": r.headline_baseline,
                       "report": str(r.report_path) if r.report_path else None,
                       "checkpoint": str(ckpt), "reused": reused}
    return out


def _reusable_checkpoint(ccfg: Any) -> Path | None:
    """The companion run's checkpoint when its embedded config equals ``ccfg``; None otherwise (none, unreadable,
    or made from another config: it is retrained)."""
    from neurotrain.config import config_to_dict
    from neurotrain.engine import api
    from neurotrain.engine.checkpoint import config_from_checkpoint, load_checkpoint
    from neurotrain.errors import NeurotrainError

    try:
        ckpt = api.default_checkpoint(ccfg)
        stored = config_from_checkpoint(load_checkpoint(ckpt), ckpt)
    except NeurotrainError:
        return None
    if config_to_dict(stored) != config_to_dict(ccfg):
        log.warning("companion %s: its checkpoint %s comes from another config: retraining", ccfg.run.name, ckpt)
        return None
    return ckpt


def _config_path(p: Path) -> Path:
    """A companion config: as given (absolute or relative to the working folder), else relative to the source
    checkout neurotrain runs from (where ``configs/`` lives, as the CLI's quickstart lookup does)."""
    if p.is_absolute() or p.is_file():
        return p
    import neurotrain

    repo = Path(neurotrain.__file__).resolve().parents[2] / p
    return repo if repo.is_file() else p


def _write_report(cfg: VisionConfig, res: dict[str, Any], name: str, net: float | None, base: float | None,
                  path: Path) -> Path:
    def fmt(x: Any) -> str:
        return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))

    lines = [f"# vision {cfg.task_kind}: {cfg.run.name}", "",
             f"{res['n_images']} images of the {res['split']} split; headline {name}: network {fmt(net)}, "
             f"baseline {fmt(base)}", "", "| metric | network | baseline |", "| --- | --- | --- |"]
    keys = list(dict.fromkeys(list(res.get("network", {})) + list(res.get("baseline", {}))))
    for k in keys:
        lines.append(f"| {k} | {fmt(res.get('network', {}).get(k))} | {fmt(res.get('baseline', {}).get(k))} |")
    if "baseline_tuning" in res:
        t = res["baseline_tuning"]
        lines += ["", f"baseline tuned on {t['n_images']} training images ({t['n_settings']} settings, by instance "
                  f"{t['criterion']}): {t['best']} ({t['criterion']} {fmt(t['best_score'][t['criterion']])} there; "
                  f"default {t['default']}: {fmt(t['default_score'][t['criterion']])})"]
    if "per_class" in res:
        t = res["per_class"]
        cols = list(t)
        lines += ["", "## per class", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in zip(*(t[c] for c in cols))]
    for p, c in res.get("companions", {}).items():
        how = f"reused checkpoint {c['checkpoint']}" if c.get("reused") else f"trained now, {c.get('checkpoint')}"
        lines += ["", f"companion {p} ({c['kind']}): {c['headline']} network {fmt(c['network'])} ({how})"]
    lines += ["", *[f"![{Path(f).stem}]({Path(f).name})" for f in res.get("files", []) if f.endswith(".png")]]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
