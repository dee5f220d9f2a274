"""vision benchmark: U-Net training images/s at 512x512 (bf16 autocast + channels-last), inference images/s with
and without ``torch.compile``, against a plain eager MONAI UNet of about the same size in the same run; data
loading from PNG files through the task's dataset and DataLoader (workers) and the GPU utilisation while training
from it (pynvml, else nvidia-smi), so a starved GPU shows.

Sizes: our U-Net depth 4, base 32 (widths 32..512, 7.85 M parameters); MONAI UNet with the same widths
(32, 64, 128, 256, 512), strides 2 and two residual units per level (num_res_units=2, 6.50 M parameters; 1 unit
gives 3.35 M, 3 units 9.64 M), the closest MONAI configuration in size.

    python bench/vision.py --out bench/results/vision.json          # CUDA when available
    python bench/vision.py --tiny                                    # CPU smoke run (64 px, tiny nets)

Prints JSON and a markdown table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _timing import sync, timed, write_report


class GpuSampler:
    """GPU utilisation (%) sampled every ``period`` s in a thread while active (pynvml, else nvidia-smi)."""

    def __init__(self, index: int = 0, period: float = 0.1) -> None:
        self.index, self.period, self.samples = index, period, []
        self._stop = threading.Event()
        self._read = self._reader()

    def _reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        except Exception:  # noqa: BLE001 - no NVML: fall back to the command line tool
            def smi() -> float:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(self.index)], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            return smi

    def __enter__(self) -> GpuSampler:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.samples.append(self._read())
                except Exception:  # noqa: BLE001
                    return
                time.sleep(self.period)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def build_nets(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    from monai.networks.nets import UNet as MonaiUNet

    from neurotrain.nn.unet import UNet

    widths = [args.base * 2**i for i in range(args.depth + 1)]
    return {
        "neurotrain_unet": UNet(2, 3, 2, depth=args.depth, base_channels=args.base),
        "monai_unet": MonaiUNet(spatial_dims=2, in_channels=3, out_channels=2, channels=widths,
                                strides=[2] * args.depth, num_res_units=2),
    }


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> None:
    """One segmentation training step (cross-entropy), bf16 autocast when asked."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    loss = torch.nn.functional.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, bf16: bool,
                channels_last: bool, repeats: int) -> float:
    """Training images/s: forward + CE loss + backward + AdamW step."""
    net = net.to(device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    return x.shape[0] / timed(lambda: train_step(net, opt, x, y, bf16), device, repeats, warmup=2)


def bench_infer(net: torch.nn.Module, x: torch.Tensor, device: torch.device, bf16: bool, channels_last: bool,
                compile_: bool, repeats: int) -> float:
    net = net.to(device).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(net) if compile_ else net

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fn(x)

    return x.shape[0] / timed(run, device, repeats, warmup=3 if compile_ else 2)


def bench_loader(args: argparse.Namespace, net: torch.nn.Module, device: torch.device, bf16: bool) -> dict:
    """Train from PNG files through the task's dataset + DataLoader: images/s and GPU utilisation."""
    from neurotrain.tasks.vision.data_config import DatasetSpec
    from neurotrain.tasks.vision.datasets import build_dataset
    from neurotrain.tasks.vision.synthetic import write_segmentation_set

    root = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    n_files = max(args.train_batch * (args.loader_steps + 2), 8)
    write_segmentation_set(root, n=n_files, size=args.size, seed=0)
    ds = build_dataset(DatasetSpec(name="seg_folder", root=root, channels=3, split_fractions=(1.0, 0.0, 0.0)), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.train_batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=args.workers > 0)
    net = net.to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    it = iter(loader)
    next(it)  # start the workers before timing
    steps = 0
    sampler = GpuSampler(device.index or 0) if device.type == "cuda" else None
    t0 = time.perf_counter()
    with sampler if sampler is not None else _Null():
        for batch in it:
            x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = batch["mask"].to(device, non_blocking=True)
            train_step(net, opt, x, y, bf16)
            steps += 1
            if steps >= args.loader_steps:
                break
        sync(device)
    dt = time.perf_counter() - t0
    return {"loader_train_images_per_s": round(steps * args.train_batch / dt, 1), "loader_workers": args.workers,
            "loader_gpu_util_percent": sampler.mean if sampler is not None else None}


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--loader-steps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: 64 px, base 8, depth 2, few repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.train_batch, args.infer_batch, args.base, args.depth = 64, 2, 2, 8, 2
        args.repeats, args.workers, args.loader_steps, args.no_compile = 1, 0, 2, True
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
                 "size": args.size, "train_batch": args.train_batch, "infer_batch": args.infer_batch}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.train_batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 2, (args.train_batch, args.size, args.size), generator=g).to(device)
    xi = torch.rand(args.infer_batch, 3, args.size, args.size, generator=g).to(device)
    def record(key: str, value: object) -> None:
        # printed as measured, so that a run stopped at its time limit still reports what it had
        res[key] = value
        print(f"{key}: {value}", flush=True)

    for key, value in bench_loader(args, build_nets(args)["neurotrain_unet"], device, cuda).items():
        record(key, value)
    for name, net in build_nets(args).items():
        record(f"{name}_parameters", sum(p.numel() for p in net.parameters()))
        if name == "neurotrain_unet":
            rows = [("fp32", False, False), ("bf16_channels_last", True, True)] if cuda else [("fp32", False, False)]
        else:
            rows = [("fp32", False, False), ("bf16", True, False)] if cuda else [("fp32", False, False)]
        for label, bf16, cl in rows:
            record(f"{name}_train_{label}_images_per_s", round(bench_train(net, x, y, device, bf16, cl, args.repeats), 1))
            compiles = [False] if args.no_compile else [False, True]
            for comp in compiles:
                tag = f"{label}_compiled" if comp else label
                record(f"{name}_infer_{tag}_images_per_s", round(bench_infer(net, xi, device, bf16, cl, comp, args.repeats), 1))
        if cuda:
            record(f"{name}_peak_mem_gb", round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
            torch.cuda.reset_peak_memory_stats(device)

    write_report(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
