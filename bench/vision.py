"""vision benchmark at 512x512: the data pipeline stage by stage (``_vision_pipeline.py``: the augmentation alone
on the device, the H2D copy, the loader alone, then one training loop fed by a device-resident batch, by the
loader without and with augmentation, and by the loader through a copy stream; each with the GPU busy % from
NVML and the host's ms per step in each stage, so a starved GPU shows where it waits), then U-Net training
images/s (bf16 autocast + channels-last) and peak memory per row, inference images/s with and without
``torch.compile``, our U-Net (lean layout, the vision default; and the classic full-resolution layout, training
only) against a plain eager MONAI UNet of the same widths in the same run.

The issue's requirement, "data loading must not starve the GPU", reads off
``train_loop_loader_fraction_of_synthetic``: loader-fed training with augmentation over the same loop fed by a
device-resident batch (target >= 0.9), and ``train_loop_device_cache_fraction_of_synthetic``: the same for the
task's device-resident training cache (``loader.device_cache``, the default on CUDA when the split fits).

Sizes: our U-Net depth 4, base 32 (widths 32..512; lean 7.77 M parameters, classic 7.85 M); MONAI UNet with the
same widths (32, 64, 128, 256, 512), strides 2 and two residual units per level (num_res_units=2, 6.50 M),
the closest MONAI configuration in size. Forward cost at 512x512 per image (``torch.utils.flop_counter``,
CPU): classic 111.6 GFLOP, lean 24.7, MONAI 24.2.

    python bench/vision.py --repeats 5 --out bench/results/vision.json   # CUDA when available (expected < 4 min, H200)
    python bench/vision.py --loader-only --device cpu                # CPU: what the loader delivers, no model
    python bench/vision.py --pipeline-only --repeats 5               # only the data-pipeline rows (about 1 min, H200)
    python bench/vision.py --tiny                                    # CPU smoke run (64 px, tiny nets)

Prints each number as it is measured, then JSON and a markdown table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import peak_mem_gb, reset_mem, sync, timed, write_report
from _vision_pipeline import DeviceCacheFeed, ahead, bench_augment, bench_pipeline, cycle, to_device


EPOCH_SAMPLES = 1_000_000  # indices per loader epoch (drawn lazily): no epoch boundary inside a timed row
LEAN = {"stem_stride": 2, "down": "stride", "upsample": "transpose", "up_channels": "skip"}  # models.UNET_LAYOUTS


def build_nets(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    from monai.networks.nets import UNet as MonaiUNet

    from neurotrain.nn.unet import UNet

    widths = [args.base * 2**i for i in range(args.depth + 1)]
    return {
        "neurotrain_unet": UNet(2, 3, 2, depth=args.depth, base_channels=args.base, **LEAN),
        "neurotrain_unet_classic": UNet(2, 3, 2, depth=args.depth, base_channels=args.base),
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


def loader_set(args: argparse.Namespace) -> Path:
    """``args.loader_files`` synthetic 512 px image/mask PNG pairs (grey, read as RGB) in a fresh folder."""
    from neurotrain.tasks.vision.synthetic import write_segmentation_set

    root = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    return write_segmentation_set(root, n=args.loader_files, size=args.size, seed=0)


def make_loader(args: argparse.Namespace, root: Path, device: torch.device, cache: bool,
                prefetch: int = 4) -> tuple[Any, float]:
    """The task's training loader over ``root`` as a config gives it: the decoded cache (built here, timed) with
    uint8 samples, ``args.workers`` persistent workers, pinned memory, prefetching; or (``cache`` False) the
    files decoded in the workers. Returns (loader, seconds spent building the cache).

    The epoch is made long (indices drawn with replacement, ``EPOCH_SAMPLES``): with the bench's 128 files a
    shuffled epoch is 8 batches, and at every epoch boundary the persistent workers stop and refill their queue, a
    stall a real data set of thousands of images has once per epoch, not every 8 steps."""
    from neurotrain.tasks.vision.data_config import DatasetSpec
    from neurotrain.tasks.vision.datasets import build_dataset, set_raw, vision_collate

    spec = DatasetSpec(name="seg_folder", root=root, channels=3, split_fractions=(1.0, 0.0, 0.0), cache=cache,
                       cache_workers=max(args.workers, 1))
    t0 = time.perf_counter()
    ds = build_dataset(spec, "train")
    build_s = time.perf_counter() - t0
    if cache:
        set_raw(ds)
    extra = dict(persistent_workers=True, prefetch_factor=prefetch) if args.workers > 0 else {}
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=EPOCH_SAMPLES,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.train_batch, sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         collate_fn=vision_collate, **extra)
    return loader, build_s


def device_cache_feed(args: argparse.Namespace, root: Path, device: torch.device,
                      record: Callable[[str, object], None]) -> DeviceCacheFeed | None:
    """The task's device-resident training path over the same files and the same kind of sampler as
    :func:`make_loader` (its own dataset object: attaching the cache changes what the set's batched fetch
    returns); records the decision, None when the task keeps the worker loader."""
    from neurotrain.tasks.vision.data_config import DatasetSpec
    from neurotrain.tasks.vision.datasets import build_dataset, set_raw

    spec = DatasetSpec(name="seg_folder", root=root, channels=3, split_fractions=(1.0, 0.0, 0.0),
                       cache_workers=max(args.workers, 1))
    ds = build_dataset(spec, "train")  # the cache make_loader built: opened, not rebuilt
    set_raw(ds)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=EPOCH_SAMPLES,
                                             generator=torch.Generator().manual_seed(0))
    feed = DeviceCacheFeed(args, ds, device, sampler)
    record("device_cache_used", feed.cache is not None)
    return feed if feed.cache is not None else None


def bench_loader_only(args: argparse.Namespace, loader: Any, device: torch.device, steps: int) -> float:
    """Images/s the loader delivers onto ``device`` with no model: the most it can feed. On a GPU the copy
    (non-blocking, from pinned memory) and the uint8 -> float scaling count; on the CPU there is no copy and the
    scaling is left out, as training does it on the GPU. The batches the workers load ahead are taken before
    the clock starts, so it times the steady rate, not the prefetch queue."""
    warm = ahead(loader)
    it = cycle(loader, steps + warm)
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        if device.type != "cpu":
            b = to_device(b, device)
        n += b["image"].shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--loader-files", type=int, default=128, help="PNG pairs written for the loader rows")
    ap.add_argument("--loader-steps", type=int, default=150, help="batches timed in each loader row")
    ap.add_argument("--png-steps", type=int, default=16, help="batches timed decoding PNGs (no cache); 0 skips")
    ap.add_argument("--loader-only", action="store_true", help="only the loader rows, no training")
    ap.add_argument("--pipeline-only", action="store_true", help="only the data-pipeline rows, not the model table")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: 64 px, base 8, depth 2, few repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.train_batch, args.infer_batch, args.base, args.depth = 64, 2, 2, 8, 2
        args.repeats, args.workers, args.loader_steps, args.png_steps, args.no_compile = 1, 0, 2, 1, True
        args.loader_files = 8
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
                 "size": args.size, "train_batch": args.train_batch, "infer_batch": args.infer_batch,
                 "loader_workers": args.workers}

    def record(key: str, value: object) -> None:
        # printed as measured, so that a run stopped at its time limit still reports what it had
        res[key] = value
        print(f"{key}: {value}", flush=True)

    root = loader_set(args)
    if args.png_steps:
        png, _ = make_loader(args, root, device, cache=False, prefetch=1)
        record("loader_png_images_per_s", round(bench_loader_only(args, png, device, args.png_steps), 1))
        del png
    loader, build_s = make_loader(args, root, device, cache=True)
    record("cache_build_s", round(build_s, 2))
    record("cache_build_images_per_s", round(args.loader_files / build_s, 1))
    record("loader_cached_images_per_s", round(bench_loader_only(args, loader, device, args.loader_steps), 1))
    if args.loader_only:
        write_report(res, args.out)
        return 0
    bench_augment(args, device, record)
    feed = device_cache_feed(args, root, device, record)
    bench_pipeline(args, loader, build_nets(args)["neurotrain_unet"], train_step, device, record, feed)
    del feed
    del loader
    if args.pipeline_only:
        write_report(res, args.out)
        return 0

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.train_batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 2, (args.train_batch, args.size, args.size), generator=g).to(device)
    xi = torch.rand(args.infer_batch, 3, args.size, args.size, generator=g).to(device)
    for name, net in build_nets(args).items():
        record(f"{name}_parameters", sum(p.numel() for p in net.parameters()))
        ours = name == "neurotrain_unet"
        if name == "neurotrain_unet_classic":  # the old layout: training only, for the before/after
            rows = [("bf16_channels_last", True, True)] if cuda else [("fp32", False, False)]
        elif ours:
            rows = [("fp32", False, False), ("bf16_channels_last", True, True)] if cuda else [("fp32", False, False)]
        else:
            rows = [("fp32", False, False), ("bf16", True, False)] if cuda else [("fp32", False, False)]
        for label, bf16, cl in rows:
            reset_mem(device)
            record(f"{name}_train_{label}_images_per_s", round(bench_train(net, x, y, device, bf16, cl, args.repeats), 1))
            if cuda:
                record(f"{name}_train_{label}_peak_mem_gb", peak_mem_gb(device))
            if name == "neurotrain_unet_classic":
                continue
            # torch.compile for ours only: MONAI is the plain eager reference
            for comp in ([False] if args.no_compile or not ours else [False, True]):
                tag = f"{label}_compiled" if comp else label
                record(f"{name}_infer_{tag}_images_per_s", round(bench_infer(net, xi, device, bf16, cl, comp, args.repeats), 1))
        net.cpu()
        if cuda:
            torch.cuda.empty_cache()

    write_report(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
