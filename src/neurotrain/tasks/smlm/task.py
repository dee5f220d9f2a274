"""The smlm task: DECODE-style single-molecule localisation microscopy.

Simulate blinking emitters through a Gaussian/astigmatic PSF and an EMCCD/sCMOS camera on the
device, train the seed's networks (SigmaMUNet & co.) with DECODE's Gaussian-mixture loss, localise
TIFF movies into ThunderSTORM / Picasso / HDF5 tables, and score against ground truth the way the
SMLM challenge did, next to the classical box-detection + MLE-fit baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from neurotrain.errors import ConfigError, DataError
from neurotrain.io.atomic import missing_dirs, remove_empty_dirs
from neurotrain.registry import TASKS
from neurotrain.task import EvalResult, Task, TaskOptions
from neurotrain.tasks.smlm.config import SMLMConfig

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from torchmetrics import MetricCollection


def _cfg(cfg: Any) -> SMLMConfig:
    if not isinstance(cfg, SMLMConfig):
        raise ConfigError(f"config error: task: expected an smlm config (got {type(cfg).__name__})")
    return cfg


def truth_from_batch(cfg: SMLMConfig, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The centre-frame emitters of a simulated batch as a flat truth table with per-emitter CRLB."""
    from neurotrain.tasks.smlm.camera import excess_noise_factor
    from neurotrain.tasks.smlm.crlb import crlb

    em, mask, bg = batch["em"], batch["em_mask"], batch["bg"]
    b, k = torch.nonzero(mask, as_tuple=True)
    e = em[b, k]
    px = cfg.simulate.pixel_size_nm
    h, w = bg.shape[-2:]
    bgv = bg[b, e[:, 1].long().clamp(0, h - 1), e[:, 0].long().clamp(0, w - 1)]
    c = crlb(e[:, 0], e[:, 1], e[:, 2], e[:, 3], bgv, cfg.psf, px, excess_noise_factor(cfg.camera))
    return {"frame": b, "x_nm": e[:, 0] * px, "y_nm": e[:, 1] * px, "z_nm": e[:, 2], "photons": e[:, 3],
            "crlb_x_nm": c["x_nm"], "crlb_y_nm": c["y_nm"], "crlb_z_nm": c["z_nm"]}


def truth_with_crlb(cfg: SMLMConfig, truth: pd.DataFrame, bg_map: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A ground-truth table -> tensors with CRLB columns; background from ``bg_map`` (photons/px)
    at each emitter's pixel, else the middle of ``simulate.bg_photons``."""
    from neurotrain.tasks.smlm.camera import excess_noise_factor
    from neurotrain.tasks.smlm.crlb import crlb

    px = cfg.simulate.pixel_size_nm
    t = {c: torch.as_tensor(truth[c].to_numpy().copy()) for c in ("frame", "x_nm", "y_nm", "z_nm", "photons") if c in truth}
    if "z_nm" not in t:
        t["z_nm"] = torch.zeros_like(t["x_nm"])
    if "photons" not in t:
        t["photons"] = torch.full_like(t["x_nm"], float("nan"))
    x, y = t["x_nm"].double() / px, t["y_nm"].double() / px
    if bg_map is not None:
        h, w = bg_map.shape
        bgv = bg_map.cpu().double()[y.long().clamp(0, h - 1), x.long().clamp(0, w - 1)]
    else:
        bgv = torch.full_like(x, 0.5 * sum(cfg.simulate.bg_photons))
    if torch.isfinite(t["photons"]).all():
        c = crlb(x, y, t["z_nm"].double(), t["photons"].double(), bgv, cfg.psf, px, excess_noise_factor(cfg.camera))
        t.update(crlb_x_nm=c["x_nm"], crlb_y_nm=c["y_nm"], crlb_z_nm=c["z_nm"])
    return t


class SMLMPredictOptions(TaskOptions):
    """``neurotrain predict`` options of smlm (``--opt key=value``); unset keys fall back to ``predict.*``."""

    format: Literal["auto", "h5", "csv", "picasso"] | None = Field(
        None, description="table format: h5 (ours), csv (ThunderSTORM), picasso (HDF5 + YAML)")
    threshold: float | None = Field(None, ge=0, description="detection probability cut (postprocess.threshold)")
    render: bool | None = Field(None, description="write a super-resolution render (PNG and TIFF)")
    mc_samples: int | None = Field(None, ge=0, description="MC-dropout passes (0 = off, else >= 2)")
    progress: bool | None = Field(None, description="show a progress bar")


class SMLMEvaluateOptions(TaskOptions):
    """``neurotrain evaluate`` options of smlm (``--pred``/``--truth`` are flags of the command)."""

    baseline: bool | None = Field(None, description="also score the classical baseline (evaluate.baseline)")


class SMLMSimulateOptions(TaskOptions):
    """``neurotrain simulate`` options of smlm."""

    truth: str | None = Field(None, description="ground-truth CSV path (default: <movie>_truth.csv)")
    device: str | None = Field(None, description="cpu or cuda (default: cuda when available)")
    seed: int | None = Field(None, description="random seed (default: the config's seed)")


class SMLMTask(Task):
    name = "smlm"
    config_cls = SMLMConfig
    predict_options = SMLMPredictOptions
    evaluate_options = SMLMEvaluateOptions
    simulate_options = SMLMSimulateOptions

    # ------------------------------------------------------------------ building blocks
    def build_model(self, cfg: Any) -> nn.Module:
        from neurotrain.tasks.smlm.models import build_model

        return build_model(_cfg(cfg))

    def build_loss(self, cfg: Any) -> nn.Module:
        from neurotrain.tasks.smlm.losses import build_loss

        return build_loss(_cfg(cfg))

    def build_metrics(self, cfg: Any) -> MetricCollection:
        from torchmetrics import MetricCollection

        from neurotrain.tasks.smlm.metrics import SMLMMetrics
        from neurotrain.tasks.smlm.simulate import is_3d

        cfg = _cfg(cfg)
        ev = cfg.evaluate
        m = SMLMMetrics(cfg.postprocess.threshold, ev.lateral_tol_nm, ev.axial_tol_nm, ev.alpha_lat, ev.alpha_ax,
                        use_z=is_3d(cfg))
        m.smlm_cfg = cfg.model_dump(mode="json")  # plain data; clones and pickles carry it
        return MetricCollection({"smlm": m})

    def update_metrics(self, metrics: MetricCollection, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        from neurotrain.tasks.smlm.postprocess import localise

        m = metrics["smlm"]
        cfg = SMLMConfig.model_validate(m.smlm_cfg)
        locs = localise(pred.detach(), cfg, threshold=min(cfg.postprocess.raw_threshold, cfg.postprocess.threshold))
        m.update(locs, truth_from_batch(cfg, batch))

    def debug_outputs(self, cfg: Any, batch: dict[str, torch.Tensor], pred: Any, out_dir: Path, step: int) -> None:
        from neurotrain.tasks.smlm.plots import _plt

        plt = _plt()
        n = min(4, batch["input"].shape[0])
        fig, axs = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
        for i in range(n):
            c = batch["input"].shape[1] // 2
            axs[i, 0].imshow(batch["input"][i, c].detach().cpu(), cmap="gray")
            axs[i, 1].imshow(batch["target"][i, 0].detach().cpu(), cmap="gray")
            axs[i, 2].imshow(pred[i, 0].detach().float().cpu(), cmap="gray", vmin=0, vmax=1)
            for j, t in enumerate(("input (centre frame)", "target p", "predicted p")):
                axs[i, j].set_title(t, fontsize=8)
                axs[i, j].axis("off")
        fig.tight_layout()
        fig.savefig(Path(out_dir) / f"step{step:06d}.png", dpi=80)
        plt.close(fig)

    # ------------------------------------------------------------------ data
    def simulate_batch(self, cfg: Any, batch_size: int, generator: torch.Generator,
                       device: torch.device) -> dict[str, torch.Tensor]:
        from neurotrain.tasks.smlm.simulate import simulate_batch

        return simulate_batch(_cfg(cfg), batch_size, generator, device)

    # ------------------------------------------------------------------ commands
    def simulate(self, cfg: Any, output: Path, n: int, **options: Any) -> Path:
        """Write an ``n``-frame movie (uint16 ADU TIFF) and its ground truth CSV
        (``frame`` 0-based, ``x_nm``, ``y_nm``, ``z_nm``, ``photons``, ``emitter_id``) next to it."""
        from neurotrain.io.atomic import atomic_path
        from neurotrain.tasks.smlm.tiff import TiffMovieWriter
        from neurotrain.tasks.smlm.simulate import simulate_movie

        cfg = _cfg(cfg)
        output = Path(output)
        if output.suffix.lower() not in (".tif", ".tiff"):
            output = output / "movie.tif"
        truth_path = Path(options.get("truth") or output.with_name(output.stem + "_truth.csv"))
        device = torch.device(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        gen = torch.Generator(device=device)
        gen.manual_seed(int(options.get("seed", cfg.seed)))
        with TiffMovieWriter(output) as tw, atomic_path(truth_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            first = True
            for adu, truth, _ in simulate_movie(cfg, n, gen, device, cfg.predict.chunk_frames):
                tw.write(adu.cpu().numpy())
                truth.to_csv(fh, index=False, header=first)
                first = False
        return output

    def _output_for(self, cfg: SMLMConfig, inp: Path, inputs: list[Path], output: Path | None, fmt: str) -> Path:
        ext = {"h5": ".h5", "csv": ".csv", "picasso": ".hdf5", "auto": ".h5"}[fmt]
        if output is None:
            return inp.with_name(inp.stem + "_locs" + ext)
        if Path(output).suffix and len(inputs) == 1:
            return Path(output)
        return Path(output) / (inp.stem + "_locs" + ext)

    def check_predict_inputs(self, cfg: Any, inputs: list[Path], output: Path | None, **options: Any) -> None:
        """Before the network is built: every movie's header (size, truncation, colour, pixel type, first
        frame finite; see :class:`~neurotrain.tasks.smlm.tiff.TiffStack`), frames at least ``baseline.box``
        px on a side (the smallest area that holds one PSF with its background ring), and every output
        place writable."""
        from neurotrain.engine.api import check_output_dir
        from neurotrain.tasks.smlm.loc_table import format_for
        from neurotrain.tasks.smlm.tiff import TiffStack

        cfg = _cfg(cfg)
        if not inputs:
            raise DataError("predict: no input movies given")
        fmt = options.get("format") or cfg.predict.format
        for inp in inputs:
            stack = TiffStack(inp)
            stack.close()
            side = cfg.baseline.box
            if min(stack.height, stack.width) < side:
                raise DataError(f"{inp}: frames of {stack.height}x{stack.width} px: expected at least {side}x{side} px "
                                "(baseline.box: one spot with its background)")
            out = self._output_for(cfg, Path(inp), inputs, output, fmt)
            if out.is_dir():
                raise DataError(f"{out}: is a folder; -o names the table file for one movie, or a folder without "
                                "a suffix for several")
            format_for(out, fmt)
            check_output_dir(out.parent, "-o" if output is not None else "the movie's folder")

    def predict(self, cfg: Any, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
        """Localise TIFF movies. Options: ``format`` (auto/h5/csv/picasso), ``threshold``, ``render``,
        ``mc_samples`` (MC-dropout passes, default ``predict.mc_samples``; 0 = off)."""
        from neurotrain.tasks.smlm.infer import check_mc_samples
        from neurotrain.tasks.smlm.render import render, save_render
        from neurotrain.tasks.smlm.tiff import TiffStack

        cfg = _cfg(cfg)
        mc = options.get("mc_samples")
        mc = cfg.predict.mc_samples if mc is None else int(mc)
        check_mc_samples(model, cfg, mc)  # fail before any file is opened
        fmt = options.get("format") or cfg.predict.format
        do_render = options.get("render")
        do_render = cfg.predict.render if do_render is None else bool(do_render)
        inputs = [Path(p) for p in inputs]
        if not inputs:
            raise DataError("predict: no input movies given")
        written: list[Path] = []
        created = missing_dirs([self._output_for(cfg, inp, inputs, output, fmt).parent for inp in inputs])
        try:
            for inp in inputs:
                out = self._output_for(cfg, inp, inputs, output, fmt)
                stack = TiffStack(inp)
                try:
                    xs, ys = self._localise_to(cfg, model, stack, inp, out, fmt, mc, options)
                finally:
                    stack.close()
                written.append(out)
                if do_render:
                    import numpy as np

                    px = cfg.simulate.pixel_size_nm
                    img = render(np.concatenate(xs) if xs else np.zeros(0), np.concatenate(ys) if ys else np.zeros(0),
                                 stack.width * px, stack.height * px, cfg.predict.render_px_nm)
                    for suf in (".png", ".tif"):
                        written.append(save_render(img, out.with_name(out.stem + "_render" + suf)))
        except BaseException:
            remove_empty_dirs(created)  # a failed run leaves no empty output folder behind
            raise
        return written

    def _localise_to(self, cfg: SMLMConfig, model: nn.Module, stack: Any, inp: Path, out: Path, fmt: str, mc: int,
                     options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """One movie -> its table at ``out`` (atomic); returns the x/y chunks for the render."""
        from neurotrain.tasks.smlm.camera import excess_noise_factor
        from neurotrain.tasks.smlm.infer import localise_movie
        from neurotrain.tasks.smlm.loc_table import format_for
        from neurotrain.tasks.smlm.loc_writer import LocWriter
        from neurotrain.tasks.smlm.simulate import is_3d

        px = cfg.simulate.pixel_size_nm
        meta = {"pixel_size_nm": px, "width": stack.width, "height": stack.height, "n_frames": len(stack),
                "three_d": is_3d(cfg), "excess_noise_factor": excess_noise_factor(cfg.camera),
                "movie": inp.name, "model": cfg.model.name, "mc_samples": mc}
        xs: list[Any] = []
        ys: list[Any] = []
        with LocWriter(out, format_for(out, fmt), meta) as w:
            def sink(df: pd.DataFrame) -> None:
                w.append(df)
                xs.append(df["x_nm"].to_numpy())
                ys.append(df["y_nm"].to_numpy())

            localise_movie(stack, cfg, model, threshold=options.get("threshold"), sink=sink,
                           progress=bool(options.get("progress", True)) and len(stack) > 1, mc_samples=mc)
        return xs, ys

    def evaluate(self, cfg: Any, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
        """Score the network, its untrained twin and the baseline on a seeded simulated movie, or
        score any table: ``pred=FILE truth=FILE``. Writes ``report/metrics.json``, ``report/report.md``
        and figures."""
        from neurotrain.tasks.smlm.evaluation import evaluate_files, evaluate_simulated

        cfg = _cfg(cfg)
        report = Path(run_dir) / "report"
        if options.get("pred") is not None or options.get("truth") is not None:
            if options.get("pred") is None or options.get("truth") is None:
                raise ConfigError("evaluate: give both --pred FILE and --truth FILE")
            return evaluate_files(cfg, Path(options["pred"]), Path(options["truth"]), report)
        return evaluate_simulated(cfg, model, report, baseline=options.get("baseline", cfg.evaluate.baseline))

    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        return {
            "optim.lr": trial.suggest_float("optim.lr", 1e-4, 3e-3, log=True),
            "model.initial_features": trial.suggest_categorical("model.initial_features", [16, 32, 48, 64]),
            "model.depth_union": trial.suggest_int("model.depth_union", 1, 3),
            "loss.bg_weight": trial.suggest_float("loss.bg_weight", 0.1, 10.0, log=True),
        }

    def example_input(self, cfg: Any) -> tuple[torch.Tensor, ...]:
        cfg = _cfg(cfg)
        h, w = cfg.simulate.frame_size
        return (torch.zeros(1, cfg.simulate.window, h, w),)


TASKS.register("smlm")(SMLMTask())
