"""The deflare task: event-camera flare removal, file in, file out.

Events (t, x, y, p) spoiled by lens flare from a bright light source are cut into 20 ms
segments, encoded as 8-bin voxel grids, passed through ``TrueResidualUNet3D``
(``output = input + residual``, the identity at initialisation) and decoded back to events
on the original time axis. Training data are paired "with flare" / "without flare" event
streams from the physics simulator (on the fly, or the seed's H5 directories).

Modes (seed names): ``train``, ``test`` (every H5 of ``paths.val_noisy_dir`` ->
``<dir>output`` or, with ``baseline``, ``<dir>baseline``; metrics against
``paths.val_clean_dir``), ``predict`` (file or directory, no labels), ``simulate`` (the seed's
directory layout), ``evaluate`` (network vs classical filters on simulated segments).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from neurotrain.errors import ConfigError, DataError
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task, TaskOptions
from neurotrain.tasks.deflare.config import DeflareConfig

if TYPE_CHECKING:
    import optuna
    from torch.utils.data import Dataset
    from torchmetrics import MetricCollection

HEADLINE = "flare_f1"


def add_scores(r: dict[str, float]) -> dict[str, float]:
    """Add the summary scores to a flat metrics dict.

    ``flare_minus_background_removal = flare_removal_rate - background_removal_rate``;
    ``deflare_score`` also charges the light-source events removed:
    ``flare_removal_rate - background_removal_rate - (1 - light_preservation)``
    (1 = all flare removed, background and light untouched; the identity scores 0; a
    filter that deletes the light source with its flare is penalised for it).
    """
    import math

    lp = r.get("light_preservation", float("nan"))
    lp = 1.0 if math.isnan(lp) else lp
    r["flare_minus_background_removal"] = r["flare_removal_rate"] - r["background_removal_rate"]
    r["deflare_score"] = r["flare_minus_background_removal"] - (1.0 - lp)
    return r


def _device(cfg: DeflareConfig) -> torch.device:
    d = cfg.inference.device
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(d)


def sibling_dir(input_dir: Path, suffix: str) -> Path:
    """The seed's output folder: ``<input_dir>output`` / ``<input_dir>baseline`` next to the input."""
    input_dir = Path(input_dir)
    return input_dir.parent / f"{input_dir.name}{suffix}"


class DeflarePredictOptions(TaskOptions):
    """``neurotrain predict`` options of deflare (``--opt key=value``)."""

    method: Literal["network", "codec", "ba_filter", "flicker_filter"] | None = Field(
        None, description="network (default), codec (encode -> decode), ba_filter or flicker_filter")
    baseline: bool | None = Field(None, description="encode -> decode only (method=codec)")


class DeflareSimulateOptions(TaskOptions):
    """``neurotrain simulate`` options of deflare."""

    n_test: int | None = Field(None, ge=0, description="file pairs in the *_test folders (default: simulate.test_fraction)")
    device: str | None = Field(None, description="cpu or cuda (default: inference.device)")


class DeflareEvaluateOptions(TaskOptions):
    """``neurotrain evaluate`` of deflare takes no options: every knob is in the config's ``evaluate.*``."""


class DeflareTask(Task):
    name = "deflare"
    config_cls = DeflareConfig
    predict_options = DeflarePredictOptions
    simulate_options = DeflareSimulateOptions
    evaluate_options = DeflareEvaluateOptions

    # ------------------------------------------------------------------ building blocks
    def build_model(self, cfg: DeflareConfig) -> nn.Module:  # type: ignore[override]
        from neurotrain.tasks.deflare.models import build_model

        return build_model(cfg.model)

    def build_loss(self, cfg: DeflareConfig) -> nn.Module:  # type: ignore[override]
        from neurotrain.tasks.deflare.losses import VoxelLoss

        return VoxelLoss(cfg.loss.name, cfg.loss.count_weight, cfg.loss.signal_weight)

    def build_metrics(self, cfg: DeflareConfig) -> MetricCollection:  # type: ignore[override]
        from neurotrain.tasks.deflare.metrics import build_metrics

        return build_metrics()

    def update_metrics(self, metrics: MetricCollection, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        from neurotrain.tasks.deflare.metrics import update_all

        update_all(metrics, pred, batch["target"], batch["input"], batch.get("light_mask"))

    # ------------------------------------------------------------------ data
    def simulate_batch(
        self, cfg: DeflareConfig, batch_size: int, generator: torch.Generator, device: torch.device  # type: ignore[override]
    ) -> dict[str, torch.Tensor]:
        from neurotrain.tasks.deflare.simulate import simulate_voxel_pairs

        return simulate_voxel_pairs(cfg.simulate, cfg.voxel, batch_size, generator, torch.device(device))

    def datasets(self, cfg: DeflareConfig) -> dict[str, Dataset] | None:  # type: ignore[override]
        p = cfg.paths
        if p.train_noisy_dir is None:
            return None
        if p.train_clean_dir is None:
            raise ConfigError("config error: paths.train_clean_dir: required when paths.train_noisy_dir is set")
        from neurotrain.tasks.deflare.dataset import EventVoxelDataset

        out: dict[str, Dataset] = {"train": EventVoxelDataset(p.train_noisy_dir, p.train_clean_dir, cfg)}
        if p.val_noisy_dir is not None and p.val_clean_dir is not None:
            out["val"] = EventVoxelDataset(p.val_noisy_dir, p.val_clean_dir, cfg)
        if p.test_noisy_dir is not None and p.test_clean_dir is not None:
            # the test set is its own folder (e.g. the seed's *_test pair); never the validation set
            out["test"] = EventVoxelDataset(p.test_noisy_dir, p.test_clean_dir, cfg)
        return out

    # ------------------------------------------------------------------ commands
    def simulate(self, cfg: DeflareConfig, output: Path, n: int, **options: Any) -> Path:  # type: ignore[override]
        """Write ``n`` file pairs in the seed's layout under ``output``: ``n - n_test`` in
        ``background_with_{flare,light}_events/`` and ``n_test = round(n * test_fraction)``
        in the ``*_test/`` folders (at least one of each when ``n >= 2``)."""
        from neurotrain.tasks.deflare.simulate import write_pair_dirs

        output = Path(output)
        n_test = options.get("n_test")
        if n_test is None:
            n_test = max(1, round(n * cfg.simulate.test_fraction)) if n >= 2 else 0
        n_train = n - int(n_test)
        dev = torch.device(options.get("device") or _device(cfg))
        lvl = cfg.simulate.compression_level
        write_pair_dirs(cfg.simulate, cfg.voxel, output, n_train, split="train", start_index=0, seed=cfg.seed, device=dev, compression_level=lvl)
        write_pair_dirs(cfg.simulate, cfg.voxel, output, int(n_test), split="test", start_index=n_train, seed=cfg.seed + 1, device=dev, compression_level=lvl)
        return output

    def _voxel_fn(self, cfg: DeflareConfig, model: nn.Module | None, device: torch.device, method: str = "network") -> Any:
        from neurotrain.tasks.deflare import baseline as bl
        from neurotrain.tasks.deflare.postprocess import identity_fn, model_fn

        if method == "network":
            if model is None:
                raise ConfigError("config error: a checkpoint is required (or use --baseline for encode -> decode only)")
            return model_fn(model, device, cfg.inference.precision)
        if method == "codec":
            return identity_fn
        if method == "ba_filter":
            return lambda v: bl.ba_filter(v, cfg.baseline.ba_window_bins, cfg.baseline.ba_min_support)
        if method == "flicker_filter":
            return lambda v: bl.flicker_filter(
                v, duration_us=cfg.voxel.segment_duration_us, flicker_hz=tuple(cfg.simulate.flicker_hz),
                min_events=cfg.baseline.flicker_min_events, min_power=cfg.baseline.flicker_min_power,
            )
        raise ConfigError(f"config error: unknown method {method!r} (network, codec, ba_filter, flicker_filter)")

    def _debug_hook(self, cfg: DeflareConfig, tag: str) -> Any:
        from neurotrain.tasks.deflare.plots import write_debug_folder

        prefix = {"test": "test_optimized", "test_baseline": "test_baseline", "inference": "predict"}.get(tag, tag)
        written = [0]

        def hook(info: dict[str, Any]) -> None:
            # the seed's test-mode folders: debug_output/test_optimized_iter_000, ..., for the first
            # pipeline.debug_iterations batches of the whole run (not of every file)
            if written[0] >= cfg.pipeline.debug_iterations:
                return
            vin, vout = info["input_voxel"], info["output_voxel"]
            ev_in = info["input_events"]
            t0 = int(info["starts"][0])
            D = cfg.voxel.segment_duration_us
            m = (ev_in.t >= t0) & (ev_in.t < t0 + D)
            ev_in_d = {"t": ev_in.t[m], "x": ev_in.x[m], "y": ev_in.y[m], "p": ev_in.p[m]}
            ev_out = info["output_events"]
            mo = ev_out["segment"] == 0
            ev_out_d = {k: ev_out["p_sign" if (k == "p" and "p_sign" in ev_out) else k][mo] for k in ("t", "x", "y", "p")}
            write_debug_folder(
                cfg.pipeline.debug_dir / f"{prefix}_iter_{written[0]:03d}",
                input_voxel=vin[0, 0].cpu(), output_voxel=vout[0, 0].cpu(), duration_us=D,
                input_events=ev_in_d, output_events=ev_out_d,
                note=f"file {info['file']}, segment {info['segment_offset']} (start {t0} µs), mode {tag}",
            )
            written[0] += 1

        return hook

    def check_predict_inputs(self, cfg: DeflareConfig, inputs: list[Path], output: Path | None, **options: Any) -> None:  # type: ignore[override]
        """Header-level checks of every input before the network is built (:func:`predict.plan_jobs`)."""
        from neurotrain.tasks.deflare.predict import plan_jobs

        plan_jobs(cfg, inputs, output)

    def predict(self, cfg: DeflareConfig, model: nn.Module | None, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:  # type: ignore[override]
        """Deflare H5 files (or Prophesee ``.raw`` EVT 2.0/3.0 files) or directories of H5 files
        (:func:`predict.predict_files`). Options: ``debug`` (figures to ``pipeline.debug_dir``),
        ``baseline`` (encode -> decode only), ``method`` (network, codec, ba_filter, flicker_filter).
        """
        from neurotrain.tasks.deflare.predict import predict_files

        device = _device(cfg)
        method = options.get("method") or ("codec" if options.get("baseline") else "network")
        fn = self._voxel_fn(cfg, model, device, method)
        hook = self._debug_hook(cfg, "inference") if options.get("debug") else None
        return predict_files(cfg, fn, inputs, output, device, hook)

    def test(self, cfg: DeflareConfig, model: nn.Module | None, **options: Any) -> dict[str, Any]:  # type: ignore[override]
        """The seed's test mode: every H5 of ``paths.val_noisy_dir`` -> ``<dir>output`` (or
        ``<dir>baseline`` with ``baseline=True``), then metrics against ``paths.val_clean_dir``.

        Returns the flat metrics (plus ``files``, event totals and ``output_dir``); the
        per-file detail goes to ``metrics.json`` in the output directory.
        """
        from neurotrain.tasks.deflare.h5read import list_h5
        from neurotrain.tasks.deflare.postprocess import process_file

        src = cfg.paths.val_noisy_dir
        if src is None:
            raise ConfigError("config error: paths.val_noisy_dir: required for test (the directory of flare H5 files)")
        baseline = bool(options.get("baseline"))
        device = _device(cfg)
        fn = self._voxel_fn(cfg, None if baseline else model, device, "codec" if baseline else "network")
        out_dir = sibling_dir(Path(src), "baseline" if baseline else "output")
        hook = self._debug_hook(cfg, "test_baseline" if baseline else "test") if options.get("debug") else None
        files = list_h5(src)
        if not files:
            raise DataError(f"{src}: no .h5 files to test")
        rows = []
        for f in files:
            r = process_file(f, out_dir / f.name, fn, cfg, device, hook)
            rows.append({"file": f.name, "events_in": r.events_in, "events_out": r.events_out, "seconds": sum(r.seconds.values())})
        scores: dict[str, float] = {}
        if cfg.paths.val_clean_dir is not None:
            scores = self.score_dirs(cfg, Path(src), Path(cfg.paths.val_clean_dir), out_dir)
        from neurotrain.io.atomic import atomic_path

        with atomic_path(out_dir / "metrics.json") as tmp:
            detail = {"mode": "baseline" if baseline else "network", "metrics": scores, "files": rows}
            tmp.write_text(json.dumps(detail, indent=2, default=float), encoding="utf-8")
        return {**scores, "files": len(rows), "events_in_total": sum(r["events_in"] for r in rows),
                "events_out_total": sum(r["events_out"] for r in rows), "output_dir": str(out_dir)}

    def score_dirs(self, cfg: DeflareConfig, noisy_dir: Path, clean_dir: Path, out_dir: Path) -> dict[str, float]:
        """Metrics of the files in ``out_dir`` against their clean partners, per segment."""
        from neurotrain.tasks.deflare.dataset import pair_files
        from neurotrain.tasks.deflare.h5read import inspect_events
        from neurotrain.tasks.deflare.metrics import build_metrics, compute_all, update_all
        from neurotrain.tasks.deflare.postprocess import iter_file_voxels, resolve_sensor_size
        from neurotrain.tasks.deflare.simulate import light_mask_from_attrs

        metrics = build_metrics()
        for noisy, clean in pair_files(noisy_dir, clean_dir):
            out = out_dir / noisy.name
            info = inspect_events(noisy)
            size = resolve_sensor_size(info, cfg)
            mask = light_mask_from_attrs(info.attrs, size)
            lm = mask.float()[None, None, None] if mask is not None else None
            zero = torch.zeros((1, 1, cfg.voxel.num_bins, *size))
            streams = [_per_segment(iter_file_voxels(p, cfg, size)) for p in (out, clean, noisy)]
            heads = [next(st, None) for st in streams]
            # merge-join the three segment streams in time order: memory holds one segment each
            while any(h is not None for h in heads):
                k = min(h[0] for h in heads if h is not None)
                vox = []
                for j, h in enumerate(heads):
                    if h is not None and h[0] == k:
                        vox.append(h[1])
                        heads[j] = next(streams[j], None)
                    else:
                        vox.append(zero)
                update_all(metrics, vox[0], vox[1], vox[2], lm)
        return add_scores(compute_all(metrics))

    def evaluate(self, cfg: DeflareConfig, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:  # type: ignore[override]
        """Per-event evaluation (``evaluate.py``): the network's keep/drop output and the
        classical filters (identity, background-activity filter, STCF, AFK-style
        anti-flicker sparing the source), each tuned on a simulated validation set and
        scored on a test set with a different seed. Writes ``report/metrics.json``,
        ``report/report.md`` and a bar chart under ``run_dir``; headline: flare F1."""
        from neurotrain.io.atomic import atomic_path
        from neurotrain.tasks.deflare.evaluate import evaluate_methods, markdown_table
        from neurotrain.tasks.deflare.plots import plot_comparison_bars, plot_loss_curves
        from neurotrain.tasks.deflare.postprocess import model_fn

        device = _device(cfg)
        run_dir = Path(run_dir)
        report = run_dir / "report"
        fn = model_fn(model, device, cfg.inference.precision) if model is not None else None
        res = evaluate_methods(cfg, fn, device)
        table, params = res["methods"], res["params"]
        keys = ["flare_f1", "flare_recall", "flare_precision", "signal_kept", "scene_kept", "light_kept",
                "noise_removed", "kept_fraction", "flare_auroc", "voxel_mse", "voxel_psnr"]
        report.mkdir(parents=True, exist_ok=True)
        figs = [plot_comparison_bars(table, keys[:8], report / "comparison.png")]
        try:
            figs.append(plot_loss_curves(run_dir, report / "training_loss_curves.png"))
        except FileNotFoundError:
            pass
        size = list(cfg.simulate.sensor_size or cfg.voxel.sensor_size)
        n_scenes = cfg.evaluate.num_batches * cfg.evaluate.batch_size
        metrics = {"methods": table, "params": params, "num_scenes": n_scenes, "duration_us": cfg.evaluate.duration_us,
                   "sensor_size": size, "validation_seed": cfg.evaluate.seed, "test_seed": cfg.evaluate.seed + 1}
        with atomic_path(report / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
        md = markdown_table(table, params, keys)
        text = (
            "# deflare evaluation (per event)\n\n"
            f"Test set: {n_scenes} simulated scenes of {cfg.evaluate.duration_us / 1000:g} ms, sensor {size}, seed "
            f"{cfg.evaluate.seed + 1}; every method tuned for flare F1 on a validation set of the same size (seed "
            f"{cfg.evaluate.seed}). Dropped events are called flare; sensor-noise events count neither way for "
            "P/R/F1 (`noise_removed` reports them). `voxel_*`: voxel of the kept events vs the flare-free voxel.\n\n"
            + md + "\n\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figs) + "\n"
        )
        with atomic_path(report / "report.md") as tmp:
            tmp.write_text(text, encoding="utf-8")
        base = [m for m in cfg.evaluate.baselines if m in table]
        return EvalResult(
            metrics=metrics,
            headline_name=HEADLINE,
            headline_network=table["network"]["flare_f1"] if "network" in table else None,
            headline_baseline=max((table[m]["flare_f1"] for m in base), default=None),
            report_path=report / "report.md",
            lower_is_better=False,
            extra={"table_markdown": md},
        )

    def debug_outputs(  # type: ignore[override]
        self, cfg: DeflareConfig, batch: dict[str, torch.Tensor], pred: Any, out_dir: Path, step: int = 0, epoch: int = 0
    ) -> None:
        """``train --debug``: the seed's folder ``epoch_EEE_iter_SSS/`` (training epoch, global
        step, as the seed's ``checkpoint_epoch_0027_iter_077500``) for the first sample of a batch."""
        from neurotrain.tasks.deflare.plots import write_debug_folder

        write_debug_folder(
            Path(out_dir) / f"epoch_{epoch:03d}_iter_{step:03d}", input_voxel=batch["input"][0, 0].detach().cpu(),
            output_voxel=pred[0, 0].detach().float().cpu(), target_voxel=batch["target"][0, 0].detach().cpu(),
            duration_us=cfg.voxel.segment_duration_us, note=f"training epoch {epoch}, step {step}",
        )

    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        base = trial.suggest_categorical("f_maps_base", [8, 16, 32])
        levels = trial.suggest_int("num_levels", 2, 4)
        return {
            "optim.lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "model.f_maps": [base * 2**i for i in range(levels)],
            "model.num_levels": levels,
            "model.dropout_prob": trial.suggest_float("dropout_prob", 0.0, 0.2),
            "loss.name": trial.suggest_categorical("loss", ["mse", "l1", "mse_count"]),
        }

    def example_input(self, cfg: DeflareConfig) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        h, w = cfg.voxel.sensor_size
        return (torch.zeros(1, cfg.model.in_channels, cfg.voxel.num_bins, h, w),)


def _per_segment(it: Any) -> Any:
    """(segment index, (1, 1, B, H, W) voxel) pairs from ``iter_file_voxels`` batches."""
    for idx, v in it:
        for i, k in enumerate(idx):
            yield k, v[i : i + 1]


def _markdown_table(table: dict[str, dict[str, float]], keys: list[str]) -> str:
    head = "| method | " + " | ".join(keys) + " |"
    sep = "| --- |" + " ---: |" * len(keys)
    rows = [f"| {m} | " + " | ".join(f"{r.get(k, float('nan')):.4f}" for k in keys) + " |" for m, r in table.items()]
    return "\n".join([head, sep, *rows])


TASKS.register("deflare")(DeflareTask())
