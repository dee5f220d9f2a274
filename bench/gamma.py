"""gamma benchmark: network inference spectra/s at 4096 channels (ours optimised, ours eager, a plain eager 1D
U-Net of the same size and the seed model, all in the same run), FLOPs per spectrum, simulator spectra/s, training
steps/s with the simulator in the loop, peak GPU memory, and the Richardson-Lucy baseline's spectra/s.

Sizes follow ``configs/gamma/train.yaml`` (its ``model:`` block and batch), at ``--channels`` channels with
``--photons`` Monte Carlo photons per incident energy for the responses (built once, a few seconds each).

* ours, optimised: ``engine.inference.optimise_for_inference`` (bf16 weights, batch norm folded, torch.compile).
  The FWHM law travels with each spectrum: the wrapper :class:`PackedLaw` reads it from two extra samples
  appended to the input, so the compiled graph gets it as data, not as a constant;
  ``--big-batch`` times it once more at a larger batch (one more compilation);
* ours, eager: bf16 autocast, no compile;
* the reference: :class:`PlainUNet1D`, a plain eager 1D U-Net (Ronneberger et al. 2015: two convolution-BN-ReLU
  per level at the full channel grid, max-pool, transposed convolution, concatenated skips, 1x1 head, softplus),
  depth ``--plain-depth``, kernel ``--plain-kernel``, base width matching our parameter count (to a multiple of 8); bf16
  autocast, same batch;
* the seed model: ``ImprovedSpectralResNet1D`` as the previous train.yaml had it (base 32, depth 5, widths capped
  at 256), eager bf16: the issue's "23,800 spectra/s today".

    python bench/gamma.py --out bench/results/gamma.json        # CUDA when available; meant for < 5 min on one H200
    python bench/gamma.py --tiny                                # CPU smoke run (seconds)

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
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from neurotrain.config import load_config
from neurotrain.engine.inference import optimise_for_inference
from neurotrain.tasks.gamma import baseline as bl
from neurotrain.tasks.gamma.losses import build_loss
from neurotrain.tasks.gamma.models import ImprovedSpectralResNet1D, build_model
from neurotrain.tasks.gamma.task import GammaTask

REPO = Path(__file__).resolve().parents[1]


class PlainUNet1D(nn.Module):
    """The reference: a plain 1D U-Net at the full channel grid, width ``c * 2**i`` at level ``i``."""

    def __init__(self, c: int, depth: int = 4, k: int = 7, cin: int = 3) -> None:
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(a, b, k, padding=k // 2, bias=False), nn.BatchNorm1d(b), nn.ReLU(),
                                 nn.Conv1d(b, b, k, padding=k // 2, bias=False), nn.BatchNorm1d(b), nn.ReLU())

        w = [c * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList([block(cin if i == 0 else w[i - 1], w[i]) for i in range(depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose1d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([block(2 * w[i], w[i]) for i in reversed(range(depth))])
        self.head = nn.Conv1d(w[0], 1, 1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else nn.functional.max_pool1d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return nn.functional.softplus(self.head(x))


class PackedLaw(nn.Module):
    """``model(x, law)`` as a one-input module for ``optimise_for_inference``: input (B, C, N + 2) holds the
    spectrum's C channels in the first N samples and its FWHM law (r662, power) in the last two of channel 0."""

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.model, self.n = model, n

    def forward(self, packed: Tensor) -> Tensor:
        return self.model(packed[..., : self.n], packed[:, 0, self.n:])


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def gmac_per_spectrum(m: nn.Module, n: int, device: torch.device) -> float:
    """Multiply-accumulates of one forward pass on one spectrum (torch.utils.flop_counter), in units of 1e9."""
    was = m.training
    m.eval()
    with FlopCounterMode(display=False) as f, torch.no_grad():
        m(torch.rand(1, 3, n, device=device), torch.tensor([[0.1, 0.5]], device=device))
    m.train(was)
    return round(f.get_total_flops() / 2e9, 3)


def trained_like(m: nn.Module) -> None:
    """Give the layers that start at zero (the output layer, FiLM's last layer) default random weights, as a
    trained network has: a zero layer makes the output constant, which would hide errors in the optimised
    path's comparison."""
    for mod in m.modules():
        if isinstance(mod, (nn.Conv1d, nn.Linear)) and not mod.weight.detach().any():
            mod.reset_parameters()


def matched_plain(target: int, depth: int, k: int) -> PlainUNet1D:
    """The plain U-Net whose base width gives the parameter count closest to ``target`` (rounded to a multiple
    of 8)."""
    best, c = 2, 2
    while True:  # the count grows with c: stop at the first width past the target
        p = n_params(PlainUNet1D(c, depth, k))
        if abs(p - target) < abs(n_params(PlainUNet1D(best, depth, k)) - target):
            best = c
        if p > target:
            # widths in multiples of 8 like ours, so that odd channel counts do not slow the reference down
            return PlainUNet1D(8 * round(best / 8) if best >= 8 else best, depth, k)
        c += 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "gamma" / "train.yaml")
    ap.add_argument("--channels", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1024, help="inference batch")
    ap.add_argument("--big-batch", type=int, default=4096, help="also time ours optimised at this batch (0: no)")
    ap.add_argument("--train-batch", type=int, default=0, help="training batch (0: the config's data.batch_size)")
    ap.add_argument("--sim-batch", type=int, default=4096, help="simulator batch timed alone")
    ap.add_argument("--photons", type=int, default=4000, help="Monte Carlo photons per incident energy")
    ap.add_argument("--plain-depth", type=int, default=4)
    ap.add_argument("--plain-kernel", type=int, default=7)
    ap.add_argument("--rl-iterations", type=int, default=200)
    ap.add_argument("--rl-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="optimised path without torch.compile")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: 512 channels, small batches, no compile")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--big-batch-before-s", type=float, default=150.0,
                    help="skip --big-batch when the run is already this many seconds old")
    args = ap.parse_args(argv)
    args.t_start = time.perf_counter()
    if args.tiny:
        args.channels, args.batch, args.train_batch, args.sim_batch, args.big_batch = 512, 8, 4, 16, 16
        args.photons, args.rl_iterations, args.rl_batch, args.repeats, args.no_compile = 200, 5, 4, 1, True
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cache = Path(tempfile.mkdtemp(prefix="gamma-bench-"))
    cfg = load_config(args.config, [
        f"simulate.n_channels={args.channels}", f"simulate.response_photons={args.photons}",
        f"simulate.cache_dir={cache}", f"baseline.iterations={args.rl_iterations}",
    ] + (["simulate.lu176_events=20000", "model.base_channels=8", "model.depth=2"] if args.tiny else []))
    train_batch = args.train_batch or cfg.data.batch_size
    res: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
                 "channels": args.channels, "model": cfg.model.name, "inference_batch": args.batch}
    task = GammaTask()
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    if cuda:  # TF32 and cuDNN autotuning for every row alike, as engine.inference.autocast sets them
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    # simulator: the first batch of each crystal builds its responses (Monte Carlo, once per crystal and
    # geometry), kept out of the simulator's timing
    t0 = time.perf_counter()
    warm_responses(cfg, gen, device)
    sync(device)
    res["response_build_s"] = round(time.perf_counter() - t0, 2)
    reset_mem(device)
    t = timed(lambda: task.simulate_batch(cfg, args.sim_batch, gen, device), device, args.repeats)
    res["simulator_batch"] = args.sim_batch
    res["simulator_spectra_per_s"] = round(args.sim_batch / t, 1)
    res["simulator_peak_mem_gb"] = peak_mem_gb(device)

    inference(args, cfg, device, res)
    training(args, cfg, task, gen, device, train_batch, res)

    # Richardson-Lucy baseline at the same size
    counts = torch.rand(args.rl_batch, args.channels, device=device) * 100
    reset_mem(device)
    t = timed(lambda: bl.run_baseline(cfg, counts), device, max(1, args.repeats // 2))
    res["rl_spectra_per_s"] = round(args.rl_batch / t, 1)
    res["rl_iterations"] = args.rl_iterations
    res["rl_peak_mem_gb"] = peak_mem_gb(device)
    res["bench_wall_s"] = round(time.perf_counter() - args.t_start, 1)
    write_report(res, args.out)
    return 0


def warm_responses(cfg, gen: torch.Generator, device: torch.device) -> None:
    """One small batch per training crystal, so that every response is built before anything is timed."""
    from neurotrain.tasks.gamma.scene import Scene
    from neurotrain.tasks.gamma.simulate import simulate_batch

    for crystal in list(cfg.simulate.train_crystals) or [None]:
        simulate_batch(cfg, 2, gen, device, Scene(crystal=crystal))


def inference(args: argparse.Namespace, cfg, device: torch.device, res: dict) -> None:
    """Ours optimised and eager, the plain U-Net and the seed model, same inputs, same run."""
    n, b = args.channels, args.batch
    cuda = device.type == "cuda"
    model = build_model(cfg).to(device).eval()
    trained_like(model)
    plain = matched_plain(n_params(model), args.plain_depth, args.plain_kernel).to(device).eval()
    seed = ImprovedSpectralResNet1D(base_channels=32, depth=5, max_channels=256, bottleneck_blocks=2,
                                    kernel_size=7).to(device).eval()
    for key, net in (("ours", model), ("plain", plain), ("seed", seed)):
        res[f"{key}_parameters"] = n_params(net)
        res[f"{key}_gmac_per_spectrum"] = gmac_per_spectrum(net, n, device)
    x = torch.rand(b, 3, n, device=device)
    law = torch.stack([torch.empty(b, device=device).uniform_(0.06, 0.12),
                       torch.empty(b, device=device).uniform_(0.45, 0.65)], 1)
    dtype = torch.bfloat16 if cuda else None

    def eager(net: nn.Module):
        def run() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                net(x, law)
        return run

    for key, net in (("plain", plain), ("ours", model), ("seed", seed)):
        reset_mem(device)
        t = timed(eager(net), device, args.repeats, warmup=2)
        res[f"inference_{key}_eager_spectra_per_s"] = round(b / t, 1)
        res[f"inference_{key}_eager_peak_mem_gb"] = peak_mem_gb(device)
    res["inference_precision"] = "bf16" if cuda else "fp32"

    packed = torch.cat([x, torch.zeros(b, 3, 2, device=device)], 2)
    packed[:, 0, n:] = law
    t0 = time.perf_counter()
    fast = optimise_for_inference(PackedLaw(model, n), packed, "bf16", compile=not args.no_compile)
    sync(device)
    res["optimise_compile_s"] = round(time.perf_counter() - t0, 1)
    with torch.no_grad():  # the whole batch: another batch size would compile the graph once more
        ref = model(x, law)
    err = (fast(packed) - ref).abs().max() / ref.abs().max()
    del ref
    res["optimised_vs_eager_fp32_max_rel_err"] = float(f"{err.item():.2g}")
    reset_mem(device)
    t_fast = timed(lambda: fast(packed), device, args.repeats, warmup=2)
    res["inference_ours_optimised_spectra_per_s"] = round(b / t_fast, 1)
    res["inference_ours_optimised_peak_mem_gb"] = peak_mem_gb(device)
    res["speedup_vs_plain_eager"] = round(res["inference_ours_optimised_spectra_per_s"]
                                          / res["inference_plain_eager_spectra_per_s"], 2)
    res["speedup_vs_seed_eager"] = round(res["inference_ours_optimised_spectra_per_s"]
                                         / res["inference_seed_eager_spectra_per_s"], 2)
    late = time.perf_counter() - args.t_start > args.big_batch_before_s  # keep the whole run under 5 minutes
    res["big_batch_skipped_for_time"] = bool(args.big_batch > b and late)
    if args.big_batch > b and not late:  # a larger batch compiles once more (static shapes)
        del fast
        big = packed.repeat((args.big_batch + b - 1) // b, 1, 1)[: args.big_batch]
        fast = optimise_for_inference(PackedLaw(model, n), big, "bf16", compile=not args.no_compile)
        reset_mem(device)
        t_big = timed(lambda: fast(big), device, args.repeats, warmup=2)
        res[f"inference_ours_optimised_batch{args.big_batch}_spectra_per_s"] = round(args.big_batch / t_big, 1)
        res[f"inference_ours_optimised_batch{args.big_batch}_peak_mem_gb"] = peak_mem_gb(device)


def training(args: argparse.Namespace, cfg, task: GammaTask, gen: torch.Generator, device: torch.device,
             batch: int, res: dict) -> None:
    """One AdamW step with the simulator in the loop (bf16 autocast on CUDA), and the model's step alone."""
    model = build_model(cfg).to(device).train()
    loss = build_loss(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_bf16 = device.type == "cuda"

    def step(b: dict[str, Tensor]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(b["input"], b["fwhm_params"])
        val = loss(out.float(), b)["loss"]
        opt.zero_grad(set_to_none=True)
        val.backward()
        opt.step()

    def sim() -> dict[str, Tensor]:
        with torch.no_grad():
            return task.simulate_batch(cfg, batch, gen, device)

    reset_mem(device)
    t = timed(lambda: step(sim()), device, args.repeats)
    res["train_batch"] = batch
    res["train_steps_per_s"] = round(1 / t, 2)
    res["train_spectra_per_s"] = round(batch / t, 1)
    res["train_peak_mem_gb"] = peak_mem_gb(device)
    fixed = sim()
    t = timed(lambda: step(fixed), device, args.repeats)
    res["train_steps_per_s_model_only"] = round(1 / t, 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
