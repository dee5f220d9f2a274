"""Multi-GPU scaling (issue 22): gamma, smlm and deflare training on 1 GPU and on 2 GPUs with DDP.

Each configuration is one ``neurotrain train configs/<task>/train.yaml ... trainer.devices=N`` in its own
process, simulation on the device inside the step, bf16, the same batch per GPU. Per task and GPU count:

* samples/s: ``train/samples_per_sec`` of the run's ``metrics.json`` (the engine's ``StepThroughput``: all
  ranks, after 10 warm-up steps, validation and checkpoint writing left out);
* scaling efficiency = 2-GPU samples/s / (2 x 1-GPU samples/s) (issue 22's target: >= 0.90);
* validation loss at equal samples seen: the 2-GPU run takes half the steps of the 1-GPU run (one epoch of
  ``steps x batch`` samples each, the same warm-up fraction), both validate on the same batches.

With fewer than two GPUs only the 1-GPU column is measured and the script says that 2-GPU was not run.
``--sync-debug`` adds one short 1-GPU run per task with ``torch.cuda.set_sync_debug_mode("warn")`` on
during the training steps only (simulation, forward, backward, optimiser) and reports where a step makes
the host wait for the device. ``--profile`` adds one run per task on the most devices under
``torch.profiler``: per rank, wall ms per step against device ms in NCCL (the gradient all-reduce) and in
everything else, plus the top-25 kernel table (``profile-<task>-<N>x-rank<r>.txt`` beside ``--out``).

    python bench/scaling.py --out bench/results/scaling.json                # 2 x H200: ~6 min
    python bench/scaling.py --sync-debug --tasks gamma --steps gamma=100     # where the host waits
    python bench/scaling.py --profile --out bench/results/scaling.json       # + where a 2-GPU step goes
    python bench/scaling.py --accelerator cpu --config quickstart --precision 32 --tasks gamma \\
        --steps gamma=24 --set trainer.limit_val_batches=2                    # CPU smoke run (2 gloo ranks)

Prints JSON and a markdown table; ``--out`` writes the JSON and the table (``.md`` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("gamma", "smlm", "deflare")
#: 1-GPU steps per task: about half a minute of training each on an H200 at the configs' batch (gamma 22.5,
#: smlm 13.6 steps/s in the README; deflare not measured before, guessed at ~5 steps/s)
DEFAULT_STEPS = {"gamma": 600, "smlm": 400, "deflare": 150}
#: Monte Carlo photons of gamma's detector response for the bench (the response is built once, cached in the
#: bench folder and shared by both runs; its size, and so the training step, does not depend on this)
GAMMA_PHOTONS = 4000
WARMUP_FRACTION = 0.1  # of the run's optimiser steps: the cosine schedule's linear warm-up
SYNC_DEBUG_STEPS = 30
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

# Runs `neurotrain train` with the device's sync debug mode on from the moment a training batch is simulated
# to the end of its optimiser step, and writes where synchronising calls came from (innermost non-torch frame).
SYNC_LAUNCHER = """
import collections, json, sys, traceback, warnings
import torch
from lightning.pytorch.callbacks import Callback
from neurotrain.engine import module as M

hits = collections.Counter()
_show = warnings.showwarning
def show(message, category, filename, lineno, file=None, line=None):
    if "synchronizing CUDA operation" not in str(message):
        return _show(message, category, filename, lineno, file, line)
    # the innermost frame outside torch: the neurotrain or Lightning line that asked for the value
    frames = [f for f in traceback.extract_stack()[:-1]
              if "/torch/" not in f.filename and "warnings" not in f.filename and f.filename != __file__]
    f = frames[-1] if frames else None
    name = f.filename.split("site-packages/")[-1].split("/src/")[-1] if f else "?"
    hits[f"{{name}}:{{f.lineno}} ({{f.line}})" if f else "?"] += 1
warnings.showwarning = show
warnings.simplefilter("always")

_after = M.TaskModule.on_after_batch_transfer
def after(self, batch, idx):
    if self.trainer.training:
        torch.cuda.set_sync_debug_mode("warn")
    return _after(self, batch, idx)
M.TaskModule.on_after_batch_transfer = after

class Off(Callback):
    def on_train_batch_end(self, *args):
        torch.cuda.set_sync_debug_mode(0)
_callbacks = M.TaskModule.configure_callbacks
M.TaskModule.configure_callbacks = lambda self: _callbacks(self) + [Off()]

from neurotrain.cli import main
try:
    main()
finally:
    with open({report!r}, "w") as fh:
        json.dump(dict(hits.most_common()), fh, indent=2)
"""

# Runs `neurotrain train` with torch.profiler on every rank over PROFILE_ACTIVE steps after PROFILE_WAIT steps,
# and writes per rank: the wall time of that window (device-synced at both ends), the device time in
# NCCL kernels (gradient all-reduce) and in all other kernels, and the top-25 table by device time.
# compute + nccl close to the wall time means the all-reduce did not overlap the backward pass.
PROFILE_LAUNCHER = """
import json, time, torch
from lightning.pytorch.callbacks import Callback
from torch.profiler import ProfilerActivity, profile, schedule
from neurotrain.engine import module as M

WAIT, WARM, ACTIVE, OUT = {wait}, 3, {active}, {out!r}

class Prof(Callback):
    def on_train_start(self, trainer, pl_module):
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.p = profile(activities=acts, schedule=schedule(wait=WAIT, warmup=WARM, active=ACTIVE))
        self.p.__enter__()
        self.n, self.t = 0, {{}}
    def on_train_batch_end(self, trainer, pl_module, *args):
        self.n += 1
        if self.n in (WAIT + WARM, WAIT + WARM + ACTIVE):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t[self.n] = time.perf_counter()
        self.p.step()
    def on_train_end(self, trainer, pl_module):
        self.p.__exit__(None, None, None)
        ev = self.p.key_averages()
        nccl = sum(e.self_device_time_total for e in ev if "nccl" in e.key.lower()) / 1e3 / ACTIVE
        other = sum(e.self_device_time_total for e in ev if "nccl" not in e.key.lower()) / 1e3 / ACTIVE
        keys = sorted(self.t)
        wall = (self.t[keys[-1]] - self.t[keys[0]]) * 1e3 / ACTIVE if len(keys) == 2 else None
        r = trainer.global_rank
        with open(f"{{OUT}}-rank{{r}}.json", "w") as fh:
            json.dump({{"rank": r, "steps": ACTIVE, "wall_ms_per_step": wall, "nccl_ms_per_step": nccl,
                       "other_device_ms_per_step": other}}, fh, indent=2)
        with open(f"{{OUT}}-rank{{r}}.txt", "w") as fh:
            fh.write(ev.table(sort_by="self_device_time_total", row_limit=25))

_callbacks = M.TaskModule.configure_callbacks
M.TaskModule.configure_callbacks = lambda self: _callbacks(self) + [Prof()]

from neurotrain.cli import main
main()
"""
PROFILE_WAIT, PROFILE_ACTIVE = 12, 10


def neurotrain_command() -> list[str]:
    """The ``neurotrain`` console script of this interpreter's environment (``python -m`` as fallback)."""
    script = Path(sys.executable).with_name("neurotrain")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "neurotrain.cli"]


def overrides_for(task: str, config: Path, devices: int, steps: int, args: argparse.Namespace, work: Path) -> list[str]:
    """``a.b=c`` overrides of one configuration: one epoch of ``steps`` batches on each of ``devices`` devices."""
    from neurotrain.config import load_config

    base = load_config(config)
    out = [
        f"run.output_dir={work / 'runs'}", f"run.name={task}-{devices}x",
        f"trainer.accelerator={args.accelerator}", f"trainer.devices={devices}",
        f"trainer.strategy={'ddp' if devices > 1 else 'auto'}", f"trainer.precision={args.precision}",
        "trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.max_time=null", "trainer.progress_bar=false",
        "trainer.early_stopping.enabled=false", "trainer.val_check_interval=1.0",
        # one epoch of `steps` batches on every rank: devices x steps x batch samples in all
        f"data.sim_train_size={steps * devices * base.data.batch_size}",
        f"sched.warmup_steps={max(1, int(steps * WARMUP_FRACTION))}",
        f"logging.log_every_n_steps={max(1, steps // 4)}",
    ]
    if task == "gamma":
        out += [f"simulate.response_photons={args.gamma_photons}", f"simulate.cache_dir={work / 'gamma-cache'}"]
    if args.lr_scaling != "none" and devices > 1:
        factor = devices if args.lr_scaling == "linear" else devices**0.5
        out.append(f"optim.lr={base.optim.lr * factor}")
    return out + list(args.set or [])


def run_config(task: str, config: Path, devices: int, steps: int, args: argparse.Namespace, work: Path,
               launcher: list[str] | None = None) -> dict:
    """Train ``steps`` optimiser steps on ``devices`` devices (one epoch) and read back the run's metrics."""
    from neurotrain.config import load_config

    overrides = overrides_for(task, config, devices, steps, args, work)
    batch = load_config(config, overrides).data.batch_size
    name = f"{task}-{devices}x"
    cmd = (launcher or neurotrain_command()) + ["train", str(config), *overrides, "--overwrite"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # NVLink multicast stays off on shared hosts (a program using it can take the host's GPUs down)
    for k, v in NVLS_OFF.items():
        env.setdefault(k, v)
    t0 = time.perf_counter()
    row: dict = {"devices": devices, "steps_per_gpu": steps, "batch_per_gpu": batch,
                 "samples_seen": steps * devices * batch}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=work)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {args.timeout} s (--timeout)"}
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        return row
    metrics = json.loads((work / "runs" / task / name / "metrics.json").read_text())["train"]
    sps = metrics.get("train/samples_per_sec")
    row.update(samples_per_s=round(sps, 1) if sps else None, val_loss=metrics.get("val/loss"),
               global_step=metrics.get("global_step"))
    return row


def sync_debug(task: str, config: Path, args: argparse.Namespace, work: Path) -> dict:
    report = work / f"sync-{task}.json"
    launcher = work / "sync_launcher.py"
    launcher.write_text(SYNC_LAUNCHER.format(report=str(report)))
    row = run_config(task, config, 1, SYNC_DEBUG_STEPS, args, work, [sys.executable, str(launcher)])
    hits = json.loads(report.read_text()) if report.is_file() else {}
    return {"steps": SYNC_DEBUG_STEPS, "syncs": sum(hits.values()), "where": hits, **({"error": row["error"]} if "error" in row else {})}


def profile_run(task: str, config: Path, devices: int, args: argparse.Namespace, work: Path, dest: Path) -> dict:
    """One profiled run of ``devices`` devices; tables and per-rank JSON land in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    prefix = dest / f"profile-{task}-{devices}x"
    launcher = work / "profile_launcher.py"
    launcher.write_text(PROFILE_LAUNCHER.format(wait=PROFILE_WAIT, active=PROFILE_ACTIVE, out=str(prefix)))
    steps = PROFILE_WAIT + 3 + PROFILE_ACTIVE + 2
    row = run_config(task, config, devices, steps, args, work, [sys.executable, str(launcher)])
    ranks = [json.loads(p.read_text()) for p in sorted(dest.glob(f"{prefix.name}-rank*.json"))]
    return {"devices": devices, "ranks": ranks, **({"error": row["error"]} if "error" in row else {})}


def markdown(res: dict) -> str:
    lines = [f"device: {res['device']}; precision {res['precision']}; {res['note']}", "",
             "| task | batch/GPU | 1-GPU samples/s | 2-GPU samples/s | efficiency | samples seen | val loss 1 GPU | val loss 2 GPUs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for task, r in res["tasks"].items():
        one, two = r.get("1", {}), r.get("2", {})

        def f(v, nd=1):
            return "-" if v is None else f"{v:,.{nd}f}" if isinstance(v, (int, float)) else str(v)

        eff = r.get("efficiency")
        lines.append(f"| {task} | {one.get('batch_per_gpu', '-')} | {f(one.get('samples_per_s'))} | "
                     f"{f(two.get('samples_per_s')) if two else 'not run'} | {f(eff, 3) if eff is not None else '-'} | "
                     f"{one.get('samples_seen', '-')} | {f(one.get('val_loss'), 4)} | {f(two.get('val_loss'), 4) if two else '-'} |")
    for task, r in res["tasks"].items():
        for k in ("1", "2"):
            if "error" in r.get(k, {}):
                lines.append(f"\n{task} {k}-GPU failed: {r[k]['error']}")
        for p in r.get("profile", {}).get("ranks", []):
            lines.append(f"\n{task} profile, {r['profile']['devices']} devices, rank {p['rank']}: "
                         f"{p['wall_ms_per_step'] or 0:.2f} ms/step wall, {p['other_device_ms_per_step']:.2f} ms compute "
                         f"+ {p['nccl_ms_per_step']:.2f} ms NCCL on the device")
        if "sync_debug" in r:
            s = r["sync_debug"]
            lines.append(f"\n{task}: {s['syncs']} host syncs in {s['steps']} training steps: " +
                         "; ".join(f"{w} x{n}" for w, n in s["where"].items()))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--config", default="train", help="configs/<task>/<config>.yaml")
    ap.add_argument("--steps", action="append", default=[], metavar="TASK=N", help="1-GPU steps of a task")
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--accelerator", default="gpu")
    ap.add_argument("--gpus", type=int, default=2, help="largest device count to run (1 or 2)")
    ap.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"), default="none",
                    help="learning rate of the N-GPU runs: unchanged, x N or x sqrt(N)")
    ap.add_argument("--gamma-photons", type=int, default=GAMMA_PHOTONS)
    ap.add_argument("--set", action="append", help="an extra a.b=c override for every run")
    ap.add_argument("--sync-debug", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="one more run per task on the most devices, under torch.profiler (tables beside --out)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run")
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    steps = dict(DEFAULT_STEPS)
    for item in args.steps:
        k, _, v = item.partition("=")
        steps[k] = int(v)

    import torch

    if args.accelerator == "gpu":
        visible = torch.cuda.device_count()
        if visible == 0:
            print("no GPU visible: pass --accelerator cpu for a CPU smoke run", file=sys.stderr)
            return 2
        device = torch.cuda.get_device_name(0)
    else:
        visible, device = os.cpu_count() or 1, "cpu"
    counts = [n for n in (1, 2) if n <= min(args.gpus, visible)]
    note = ("1 and 2 devices" if 2 in counts else "2-GPU not run: --gpus 1" if args.gpus < 2
            else f"2-GPU not run: {visible} device(s) visible")
    if 2 not in counts:
        print(f"scaling: {note}; measuring 1 GPU only", file=sys.stderr)
    work = args.work or Path(tempfile.mkdtemp(prefix="nt-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": device, "devices_visible": visible, "precision": args.precision, "note": note,
                 "torch": torch.__version__, "lr_scaling": args.lr_scaling, "tasks": {}}
    t_all = time.perf_counter()
    try:
        for task in args.tasks:
            config = REPO / "configs" / task / f"{args.config}.yaml"
            r: dict = {}
            for n in counts:
                # the same samples seen: N GPUs take 1/N of the 1-GPU steps
                r[str(n)] = run_config(task, config, n, max(1, steps[task] // n), args, work)
                print(f"{task} {n}x: {r[str(n)]}", flush=True)
            one, two = r.get("1", {}).get("samples_per_s"), r.get("2", {}).get("samples_per_s")
            r["efficiency"] = round(two / (2 * one), 3) if one and two else None
            if args.sync_debug and args.accelerator == "gpu":
                r["sync_debug"] = sync_debug(task, config, args, work)
            if args.profile:
                dest = args.out.parent if args.out else Path.cwd()
                r["profile"] = profile_run(task, config, counts[-1], args, work, dest)
            res["tasks"][task] = r
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    table = markdown(res)
    print(json.dumps(res, indent=2))
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")
    return 0 if all("error" not in v for r in res["tasks"].values() for v in r.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
