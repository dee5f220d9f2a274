from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotrain.config import load_config
from neurotrain.engine import api
from neurotrain.engine.checkpoint import load_checkpoint, load_model
from neurotrain.engine.module import TaskModule
from neurotrain.errors import CheckpointError, NeurotrainError


def _val_loss(cfg, model) -> float:
    task = api.get_task(cfg)
    batch = task.simulate_batch(cfg, 512, torch.Generator().manual_seed(7), torch.device("cpu"))
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(batch["input"]), batch["target"]))


def test_training_lowers_the_loss_and_writes_a_run(toy_cfg_file: Path) -> None:
    cfg = load_config(toy_cfg_file)
    untrained = api.get_task(cfg).build_model(cfg)
    torch.manual_seed(cfg.seed)
    run = api.train(cfg)
    ckdir = run / "checkpoints"
    assert (ckdir / "best.ckpt").is_file() and (ckdir / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert any((run / "tb").rglob("events.out.tfevents*"))
    assert (run / "csv" / "metrics.csv").is_file()  # one CSV per run, continued by --resume
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    assert metrics["epoch"] == 3 and metrics["global_step"] == 3 * 8
    _, trained = load_model(ckdir / "best.ckpt")
    assert _val_loss(cfg, trained) < 0.5 * _val_loss(cfg, untrained)


def test_checkpoint_is_plain_data(toy_cfg_file: Path) -> None:
    cfg = load_config(toy_cfg_file, ["trainer.max_epochs=1"])
    run = api.train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["config"]["task"] == "toy"
    assert ckpt["hyper_parameters"]["config"]["optim"]["lr"] == 0.02


def test_resume_continues_at_the_right_epoch_and_step(toy_cfg_file: Path) -> None:
    cfg2 = load_config(toy_cfg_file, ["trainer.max_epochs=2", "sched.name=cosine", "sched.warmup_steps=3"])
    run = api.train(cfg2)
    first = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert first["epoch"] == 1 and first["global_step"] == 16
    cfg4 = load_config(toy_cfg_file, ["trainer.max_epochs=4", "sched.name=cosine", "sched.warmup_steps=3"])
    api.train(cfg4, resume=True)
    second = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert second["epoch"] == 3 and second["global_step"] == 32
    # optimiser state went on from the first run, not from scratch
    assert second["optimizer_states"][0]["state"][0]["step"] == 32
    assert second["lr_schedulers"][0]["last_epoch"] == 32
    with pytest.raises(NeurotrainError, match="run exists"):
        api.train(cfg4)


def test_last_checkpoint_follows_every_epoch_even_without_improvement(toy_cfg_file: Path) -> None:
    """last.ckpt is the last epoch whether or not the monitored metric improved (Lightning 2.6's save_last
    writes it only with a new best); best.ckpt stays at the best epoch."""
    # mode=max on a falling loss: only the first epoch is ever "best"
    cfg = load_config(toy_cfg_file, ["trainer.max_epochs=3", "trainer.checkpoint.mode=max"])
    run = api.train(cfg)
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (best["epoch"], best["global_step"]) == (0, 8)
    assert (last["epoch"], last["global_step"]) == (2, 24)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_resume_without_checkpoint_fails_clearly(toy_cfg_file: Path) -> None:
    cfg = load_config(toy_cfg_file, ["run.name=fresh"])
    with pytest.raises(CheckpointError, match="nothing to resume"):
        api.train(cfg, resume=True)


def test_early_stopping_stops(toy_cfg_file: Path) -> None:
    # a learning rate of ~0 cannot improve val/loss, so patience 1 stops after 2 epochs
    cfg = load_config(
        toy_cfg_file,
        ["trainer.max_epochs=20", "optim.lr=1e-12", "trainer.early_stopping.enabled=true",
         "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=1e-3"],
    )
    run = api.train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    assert metrics["epoch"] < 5


@pytest.mark.parametrize("opt,sched", [("sgd", "step"), ("adamw", "onecycle"), ("adam", "plateau")])
def test_optimisers_and_schedulers_run(toy_cfg_file: Path, opt: str, sched: str) -> None:
    cfg = load_config(toy_cfg_file, [f"optim.name={opt}", f"sched.name={sched}", "trainer.max_epochs=2",
                                     "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2"])
    run = api.train(cfg)
    ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 8  # 2 epochs x 8 batches / accumulation 2
    assert ck["lr_schedulers"], "scheduler state must be in the checkpoint"


def test_checkpoint_alone_is_enough_for_predict(toy_cfg_file: Path, tmp_path: Path) -> None:
    cfg = load_config(toy_cfg_file, ["trainer.max_epochs=1"])
    run = api.train(cfg)
    ckpt = tmp_path / "moved.ckpt"
    ckpt.write_bytes((run / "checkpoints" / "best.ckpt").read_bytes())
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (out,) = api.predict(ckpt, [tmp_path / "x.npy"], tmp_path / "y.npy")
    module = TaskModule(load_checkpoint(ckpt)["hyper_parameters"]["config"])
    module.load_state_dict(load_checkpoint(ckpt)["state_dict"])
    with torch.no_grad():
        expect = module.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(out), expect, rtol=1e-6)


def test_test_command_writes_metrics(toy_cfg_file: Path) -> None:
    cfg = load_config(toy_cfg_file, ["trainer.max_epochs=2"])
    api.train(cfg)
    metrics = api.test(cfg)
    assert metrics["test/mse"] == pytest.approx(metrics["test/loss"], rel=1e-4)
    saved = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert set(saved) >= {"train", "test"}


def test_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_model(bad)


def test_h5_training_data(toy_cfg_file: Path, tmp_path: Path) -> None:
    from neurotrain.engine.simulate import simulate_to_h5

    cfg = load_config(toy_cfg_file)
    h5 = simulate_to_h5(api.get_task(cfg), cfg, tmp_path / "toy.h5", 200)
    cfg = load_config(toy_cfg_file, [f"data.path={h5}", "trainer.max_epochs=1", "data.num_workers=0"])
    run = api.train(cfg)
    ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 5  # 160 training rows / 32


def test_simulate_resume_refuses_other_settings(toy_cfg_file: Path, tmp_path: Path) -> None:
    from neurotrain.engine.simulate import simulate_to_h5
    from neurotrain.errors import DataError
    from neurotrain.io.hdf5 import part_path

    cfg = load_config(toy_cfg_file)
    out = tmp_path / "toy.h5"
    part = part_path(out)
    # an interrupted run leaves a .part behind
    from neurotrain.engine.simulate import data_attrs
    from neurotrain.io.hdf5 import H5Writer

    with pytest.raises(RuntimeError):
        with H5Writer(out, attrs=data_attrs(cfg)) as w:
            w.append(input=np.zeros((4, 8), np.float32), target=np.zeros((4, 2), np.float32))
            raise RuntimeError("killed")
    assert part.exists()
    other = load_config(toy_cfg_file, ["model.n_in=4"])
    with pytest.raises(DataError):
        simulate_to_h5(api.get_task(other), other, out, 10)
    simulate_to_h5(api.get_task(cfg), cfg, out, 40)
    assert out.is_file() and not part.exists()


def test_ddp_on_two_cpu_processes_splits_the_data(toy_cfg_file: Path, tmp_path: Path) -> None:
    """DDP (gloo, two CPU ranks): each rank sees half the simulated batches, so an epoch has half the steps,
    rank 0 writes one run, and the trained model still beats its untrained self."""
    import subprocess
    import sys

    tests_dir = Path(__file__).resolve().parents[1]
    # Lightning's DDP launcher starts the other rank by re-running this script with the same arguments
    script = tmp_path / "run_toy.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(tests_dir)!r})\nimport toy_task\nfrom neurotrain.cli import main\nmain()\n")
    args = ["train", str(toy_cfg_file), "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_config(toy_cfg_file)
    run = cfg.run_dir
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    assert metrics["epoch"] == 3 and metrics["global_step"] == 3 * 8 // 2
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")  # what --resume continues from
    assert (last["epoch"], last["global_step"]) == (2, 12)
    _, trained = load_model(run / "checkpoints" / "best.ckpt")
    untrained = api.get_task(cfg).build_model(cfg)
    assert _val_loss(cfg, trained) < 0.5 * _val_loss(cfg, untrained)


def test_max_time_stops_a_long_run_with_a_checkpoint_to_resume(toy_cfg_file: Path) -> None:
    cfg = load_config(toy_cfg_file, ["trainer.max_epochs=100000", "trainer.max_time=00:00:00:02"])
    run = api.train(cfg)
    ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert 0 < ck["global_step"] < 100000 * 8
