"""smlm benchmark: inference speed, training speed with on-the-fly simulation, accuracy table.

* Inference frames/s at 64x64 and 256x256 pixels, network alone and end to end (ADU -> photons,
  SigmaMUNet with cached per-frame features, DECODE post-processing on the device, tables back on
  the host), localisations/s. For scale: FID-STORM reports 7.3 ms per 256x256 frame on an
  RTX 2080 Ti as real time; the goal on an H100 is >= 2000 frames/s at 256x256 end to end.
* Training steps/s at batch 64 on 64x64 frames with the simulator inside the step; peak memory.
* Accuracy on fixed seeded movies: 2D low (0.1/um^2) and high (1/um^2) density, astigmatic 3D low
  and high, each with JI, RMSE, efficiency and RMSE/CRLB for the network and the baseline. The
  networks are trained here for ``--train-steps`` steps (one 2D, one 3D model) unless checkpoints
  are given.

    python bench/smlm.py --out bench/results/smlm.json                 # CUDA when available
    python bench/smlm.py --smoke                                       # tiny CPU run (a minute)

Prints JSON and a markdown table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from neurotrain.config import load_config
from neurotrain.tasks.smlm.config import SMLMConfig
from neurotrain.tasks.smlm.evaluation import score_table
from neurotrain.tasks.smlm.infer import WindowSource, localise_movie, network_fn
from neurotrain.tasks.smlm.losses import build_loss
from neurotrain.tasks.smlm.models import build_model
from neurotrain.tasks.smlm.simulate import simulate_batch, simulate_movie
from neurotrain.tasks.smlm.task import truth_with_crlb

REPO = Path(__file__).resolve().parents[1]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def with_updates(cfg: SMLMConfig, **sections: dict[str, Any]) -> SMLMConfig:
    data = cfg.model_dump()
    for k, v in sections.items():
        data[k] = {**data[k], **v}
    return SMLMConfig.model_validate(data)


def movie(cfg: SMLMConfig, n: int, seed: int, dev: torch.device) -> tuple[torch.Tensor, Any, torch.Tensor]:
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    adus, truths = [], []
    import pandas as pd

    for adu, truth, bg in simulate_movie(cfg, n, g, dev, 512):
        adus.append(adu)
        truths.append(truth)
    return torch.cat(adus), pd.concat(truths, ignore_index=True), bg


def bench_inference(cfg: SMLMConfig, model: torch.nn.Module, size: int, n_frames: int, dev: torch.device,
                    repeats: int, precision: str = "fp32", channels_last: bool = False,
                    batch_256: int = 64) -> dict[str, Any]:
    c = with_updates(cfg, simulate={"frame_size": (size, size)}, inference={"batch_size": None, "precision": precision,
                                                                               "compile": False})
    adu, _, _ = movie(c, n_frames, 7, dev)
    model = model.to(dev).eval()
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    fn = network_fn(model, c)
    win = WindowSource(adu, c.simulate.window // 2)
    bs = max(1, min(n_frames, int(batch_256 * (256 / size) ** 2)))
    with torch.inference_mode():
        fn(win[0:bs])  # warm-up
        sync(dev)
        best = math.inf
        n_locs = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            n_locs = 0
            for s in range(0, n_frames, bs):
                n_locs += int(fn(win[s:min(n_frames, s + bs)])["x_nm"].numel())
            sync(dev)
            best = min(best, time.perf_counter() - t0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    host = adu.cpu()
    c_e2e = with_updates(c, inference={"batch_size": bs})
    t0 = time.perf_counter()
    table = localise_movie(host, c_e2e, model, device=dev)
    sync(dev)
    e2e = time.perf_counter() - t0
    model.to(memory_format=torch.contiguous_format)
    return {"frame_size": size, "precision": precision, "channels_last": channels_last, "frames": n_frames, "batch_frames": bs,
            "device_fps": n_frames / best, "device_ms_per_frame": 1000 * best / n_frames,
            "device_locs_per_s": n_locs / best,
            "end_to_end_fps": n_frames / e2e, "end_to_end_locs": int(len(table)),
            "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None}


def profile_kernels(cfg: SMLMConfig, model: torch.nn.Module, dev: torch.device, batch_256: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    c = with_updates(cfg, simulate={"frame_size": (256, 256)}, inference={"precision": "bf16"})
    adu, _, _ = movie(c, batch_256 + 2, 7, dev)
    model = model.to(dev).eval().to(memory_format=torch.channels_last)
    fn = network_fn(model, c)
    with torch.inference_mode():
        fn(adu)
        sync(dev)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(adu)
            sync(dev)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    model.to(memory_format=torch.contiguous_format)


def train(cfg: SMLMConfig, steps: int, dev: torch.device, batch: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    loss = build_loss(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.optim.lr * 2, total_steps=max(steps, 2), pct_start=0.1)
    g = torch.Generator(device=dev)
    g.manual_seed(cfg.seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0, t_sim, warm = time.perf_counter(), 0.0, min(5, steps // 4)
    for i in range(steps):
        if i == warm:
            sync(dev)
            t0 = time.perf_counter()
        ts = time.perf_counter()
        with torch.no_grad():
            b = simulate_batch(cfg, batch, g, dev)
        if i >= warm and dev.type == "cpu":
            t_sim += time.perf_counter() - ts
        out = loss(model(b["input"]), b)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    sync(dev)
    el = time.perf_counter() - t0
    info = {"steps": steps, "batch": batch, "frame_size": list(cfg.simulate.frame_size),
            "steps_per_s": (steps - warm) / el if el > 0 else None, "final_loss": float(out["loss"]),
            "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None}
    with torch.no_grad():
        sync(dev)
        ts = time.perf_counter()
        for _ in range(5):
            simulate_batch(cfg, batch, g, dev)
        sync(dev)
        info["simulate_batch_ms"] = 1000 * (time.perf_counter() - ts) / 5
    return model.eval(), info


def accuracy(cfg: SMLMConfig, model: torch.nn.Module | None, n_frames: int, dev: torch.device, seed: int,
             baseline: bool = True) -> dict[str, Any]:
    adu, truth_df, bg = movie(cfg, n_frames, seed, dev)
    truth = truth_with_crlb(cfg, truth_df, bg)
    rows: dict[str, Any] = {"n_emitters": int(len(truth_df))}
    low = min(cfg.postprocess.raw_threshold, cfg.postprocess.threshold)
    methods: list[tuple[str, Any, float]] = [("baseline", None, -math.inf)] if baseline else []
    if model is not None:
        methods.insert(0, ("network", model, cfg.postprocess.threshold))
    for name, m, th in methods:
        t0 = time.perf_counter()
        locs = localise_movie(adu.cpu(), cfg, m, threshold=low if m is not None else None, device=dev)
        el = time.perf_counter() - t0
        res, _ = score_table(cfg, locs, truth, th)
        rows[name] = {k: res[k] for k in ("jaccard", "recall", "precision", "rmse_lat_nm", "rmse_ax_nm", "efficiency_lat",
                                          "efficiency_ax", "rmse_over_crlb_lat", "rmse_over_crlb_ax", "crlb_lat_nm")}
        rows[name]["fps"] = n_frames / el
    return rows


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "smlm" / "train.yaml"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--frames", type=int, default=2000, help="frames per inference-speed movie")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--acc-frames", type=int, default=500)
    ap.add_argument("--precisions", default="fp32,bf16", help="inference arithmetic to time (inference.precision)")
    ap.add_argument("--channels-last", default="0,1", help="also time NHWC weights (1), contiguous (0), or both")
    ap.add_argument("--batch-256", type=int, default=64, help="frames per batch at 256x256 (scaled by area)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd U-Nets (NHWC, each non-fp32 precision; inference.compile)")
    ap.add_argument("--compile-modes", default="default",
                    help="torch.compile modes to time with --compile, e.g. default,max-autotune-no-cudagraphs")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one 256x256 bf16 batch")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU-friendly")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable (e.g. --set model.initial_features=32)")
    ap.add_argument("--accuracy", choices=("all", "2d"), default="all", help="movies of the accuracy table")
    ap.add_argument("--no-baseline", action="store_true", help="score only the network in the accuracy table")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    cfg = load_config(a.config, [f"inference.device={dev.type}", *a.set])
    if a.smoke:
        cfg = with_updates(cfg, model={"initial_features": 8, "inter_features": 8, "depth_shared": 1, "depth_union": 1},
                           simulate={"frame_size": (32, 32)})
        a.sizes, a.frames, a.repeats, a.train_steps, a.batch, a.acc_frames = "32,64", 32, 1, 6, 8, 20
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                              "torch": torch.__version__, "model": cfg.model.name,
                              "initial_features": cfg.model.initial_features}
    model_2d, result["train_2d"] = train(cfg, a.train_steps, dev, a.batch)
    n_par = sum(p.numel() for p in model_2d.parameters())
    result["parameters"] = n_par
    precs = [p for p in a.precisions.split(",") if dev.type == "cuda" or p == "fp32"]
    layouts = [bool(int(v)) for v in a.channels_last.split(",")] if dev.type == "cuda" else [False]
    result["inference"] = [bench_inference(cfg, model_2d, int(s), a.frames, dev, a.repeats, p, cl, a.batch_256)
                           for s in a.sizes.split(",") for p in precs for cl in layouts]
    if a.profile and dev.type == "cuda":
        profile_kernels(cfg, model_2d, dev, a.batch_256)
    if a.compile and dev.type == "cuda":
        from neurotrain.tasks.smlm.infer import compiled_for_inference

        modes = a.compile_modes.split(",")
        # CUDA-graph modes reuse output memory on every call; predict keeps frame features across calls
        unsafe = [m for m in modes if m not in ("default", "max-autotune-no-cudagraphs")]
        if unsafe:
            raise SystemExit(f"--compile-modes: {unsafe} use CUDA graphs, which the cached frame features cannot survive")
        for mode in modes:
            # every U-Net shares one forward code object: without a reset, sizes x precisions x modes
            # exceed dynamo's recompile limit and later rows silently run uncompiled
            torch._dynamo.reset()
            compiled = build_model(cfg).to(dev).eval()
            compiled.load_state_dict(model_2d.state_dict())
            compiled = compiled_for_inference(compiled, mode)
            for s in a.sizes.split(","):
                for prec in [p for p in precs if p != "fp32"]:
                    t0 = time.perf_counter()
                    r = bench_inference(cfg, compiled, int(s), a.frames, dev, a.repeats, prec, True, a.batch_256)
                    r["precision"] = f"{prec} compiled ({mode})"
                    r["compile_and_run_s"] = time.perf_counter() - t0
                    result["inference"].append(r)
    cfg3 = with_updates(cfg, psf={"kind": "astigmatic"})
    acc = {}
    runs = (("2D low", cfg, model_2d), ("2D high", cfg, model_2d))
    if not a.skip_accuracy and a.accuracy == "all":
        model_3d, result["train_3d"] = train(cfg3, a.train_steps, dev, a.batch)
        runs += (("3D low", cfg3, model_3d), ("3D high", cfg3, model_3d))
    for name, c, m in runs if not a.skip_accuracy else ():
        dens = 0.1 if "low" in name else 1.0
        acc[name] = accuracy(with_updates(c, simulate={"density_per_um2": dens}), m, a.acc_frames, dev, seed=2024,
                             baseline=not a.no_baseline)
        acc[name]["density_per_um2"] = dens
    result["accuracy"] = acc
    print(json.dumps(result, indent=2))
    lines = [f"### smlm on {result['device']} ({cfg.model.name}, {n_par/1e6:.2f} M parameters)", "",
             "| frame | arithmetic | device frames/s | ms/frame | locs/s | end-to-end frames/s | peak GB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["inference"]:
        lay = ", NHWC" if r["channels_last"] else ""
        lines.append(f"| {r['frame_size']}x{r['frame_size']} | {r['precision']}{lay} | {fmt(r['device_fps'])} | {fmt(r['device_ms_per_frame'])} | "
                     f"{fmt(r['device_locs_per_s'])} | {fmt(r['end_to_end_fps'])} | {fmt(r['peak_mem_gb'])} |")
    for k in ("train_2d", "train_3d"):
        if k not in result:
            continue
        t = result[k]
        lines.append(f"\n{k}: {fmt(t['steps_per_s'])} steps/s at batch {t['batch']} ({t['frame_size'][0]}x{t['frame_size'][1]}), "
                     f"simulation {fmt(t['simulate_batch_ms'])} ms/batch, peak {fmt(t['peak_mem_gb'])} GB, {t['steps']} steps")
    lines += ["", "| movie | method | JI % | RMSE lat nm | RMSE ax nm | E lat | E ax | RMSE/CRLB lat | RMSE/CRLB ax |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in acc.items():
        for mth in ("network", "baseline"):
            if mth in rows:
                r = rows[mth]
                lines.append(f"| {name} | {mth} | {fmt(r['jaccard'])} | {fmt(r['rmse_lat_nm'])} | {fmt(r['rmse_ax_nm'])} | "
                             f"{fmt(r['efficiency_lat'])} | {fmt(r['efficiency_ax'])} | {fmt(r['rmse_over_crlb_lat'])} | "
                             f"{fmt(r['rmse_over_crlb_ax'])} |")
    md = "\n".join(lines)
    print(md)
    result["markdown"] = md
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
