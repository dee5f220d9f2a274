"""deflare benchmark: seconds per 100 ms event file end to end, per stage; training step cost.

End to end = read H5 -> encode (20 ms / 8-bin voxels, one index_add_) -> TrueResidualUNet3D
-> decode (integer counts, uniform timestamps) -> write H5 (gzip), for a 100 ms file of
2.8M events at 480x640 (the seed's file size: "2,784,964个事件 (100ms数据)", 7-10 s per
file in the seed's system). Also: encoder alone on the device vs NumPy ``add.at`` (the
seed's old encoder), network alone (fp32 / bf16), and the training step time and peak
memory of the 7.07M-parameter model at batch 1 and 4 (random voxels), and the real training
step of ``configs/deflare/train.yaml`` (480x640 batches simulated on the device + forward +
signal-weighted MSE + backward + Adam, bf16-mixed as in the config): steps/s and the
simulator's share. Events/s = input events / end-to-end seconds per file.

    python bench/deflare.py --out bench/results/deflare.json          # CUDA when available (< 5 min on one H200)
    python bench/deflare.py --events 200000 --height 120 --width 160 --f-maps 8,16 --repeats 1   # CPU smoke run

Prints JSON and a markdown table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurotrain.tasks.deflare.io import EventWriter
from neurotrain.tasks.deflare.models import TrueResidualUNet3D, count_parameters
from neurotrain.tasks.deflare.postprocess import model_fn, process_file
from neurotrain.tasks.deflare.config import DeflareConfig
from neurotrain.tasks.deflare.voxel import events_to_voxel

STAGES = ("read", "encode", "network", "decode", "write")
# "default": the pipeline's defaults (the file's five 20 ms segments in one network call, I/O
# threads). "serial": no I/O threads, each stage's own cost. "streamed": one segment per
# network call, reading ahead and writing behind in threads while the device works (stage
# seconds are then what the device loop waits for).
PIPELINES = {
    "default": {},
    "serial": {"io_queue_depth": 0},
    "streamed": {"batch_segments": 1, "chunk_events": 1 << 18},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_file(path: Path, n: int, h: int, w: int, duration_us: int, seed: int = 0) -> None:
    """A 100 ms recording of ``n`` events: half from 40 moving edges, half spread uniformly."""
    r = np.random.default_rng(seed)
    t = np.sort(r.integers(0, duration_us, n))
    k = n // 2
    edge = r.integers(0, 40, k)
    x0, vx = r.uniform(0, w, 40), r.uniform(-2e-3, 2e-3, 40)  # px/µs
    x = np.concatenate([(x0[edge] + vx[edge] * t[:k] + r.normal(0, 1.5, k)) % w, r.uniform(0, w, n - k)]).astype(np.int64)
    y = r.integers(0, h, n)
    p = np.where(r.random(n) < 0.5, 1, -1)
    with EventWriter(path, attrs={"sensor_size": [h, w]}) as wr:
        wr.append(t, x, y, p)


def time_file(cfg: DeflareConfig, fn, path: Path, out: Path, device: torch.device, repeats: int) -> dict:
    process_file(path, out, fn, cfg, device)  # warm-up (cuDNN autotune, allocator, page cache)
    runs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        r = process_file(path, out, fn, cfg, device)
        sync(device)
        wall = time.perf_counter() - t0
        runs.append((wall, r))
    walls = [w for w, _ in runs]
    med = statistics.median(walls)
    stage = {s: statistics.median(r.seconds[s] for _, r in runs) for s in STAGES}
    tot = sum(stage.values())
    return {
        "seconds_per_file": med,
        "events_per_second": runs[-1][1].events_in / med,
        "stage_seconds": stage,
        "stage_share": {s: stage[s] / tot for s in STAGES},
        "events_in": runs[-1][1].events_in,
        "events_out": runs[-1][1].events_out,
        "segments": runs[-1][1].segments,
    }


def time_encoder(n: int, h: int, w: int, device: torch.device, repeats: int = 20) -> dict:
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 100_000, (n,), generator=g).sort().values
    x, y = torch.randint(0, w, (n,), generator=g), torch.randint(0, h, (n,), generator=g)
    p = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    seg = t // 20_000
    starts = torch.arange(5) * 20_000
    td, xd, yd, pd, sd, st = (a.to(device) for a in (t, x, y, p, seg, starts))
    for _ in range(3):
        events_to_voxel(td, xd, yd, pd, num_bins=8, sensor_size=(h, w), duration_us=20_000, t_start=st, segment=sd, num_segments=5)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        v = events_to_voxel(td, xd, yd, pd, num_bins=8, sensor_size=(h, w), duration_us=20_000, t_start=st, segment=sd, num_segments=5)
    sync(device)
    dev_s = (time.perf_counter() - t0) / repeats
    tn, xn, yn, pn = t.numpy(), x.numpy(), y.numpy(), p.numpy()
    t0 = time.perf_counter()
    ref = np.zeros((5, 8, h, w), np.float32)
    np.add.at(ref, (tn // 20_000, (tn % 20_000) * 8 // 20_000, yn, xn), pn)
    np_s = time.perf_counter() - t0
    assert np.array_equal(ref, v.cpu().numpy()), "encoder disagrees with the NumPy reference"
    return {"events": n, "device_seconds": dev_s, "numpy_add_at_seconds": np_s}


def time_network(model: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> dict:
    out = {}
    for prec in ("fp32", "bf16"):
        if prec == "bf16" and device.type == "cpu":
            continue
        fn = model_fn(model, device, prec)
        with torch.no_grad():
            for _ in range(2):
                fn(x)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn(x)
            sync(device)
        out[prec] = (time.perf_counter() - t0) / repeats
    return out


def time_training(f_maps: list[int], h: int, w: int, device: torch.device, batches: list[int], steps: int) -> dict:
    res = {}
    for bs in batches:
        for prec in ("fp32", "bf16"):
            if device.type == "cpu" and prec == "bf16":
                continue
            model = TrueResidualUNet3D(f_maps=f_maps, num_levels=len(f_maps)).to(device).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            x = torch.randn(bs, 1, 8, h, w, device=device)
            y = torch.randn(bs, 1, 8, h, w, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                for i in range(steps + 2):
                    if i == 2:
                        sync(device)
                        t0 = time.perf_counter()
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                        loss = torch.nn.functional.mse_loss(model(x).float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                sync(device)
                step_s = (time.perf_counter() - t0) / steps
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                res[f"batch{bs}_{prec}"] = {"step_seconds": step_s, "steps_per_second": 1 / step_s, "peak_memory_gib": peak}
            except torch.OutOfMemoryError:
                res[f"batch{bs}_{prec}"] = {"error": "out of memory"}
            del model, opt, x, y
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return res


def time_config_training(config: Path, device: torch.device, steps: int, overrides: list[str]) -> dict:
    """Training steps/s of a deflare config as ``neurotrain train`` runs it: a batch simulated
    on the device (``task.simulate_batch``), forward under the config's precision, the
    config's loss, backward, optimiser step. Returns seconds per step and per simulated batch."""
    import neurotrain.tasks  # noqa: F401  (registers the task)
    from neurotrain.config import load_config
    from neurotrain.registry import TASKS

    cfg = load_config(config, overrides)
    task = TASKS.get("deflare")
    model = task.build_model(cfg).to(device).train()
    loss_fn = task.build_loss(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    bf16 = "bf16" in str(cfg.trainer.precision) and device.type == "cuda"
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    bs = cfg.data.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sim_s = step_s = 0.0
    for i in range(steps + 1):  # step 0 warms up (cuDNN autotune, allocator)
        sync(device)
        t0 = time.perf_counter()
        batch = task.simulate_batch(cfg, bs, gen, device)
        sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(batch["input"])
        loss = loss_fn(pred, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        t2 = time.perf_counter()
        if i:
            sim_s += t1 - t0
            step_s += t2 - t0
    step_s, sim_s = step_s / steps, sim_s / steps
    return {
        "config": str(config), "batch_size": bs, "sensor_size": list(cfg.voxel.sensor_size), "precision": str(cfg.trainer.precision),
        "step_seconds": step_s, "steps_per_second": 1 / step_s, "simulate_seconds": sim_s, "simulate_share": sim_s / step_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def markdown(r: dict) -> str:
    lines = [f"### deflare on {r['device_name']}", ""]
    lines.append(f"File: {r['file']['events']} events, {r['file']['duration_ms']} ms, {r['file']['height']}x{r['file']['width']}; "
                 f"model {r['model']['parameters']:,} parameters (f_maps {r['model']['f_maps']}).")
    lines.append("")
    lines.append("| precision, pipeline | s / file | Mevents/s | " + " | ".join(STAGES) + " |")
    lines.append("| --- | ---: | ---: |" + " ---: |" * len(STAGES))
    for prec, e in r["end_to_end"].items():
        lines.append(f"| {prec} | {e['seconds_per_file']:.3f} | {e['events_per_second'] / 1e6:.1f} | " + " | ".join(
            f"{e['stage_seconds'][s]:.3f} s ({100 * e['stage_share'][s]:.0f}%)" for s in STAGES) + " |")
    enc = r["encoder"]
    lines.append("")
    lines.append(f"Encoder, {enc['events']} events: {1e3 * enc['device_seconds']:.2f} ms on {r['device']} vs "
                 f"{enc['numpy_add_at_seconds']:.2f} s with NumPy add.at.")
    lines.append("Network alone (5 segments): " + ", ".join(f"{k} {v:.3f} s" for k, v in r["network_only"].items()) + ".")
    if r.get("training"):
        lines.append("")
        lines.append("| training (random voxels) | step s | steps/s | peak GiB |")
        lines.append("| --- | ---: | ---: | ---: |")
        for k, v in r["training"].items():
            if "error" in v:
                lines.append(f"| {k} | {v['error']} | |")
            else:
                pk = "-" if v["peak_memory_gib"] is None else f"{v['peak_memory_gib']:.2f}"
                lines.append(f"| {k} | {v['step_seconds']:.3f} | {v['steps_per_second']:.2f} | {pk} |")
    ct = r.get("config_training")
    if ct:
        pk = "-" if ct["peak_memory_gib"] is None else f"{ct['peak_memory_gib']:.2f}"
        lines.append("")
        lines.append(f"Training as `{ct['config']}` runs it (batch {ct['batch_size']}, {ct['sensor_size'][0]}x{ct['sensor_size'][1]}, "
                     f"{ct['precision']}, simulated on the device): {ct['steps_per_second']:.2f} steps/s "
                     f"({ct['step_seconds']:.3f} s/step, simulator {100 * ct['simulate_share']:.0f}%), peak {pk} GiB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_800_000)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--duration-us", type=int, default=100_000)
    ap.add_argument("--f-maps", default="32,64,128,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--train-batches", default="1,4")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--no-train", action="store_true", help="skip the training-step measurements")
    ap.add_argument("--train-config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "deflare" / "train.yaml")
    ap.add_argument("--config-steps", type=int, default=5, help="timed steps of --train-config (after one warm-up)")
    ap.add_argument("--set", action="append", default=[], help="override of --train-config, a.b=c (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    f_maps = [int(f) for f in a.f_maps.split(",")]
    res: dict = {
        "task": "deflare",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "file": {"events": a.events, "duration_ms": a.duration_us / 1000, "height": a.height, "width": a.width},
    }
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.h5", Path(tmp) / "out.h5"
        t0 = time.perf_counter()
        make_file(src, a.events, a.height, a.width, a.duration_us)
        res["file"]["make_seconds"] = time.perf_counter() - t0
        res["file"]["bytes"] = src.stat().st_size
        model = TrueResidualUNet3D(f_maps=f_maps, num_levels=len(f_maps)).to(device).eval()
        res["model"] = {"parameters": count_parameters(model), "f_maps": f_maps}
        res["end_to_end"] = {}
        for prec in ("fp32", "bf16"):
            if prec == "bf16" and device.type == "cpu":
                continue
            for variant, pipeline in PIPELINES.items():
                cfg = DeflareConfig.model_validate({
                    "model": {"f_maps": f_maps, "num_levels": len(f_maps)},
                    "voxel": {"sensor_size": [a.height, a.width]},
                    "pipeline": pipeline,
                    "inference": {"precision": prec},
                })
                fn = model_fn(model, device, prec)
                res["end_to_end"][f"{prec} {variant}"] = time_file(cfg, fn, src, dst, device, a.repeats)
        res["encoder"] = time_encoder(a.events, a.height, a.width, device)
        x = torch.zeros(5, 1, 8, a.height, a.width, device=device)
        res["network_only"] = time_network(model, x, device, a.repeats)
        del model, x
        if not a.no_train:
            res["training"] = time_training(f_maps, a.height, a.width, device, [int(b) for b in a.train_batches.split(",")], a.train_steps)
            if a.config_steps > 0:
                res["config_training"] = time_config_training(a.train_config, device, a.config_steps, a.set)
    print(json.dumps(res, indent=2))
    print()
    print(markdown(res))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
