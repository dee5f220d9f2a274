"""gamma benchmark: inference spectra/s (fp32 and bf16) for 4096-channel spectra at batch 1024, simulator
spectra/s, training steps/s, peak GPU memory; the Richardson-Lucy baseline's spectra/s at the same size.

Sizes follow ``configs/gamma/train.yaml`` (ImprovedSpectralResNet1D, base 32, depth 5, widths capped at 256,
4096 channels, training batch 128).

    python bench/gamma.py --out bench/results/gamma.json            # CUDA when available
    python bench/gamma.py --channels 512 --batch 16 --base 8 --depth 3 --repeats 1 --photons 200   # CPU smoke run

Prints JSON and a markdown table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _timing import peak_mem_gb, reset_mem, sync, timed, write_report

from neurotrain.tasks.gamma import baseline as bl
from neurotrain.tasks.gamma import simulate as S
from neurotrain.tasks.gamma.losses import build_loss
from neurotrain.tasks.gamma.models import build_model
from neurotrain.tasks.gamma.config import GammaConfig


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1024, help="inference batch")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--sim-batch", type=int, default=256)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--max-channels", type=int, default=256, help="cap on a stage's width (0: none)")
    ap.add_argument("--photons", type=int, default=4000, help="Monte Carlo photons per incident energy")
    ap.add_argument("--rl-iterations", type=int, default=200)
    ap.add_argument("--rl-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cache = Path(tempfile.mkdtemp(prefix="gamma-bench-"))
    cfg = GammaConfig(
        simulate={"n_channels": args.channels, "response_photons": args.photons, "cache_dir": str(cache)},
        model={"base_channels": args.base, "depth": args.depth, "max_channels": args.max_channels or None},
        baseline={"iterations": args.rl_iterations},
    )
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "channels": args.channels}

    # response Monte Carlo (once per geometry)
    t0 = time.perf_counter()
    resp = S.build_response(cfg.simulate, device)
    sync(device)
    res["response_build_s"] = round(time.perf_counter() - t0, 2)
    S._MEMO[(resp.key, str(device))] = resp.to(device)

    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    reset_mem(device)
    t = timed(lambda: S.simulate_batch(cfg, args.sim_batch, gen, device), device, args.repeats)
    res["simulator_spectra_per_s"] = round(args.sim_batch / t, 1)
    res["simulator_peak_mem_gb"] = peak_mem_gb(device)

    model = build_model(cfg).to(device)
    res["parameters"] = sum(p.numel() for p in model.parameters())
    x = torch.rand(args.batch, 3, args.channels, device=device)
    cond = torch.tensor([[0.1, 0.5]], device=device).expand(args.batch, 2)
    model.eval()
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        if dtype is not None and device.type == "cpu":
            continue
        reset_mem(device)

        def infer() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(x, cond)

        t = timed(infer, device, args.repeats)
        res[f"inference_{name}_spectra_per_s"] = round(args.batch / t, 1)
        res[f"inference_{name}_peak_mem_gb"] = peak_mem_gb(device)

    # training step: simulate on the device + forward + backward + AdamW
    model.train()
    loss = build_loss(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_bf16 = device.type == "cuda"

    def step() -> None:
        with torch.no_grad():
            b = S.simulate_batch(cfg, args.train_batch, gen, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(b["input"], b["fwhm_params"])
        val = loss(out.float(), b)["loss"]
        opt.zero_grad(set_to_none=True)
        val.backward()
        opt.step()

    reset_mem(device)
    t = timed(step, device, args.repeats)
    res["train_steps_per_s"] = round(1 / t, 2)
    res["train_batch"] = args.train_batch
    res["train_peak_mem_gb"] = peak_mem_gb(device)

    # Richardson-Lucy baseline at the same size
    counts = torch.rand(args.rl_batch, args.channels, device=device) * 100
    reset_mem(device)
    t = timed(lambda: bl.run_baseline(cfg, counts), device, max(1, args.repeats // 2))
    res["rl_spectra_per_s"] = round(args.rl_batch / t, 1)
    res["rl_iterations"] = args.rl_iterations
    res["rl_peak_mem_gb"] = peak_mem_gb(device)

    write_report(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
