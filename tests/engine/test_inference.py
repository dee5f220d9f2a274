"""run_batched / choose_batch_size: equality with one-shot, memory cap, OOM back-off, streaming."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from neurotrain.engine.inference import (
    BYTES_PER_GB,
    CALLABLE_SAFETY_FACTOR,
    InferenceMemoryError,
    choose_batch_size,
    run_batched,
)


def _conv_model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)
    ).to(dtype).eval()


def test_batched_equals_one_shot_float64_exactly() -> None:
    model = _conv_model(torch.float64)
    x = torch.randn(37, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    out = run_batched(model, x, max_memory_gb=1.0, batch_size=5)
    assert torch.equal(out, ref)
    out2 = run_batched(model, x.numpy(), max_memory_gb=1.0)  # probed batch size, numpy input
    assert torch.equal(out2, ref)


def test_batched_equals_one_shot_float32_and_training_flag_restored() -> None:
    model = _conv_model(torch.float32).train()
    x = np.random.default_rng(2).normal(size=(50, 1, 10, 10)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x))
    model.train()
    out = run_batched(model, x, max_memory_gb=1e-4, progress=True)
    assert model.training
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-6


def test_per_sample_bytes_measured_exactly_and_cap_respected() -> None:
    # float32, 1x8x8 input: input 256 B, conv1 out 4x8x8 = 1024 B, relu out 1024 B,
    # conv2 out 2x8x8 = 512 B (= the Sequential's output, counted once): 2816 B per sample
    model = _conv_model(torch.float32)
    x = torch.zeros(1000, 1, 8, 8)
    plan = choose_batch_size(model, x, max_memory_gb=1e-4)
    assert plan.method == "module-hooks"
    assert plan.per_sample_bytes == 2816
    cap = 1e-4 * BYTES_PER_GB
    assert plan.batch_size == int(cap // 2816) == 35
    assert plan.batch_size * plan.per_sample_bytes <= cap
    assert choose_batch_size(model, x, max_memory_gb=1e-9).batch_size == 1  # 1000 B cap
    assert choose_batch_size(model, x, max_memory_gb=100).batch_size == 1000  # clamped to n


def test_prefetch_counts_one_more_input_row_and_gives_same_result() -> None:
    model = _conv_model(torch.float64)
    x = torch.randn(23, 1, 8, 8, dtype=torch.float64)
    plain = choose_batch_size(model, x, max_memory_gb=1e-4, prefetch=False)
    ahead = choose_batch_size(model, x, max_memory_gb=1e-4, prefetch=True)
    assert ahead.per_sample_bytes == plain.per_sample_bytes + 64 * 8
    assert ahead.batch_size * ahead.per_sample_bytes <= 1e-4 * BYTES_PER_GB
    with torch.no_grad():
        ref = model(x)
    starts: list[int] = []
    parts: list[torch.Tensor] = []
    run_batched(model, x, max_memory_gb=1.0, batch_size=4, prefetch=True,
                sink=lambda o, s: (starts.append(s), parts.append(o)))
    assert starts == list(range(0, 23, 4))
    assert torch.equal(torch.cat(parts), ref)


def test_inplace_and_view_outputs_counted_once() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Flatten()).eval()
    plan = choose_batch_size(model, torch.zeros(10, 16), max_memory_gb=1.0)
    assert plan.per_sample_bytes == 16 * 4 + 32 * 4


def test_plain_callable_uses_io_estimate() -> None:
    plan = choose_batch_size(lambda t: t * 2.0, torch.zeros(100, 25), max_memory_gb=1e-6)
    assert plan.method == "io-estimate"
    assert plan.per_sample_bytes == (25 * 4 * 2) * CALLABLE_SAFETY_FACTOR
    assert plan.batch_size == 1000 // 800


class _FakeOOMModel(nn.Module):
    """Raises an out-of-memory error above a batch size, like a GPU would."""

    def __init__(self, limit: int, exc: type[Exception]) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.limit = limit
        self.exc = exc
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.exc("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.lin(x)


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_oom_backs_off_and_result_unchanged(exc: type[Exception]) -> None:
    model = _FakeOOMModel(limit=6, exc=exc)
    x = torch.randn(40, 3, dtype=torch.float64)
    ref = model.lin(x).detach()
    out = run_batched(model, x, max_memory_gb=1.0, batch_size=32)
    assert torch.equal(out, ref)
    assert model.sizes[:3] == [32, 16, 8]
    assert max(model.sizes[3:]) <= 6 and set(model.sizes[3:]) <= {4}
    model.sizes.clear()
    out = run_batched(model, x, max_memory_gb=1.0, batch_size=32, prefetch=True)
    assert torch.equal(out, ref) and model.sizes == [32, 16, 8] + [4] * 10


def test_oom_at_batch_one_is_a_clear_error() -> None:
    model = _FakeOOMModel(limit=0, exc=RuntimeError)
    with pytest.raises(InferenceMemoryError, match="one sample does not fit"):
        run_batched(model, torch.zeros(4, 3, dtype=torch.float64), max_memory_gb=1.0, batch_size=4)


def test_other_runtime_errors_propagate() -> None:
    def bad(_x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_batched(bad, torch.zeros(4, 3), max_memory_gb=1.0, batch_size=2)


def test_streaming_sink_sees_every_row_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "in.h5"
    data = np.arange(103 * 4, dtype=np.float32).reshape(103, 4)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(10, 4))
    seen: list[tuple[int, torch.Tensor]] = []
    with h5py.File(path, "r") as f:
        result = run_batched(lambda t: t + 1.0, f["x"], max_memory_gb=1.0, batch_size=16,
                             sink=lambda out, start: seen.append((start, out)))
    assert result is None
    assert not any(o.is_inference() for _, o in seen)
    seen[0][1].add_(0.0)  # the sink may modify what it gets in place
    starts = [s for s, _ in seen]
    assert starts == list(range(0, 103, 16))
    torch.testing.assert_close(torch.cat([o for _, o in seen]), torch.from_numpy(data) + 1.0)


def test_structured_outputs_and_multiple_inputs(tmp_path: Path) -> None:
    a = torch.arange(30.0).reshape(10, 3)
    mm_path = tmp_path / "b.npy"
    np.save(mm_path, np.ones((10, 3), np.float32))
    b = np.load(mm_path, mmap_mode="r")

    def fn(x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"sum": x + y, "pair": (x.sum(1), y.mean(1))}

    out = run_batched(fn, (a, b), max_memory_gb=1.0, batch_size=3)
    torch.testing.assert_close(out["sum"], a + 1)
    torch.testing.assert_close(out["pair"][0], a.sum(1))
    torch.testing.assert_close(out["pair"][1], torch.ones(10))

    out2 = run_batched(lambda d: d["u"] * 2, {"u": a}, max_memory_gb=1.0, batch_size=4)
    torch.testing.assert_close(out2, a * 2)


def test_stream_h5_through_model_into_h5_writer_keeps_nothing(tmp_path: Path) -> None:
    """The predict path: an HDF5 input streamed through a model into an H5Writer; no output
    batch outlives its sink call (memory stays flat however long the input is)."""
    import gc
    import weakref

    from neurotrain.io.hdf5 import H5Dataset, H5Writer

    src = tmp_path / "in.h5"
    x = np.random.default_rng(3).normal(size=(70, 1, 8, 8))
    with H5Writer(src, chunk_rows=16) as w:
        w.append(x=x)
    model = _conv_model(torch.float64)
    refs: list[weakref.ref] = []
    dst = tmp_path / "out" / "pred.h5"
    with h5py.File(src, "r") as f, H5Writer(dst) as out:

        def sink(batch: torch.Tensor, start: int) -> None:
            assert start == out.n_rows
            refs.append(weakref.ref(batch))
            out.append(pred=batch)

        run_batched(model, f["x"], max_memory_gb=2e-5, sink=sink)  # 20 kB / 5632 B per sample -> 3
    gc.collect()
    assert len(refs) == 24 and all(r() is None for r in refs)  # ceil(70 / 3) batches
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    got = H5Dataset(dst, ["pred"]).__getitems__(list(range(70)))
    assert torch.equal(torch.stack([g["pred"] for g in got]), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_probe_respects_cap() -> None:
    model = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)]).cuda().eval()
    x = torch.randn(512, 8, 64, 64)
    plan = choose_batch_size(model, x, max_memory_gb=0.05)
    assert plan.method == "cuda-probe"
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run_batched(model, x, max_memory_gb=0.05)
    assert torch.cuda.max_memory_allocated() - base <= 0.05 * BYTES_PER_GB
    with torch.inference_mode():
        ref = model(x[:8].cuda()).cpu()
    torch.testing.assert_close(out[:8], ref, atol=1e-3, rtol=1e-3)  # cuDNN may pick TF32 algorithms per batch size


def test_optimise_for_inference_matches_the_model_and_leaves_it_alone() -> None:
    from neurotrain.engine.inference import optimise_for_inference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 3, 1))
    model.train()
    x = torch.randn(4, 2, 50)
    fast = optimise_for_inference(model, x, "bf16", compile=False)  # bf16 only applies on CUDA
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(fast(x), ref)
    assert all(p.requires_grad for p in model.parameters())
    assert fast(x[:1]).shape == (1, 3, 50)
