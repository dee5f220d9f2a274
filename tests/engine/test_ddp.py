"""Data parallelism (issue 22): every rank simulates its own data, validation is split without repeats, the
run is written once, and two ranks learn as well as one at the same number of samples seen.

The sampler tests run in-process; one two-rank DDP run (gloo, two CPU processes, the toy task) is shared by
the end-to-end tests through a module-scoped fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch

from neurotrain.config import load_config
from neurotrain.engine import api
from neurotrain.engine.checkpoint import load_checkpoint, load_model
from neurotrain.engine.data import EPOCH_STRIDE, SimSeedSampler, SimulatedBatches, TaskDataModule
from neurotrain.engine.module import SIM_SEED_KEY
from neurotrain.errors import ConfigError

TESTS_DIR = Path(__file__).resolve().parents[1]
CFG = """
task: toy
seed: 3
run: {{name: t, output_dir: {out}}}
trainer: {{max_epochs: 3, accelerator: cpu, devices: 1, progress_bar: false}}
optim: {{name: adam, lr: 0.02}}
data: {{batch_size: 32, sim_train_size: 256, sim_val_size: 96, sim_test_size: 64}}
logging: {{log_every_n_steps: 1}}
"""

# Re-run by Lightning's DDP launcher for rank 1 with the same arguments. Records, per rank, every batch the
# module turned from a seed into data (phase, epoch, seed, a fingerprint of the data) and every file the run
# wrote through the engine (config.yaml, metrics.json) or Lightning's checkpoint writer.
SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import toy_task
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from neurotrain.engine import api, module
from neurotrain.cli import main

OUT = {out!r}

def rank():
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("LOCAL_RANK", 0))

def record(kind, **row):
    with open(os.path.join(OUT, f"{{kind}}-rank{{rank()}}.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\\n")

# a network with buffers: DDP broadcasts them at each rank's first forward after training, so an evaluation
# split that left a rank without a batch would hang here (see test_two_ranks_split_validation_without_repeats)
def bn_model(self, cfg):
    m = cfg.model
    return torch.nn.Sequential(torch.nn.Linear(m.n_in, m.width), torch.nn.BatchNorm1d(m.width), torch.nn.Tanh(),
                               torch.nn.Linear(m.width, m.n_out))
toy_task.ToyTask.build_model = bn_model

orig_after = module.TaskModule.on_after_batch_transfer
def on_after(self, batch, idx):
    seed = batch.get(module.SIM_SEED_KEY) if isinstance(batch, dict) else None
    out = orig_after(self, batch, idx)
    t = self.trainer
    phase = "sanity" if t.sanity_checking else "train" if t.training else "val" if t.validating else "other"
    record("draws", phase=phase, epoch=self.current_epoch, seed=int(seed), fp=float(out["input"].sum()))
    return out
module.TaskModule.on_after_batch_transfer = on_after

orig_atomic = api.atomic_path
def atomic(path):
    record("writes", path=str(path))
    return orig_atomic(path)
api.atomic_path = atomic

orig_save = TorchCheckpointIO.save_checkpoint
def save(self, checkpoint, path, storage_options=None):
    record("writes", path=str(path))
    return orig_save(self, checkpoint, path, storage_options)
TorchCheckpointIO.save_checkpoint = save

main()
"""


def _toy_cfg(tmp: Path) -> Path:
    p = tmp / "toy.yaml"
    p.write_text(CFG.format(out=tmp / "runs"))
    return p


def _rows(folder: Path, kind: str) -> dict[int, list[dict]]:
    return {
        r: [json.loads(line) for line in (folder / f"{kind}-rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
        if (folder / f"{kind}-rank{r}.jsonl").is_file()
    }


def _bn_model(self, cfg) -> torch.nn.Module:
    """The toy network with a BatchNorm layer, as the two-rank script builds it."""
    m = cfg.model
    return torch.nn.Sequential(torch.nn.Linear(m.n_in, m.width), torch.nn.BatchNorm1d(m.width), torch.nn.Tanh(),
                               torch.nn.Linear(m.width, m.n_out))


def _held_out_loss(cfg, model) -> float:
    batch = api.get_task(cfg).simulate_batch(cfg, 512, torch.Generator().manual_seed(7), torch.device("cpu"))
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(batch["input"]), batch["target"]))


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DDP run of the toy task on two CPU processes (gloo): 3 epochs of 4 steps per rank at batch 32."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "rec").mkdir()
    script = tmp / "run_toy.py"
    script.write_text(SCRIPT.format(tests=str(TESTS_DIR), out=str(tmp / "rec")))
    args = ["train", str(_toy_cfg(tmp)), "trainer.strategy=ddp", "trainer.devices=2"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


# ---------------------------------------------------------------------------------------------- in-process


def _batches(n_samples: int, batch: int = 4, on_device: bool = True, split: str = "train") -> SimulatedBatches:
    import toy_task  # on sys.path through tests/conftest.py

    cfg = toy_task.ToyConfig(task="toy", seed=3)
    return SimulatedBatches(api.get_task(cfg), cfg, split, n_samples, batch, on_device)


@pytest.mark.parametrize("world,n_batches", [(1, 8), (2, 8), (2, 7), (3, 7), (4, 2)])
def test_training_draws_are_disjoint_over_ranks_and_epochs(world: int, n_batches: int) -> None:
    ds = _batches(4 * n_batches)
    seen: list[int] = []
    for epoch in range(3):
        per_rank = []
        for rank in range(world):
            sampler = SimSeedSampler(ds, world, rank, training=True)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        # DDP needs the same number of steps on every rank; an epoch covers at least the configured batches
        assert {len(d) for d in per_rank} == {-(-n_batches // world)}
        seen += [d for draws in per_rank for d in draws]
    assert len(seen) == len(set(seen))
    seeds = [ds.seed_of(d) for d in seen]
    assert len(seeds) == len(set(seeds))


def test_one_rank_keeps_the_single_gpu_seeds() -> None:
    """With one rank, epoch e draws base + i + 1_000_003 e: the seeds single-GPU runs have always used."""
    ds = _batches(32)
    sampler = SimSeedSampler(ds, 1, 0, training=True)
    sampler.set_epoch(2)
    assert [ds.seed_of(d) for d in sampler] == [ds.base + i + 2 * EPOCH_STRIDE for i in range(8)]


@pytest.mark.parametrize("world,n_batches,limit", [(1, 5, None), (2, 5, None), (3, 8, None), (2, 9, 5)])
def test_evaluation_batches_are_split_once_each(world: int, n_batches: int, limit: int | None) -> None:
    ds = _batches(4 * n_batches, split="val")
    parts = []
    for rank in range(world):
        sampler = SimSeedSampler(ds, world, rank, training=False, limit=limit)
        sampler.set_epoch(4)  # evaluation sets do not change with the epoch
        parts.append(list(sampler))
        assert len(sampler) == len(parts[-1]) >= 1
    flat = [d for p in parts for d in p]
    assert sorted(flat) == list(range(limit or n_batches))  # every batch exactly once, whatever the world size


def test_fewer_evaluation_batches_than_ranks_is_a_config_error() -> None:
    ds = _batches(4, split="val")
    with pytest.raises(ConfigError, match=r"data\.sim_val_size: expected at least 2 batches"):
        SimSeedSampler(ds, 2, 1, training=False)


def test_cpu_loader_path_uses_the_same_seeds() -> None:
    """simulate_on_device=false: a draw is the same batch every time (no per-worker salt), different draws
    differ, and the host path gives the device path's data for the same draw."""
    cpu = _batches(64, on_device=False)
    dev = _batches(64, on_device=True)
    a, b, again = cpu[3], cpu[4], cpu[3]
    assert torch.equal(a["input"], again["input"]) and not torch.equal(a["input"], b["input"])
    item = dev[3]
    assert isinstance(item[SIM_SEED_KEY], int)  # a host int: the module reads it without a device sync
    gen = torch.Generator().manual_seed(item[SIM_SEED_KEY])
    same = dev.task.simulate_batch(dev.cfg, dev.batch_size, gen, torch.device("cpu"))
    assert torch.equal(same["input"], a["input"])


def test_datamodule_loaders_follow_the_rank(tmp_path: Path) -> None:
    cfg = load_config(_toy_cfg(tmp_path))
    draws = {}
    for rank in (0, 1):
        dm = TaskDataModule(cfg, api.get_task(cfg))
        dm.rank_and_world = lambda rank=rank: (rank, 2)  # what a trainer attached to rank `rank` of 2 reports
        dm.setup("fit")
        draws[rank] = [b[SIM_SEED_KEY] for b in dm.train_dataloader()]
        assert len(draws[rank]) == 4
    assert not set(draws[0]) & set(draws[1])


# ---------------------------------------------------------------------------------------------- two ranks


def test_two_ranks_simulate_different_data(two_rank_run: Path) -> None:
    rows = _rows(two_rank_run / "rec", "draws")
    assert set(rows) == {0, 1}
    train = {r: [x for x in rows[r] if x["phase"] == "train"] for r in rows}
    assert [len(train[0]), len(train[1])] == [12, 12]  # 3 epochs x 4 steps on each rank
    seeds = [x["seed"] for r in rows for x in train[r]]
    prints = [x["fp"] for r in rows for x in train[r]]
    assert len(set(seeds)) == 24 and len(set(prints)) == 24  # no seed and no batch twice, across ranks and epochs


def test_two_ranks_split_validation_without_repeats(two_rank_run: Path) -> None:
    rows = _rows(two_rank_run / "rec", "draws")
    val_ds = _batches(96, batch=32, split="val")
    expected = Counter(val_ds.seed_of(i) for i in range(3))
    for epoch in range(3):
        got = Counter(x["seed"] for r in rows for x in rows[r] if x["phase"] == "val" and x["epoch"] == epoch)
        assert got == expected  # the 3 validation batches, each once: 2 on rank 0, 1 on rank 1
    assert {len([x for x in rows[r] if x["phase"] == "val"]) for r in rows} == {6, 3}


def test_two_ranks_write_the_run_once(two_rank_run: Path) -> None:
    writes = _rows(two_rank_run / "rec", "writes")
    assert set(writes) == {0}, "rank 1 wrote files"
    names = Counter(Path(w["path"]).name for w in writes[0])
    assert names["config.yaml"] == 1 and names["metrics.json"] == 1
    assert names["last.ckpt"] == 3  # once an epoch
    run = two_rank_run / "runs" / "toy" / "t"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    assert (metrics["epoch"], metrics["global_step"]) == (3, 12)
    assert metrics["train/samples_per_sec"] > 0  # logged by StepThroughput over both ranks


def test_two_ranks_learn_like_one_at_equal_samples_seen(
    two_rank_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks x 12 steps of 32 samples against one rank x 24 steps of 32 (768 samples each, same seed,
    same learning rate): the held-out losses agree within a factor 1.5 and both beat the untrained net 2x."""
    import toy_task

    monkeypatch.setattr(toy_task.ToyTask, "build_model", _bn_model)
    cfg2 = load_config(_toy_cfg(two_rank_run))
    _, two = load_model(cfg2.run_dir / "checkpoints" / "last.ckpt")
    cfg1 = load_config(_toy_cfg(tmp_path))
    run1 = api.train(cfg1)
    assert load_checkpoint(run1 / "checkpoints" / "last.ckpt")["global_step"] == 24
    _, one = load_model(run1 / "checkpoints" / "last.ckpt")
    untrained = api.get_task(cfg1).build_model(cfg1)
    l1, l2, l0 = _held_out_loss(cfg1, one), _held_out_loss(cfg1, two), _held_out_loss(cfg1, untrained)
    assert l1 < 0.5 * l0 and l2 < 0.5 * l0
    print(f"held-out MSE: untrained {l0:.4f}, one rank {l1:.4f}, two ranks {l2:.4f}")
    assert l2 < 1.5 * l1 and l1 < 1.5 * l2, (l1, l2)


@pytest.mark.slow  # a second pair of processes: ~20-40 s on a loaded 2-core machine
def test_two_ranks_with_gradient_accumulation(tmp_path: Path) -> None:
    """DDP's static graph trips over no_sync (gradient accumulation): the engine must not ask for it then."""
    script = tmp_path / "run_toy.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\nimport toy_task\nfrom neurotrain.cli import main\nmain()\n")
    args = ["train", str(_toy_cfg(tmp_path)), "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_epochs=1",
            "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(tmp_path / "runs" / "toy" / "t" / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.mark.parametrize("task", ["gamma", "smlm", "deflare"])
def test_scaling_bench_overrides_fit_the_train_configs(task: str, tmp_path: Path) -> None:
    """bench/scaling.py's runs: valid configs, one epoch of the same samples seen on 1 and 2 devices."""
    sys.path.insert(0, str(TESTS_DIR.parent / "bench"))
    import scaling

    args = scaling.parse_args(["--lr-scaling", "linear"])
    config = TESTS_DIR.parent / "configs" / task / "train.yaml"
    cfgs = {n: load_config(config, scaling.overrides_for(task, config, n, 100 // n, args, tmp_path)) for n in (1, 2)}
    for n, cfg in cfgs.items():
        assert (cfg.trainer.devices, cfg.trainer.max_epochs, cfg.trainer.precision) == (n, 1, "bf16-mixed")
        assert cfg.data.sim_train_size == 100 * cfg.data.batch_size  # samples seen, whatever the device count
    assert cfgs[2].trainer.strategy == "ddp" and cfgs[2].optim.lr == pytest.approx(2 * cfgs[1].optim.lr)


def test_hdf5_evaluation_rows_are_split_once_each(tmp_path: Path) -> None:
    """An HDF5 validation split under two ranks: every row on exactly one rank, none repeated."""
    from neurotrain.engine.simulate import simulate_to_h5

    cfg = load_config(_toy_cfg(tmp_path))
    h5 = simulate_to_h5(api.get_task(cfg), cfg, tmp_path / "toy.h5", 210)
    cfg = load_config(_toy_cfg(tmp_path), [f"data.path={h5}", "data.batch_size=4"])
    rows = {}
    for rank in (0, 1):
        dm = TaskDataModule(cfg, api.get_task(cfg))
        dm.rank_and_world = lambda rank=rank: (rank, 2)
        dm.setup("fit")
        rows[rank] = torch.cat([b["input"] for b in dm.val_dataloader()])
    n_val = len(dm.sets["val"])
    assert n_val % 2 == 1  # an odd split: the ranks differ by one row
    both = torch.cat([rows[0], rows[1]])
    assert len(both) == n_val and len(torch.unique(both, dim=0)) == n_val


@pytest.mark.parametrize("progress_bar", [False, True])
def test_training_step_reads_nothing_back_to_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress_bar: bool
) -> None:
    """A CPU stand-in for ``torch.cuda.set_sync_debug_mode``: from a batch's simulation to the end of its
    optimiser step, no tensor is turned into a Python value (each would stall a GPU's queue), except the
    optimiser's step counters (CPU tensors on a GPU too) and, with a progress bar shown, the loss it shows.
    Off logging steps (``log_every_n_steps`` above the run's length)."""
    from lightning.pytorch.callbacks import Callback

    from neurotrain.engine import module

    active = {"on": False}
    reads: Counter = Counter()

    def counting(name: str):
        orig = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            if active["on"]:
                stack = traceback.extract_stack()[:-1]
                if not any("/torch/optim/" in f.filename for f in stack):
                    f = [f for f in stack if "/torch/" not in f.filename][-1]
                    reads[f"{name} {f.filename.split('site-packages/')[-1]}:{f.lineno}"] += 1
            return orig(self, *a, **k)

        return read

    for name in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    after = module.TaskModule.on_after_batch_transfer

    def timed_after(self, batch, idx):
        active["on"] = self.trainer.training and self.trainer.global_step >= 2  # past Lightning's first-step work
        return after(self, batch, idx)

    class Stop(Callback):
        def on_train_batch_end(self, *args: object) -> None:
            active["on"] = False

    callbacks = module.TaskModule.configure_callbacks
    monkeypatch.setattr(module.TaskModule, "on_after_batch_transfer", timed_after)
    monkeypatch.setattr(module.TaskModule, "configure_callbacks", lambda self: callbacks(self) + [Stop()])
    cfg = load_config(_toy_cfg(tmp_path), ["trainer.max_epochs=1", "logging.log_every_n_steps=1000",
                                           f"trainer.progress_bar={str(progress_bar).lower()}"])
    api.train(cfg)
    if progress_bar:
        assert reads and all("apply_func" in k for k in reads), reads  # Lightning reading the shown loss
    else:
        assert not reads, reads
