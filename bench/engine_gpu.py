"""GPU check of the engine: bf16-mixed + torch.compile + resume, 16-mixed scaler state, DDP.

Uses the toy regression task from tests/ so that it checks the engine alone. Run on a
CUDA machine: ``python bench/engine_gpu.py --out bench/results/engine_gpu.json``.
With two or more GPUs it also runs ``devices=2, strategy=ddp``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import toy_task  # noqa: E402,F401
from neurotrain.config import validate_config  # noqa: E402
from neurotrain.engine import api  # noqa: E402
from neurotrain.engine.checkpoint import load_checkpoint  # noqa: E402


def cfg_for(out: Path, name: str, **trainer):
    data = {
        "task": "toy",
        "seed": 1,
        "run": {"name": name, "output_dir": str(out)},
        "model": {"width": 512, "n_in": 64, "n_out": 8},
        "trainer": {"max_epochs": 2, "accelerator": "gpu", "devices": 1, "progress_bar": False, **trainer},
        "optim": {"name": "adamw", "lr": 3e-3},
        "sched": {"name": "cosine", "warmup_steps": 5},
        "data": {"batch_size": 256, "sim_train_size": 256 * 20, "sim_val_size": 1024},
    }
    return validate_config(data, "engine_gpu")


def run_resume(out: Path, name: str, **trainer) -> dict:
    t0 = time.perf_counter()
    cfg = cfg_for(out, name, **trainer)
    run = api.train(cfg)
    first = load_checkpoint(run / "checkpoints" / "last.ckpt")
    cfg4 = cfg_for(out, name, **{**trainer, "max_epochs": 4})
    api.train(cfg4, resume=True)
    second = load_checkpoint(run / "checkpoints" / "last.ckpt")
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    return {
        "trainer": trainer,
        "first": {"epoch": first["epoch"], "global_step": first["global_step"]},
        "resumed": {"epoch": second["epoch"], "global_step": second["global_step"]},
        "amp_scaler_state_saved": "MixedPrecision" in second or any("scaler" in k.lower() for k in second),
        "val_loss": metrics.get("val/loss"),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine_gpu.json")
    ap.add_argument("--ddp", action="store_true", help="only the 2-GPU DDP run (a separate process tree)")
    ap.add_argument("--workdir", type=Path, default=None, help="run folder (default: a temporary one)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("engine_gpu: no CUDA device; skipped")
        return 0
    results: dict = {"device": torch.cuda.get_device_name(0), "n_gpus": torch.cuda.device_count(),
                     "torch": torch.__version__}
    # Lightning's DDP launcher re-runs this script in each rank: the DDP run is its own
    # invocation with a fixed work folder so that every rank agrees on it.
    with tempfile.TemporaryDirectory() as tmp:
        out = args.workdir or Path(tmp)
        if not args.ddp:
            results["bf16_compile_resume"] = run_resume(out, "bf16", precision="bf16-mixed", compile=True)
            results["fp16_resume"] = run_resume(out, "fp16", precision="16-mixed")
        elif torch.cuda.device_count() >= 2:
            t0 = time.perf_counter()
            cfg = cfg_for(out, "ddp", devices=2, strategy="ddp")
            run = api.train(cfg)
            ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
            results["ddp2"] = {"global_step": ck["global_step"], "epoch": ck["epoch"],
                               "seconds": round(time.perf_counter() - t0, 2)}
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        text = json.dumps(results, indent=2)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
