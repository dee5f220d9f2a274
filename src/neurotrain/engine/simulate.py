"""Write a task's simulated batches into an HDF5 store, with a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from neurotrain.io.hdf5 import H5Writer

if TYPE_CHECKING:
    from neurotrain.config import Config
    from neurotrain.task import Task


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def data_attrs(cfg: Config) -> dict[str, object]:
    """File attributes that pin down the data: task, seed and every task-specific section.
    A ``.part`` written with other settings is then refused on resume instead of mixed in."""
    from neurotrain.config import Config as Base, config_to_dict

    common = set(Base.model_fields) - {"task", "seed"}
    shaping = {k: v for k, v in config_to_dict(cfg).items() if k not in common}
    shaping["batch_size"] = cfg.data.batch_size
    return {"task": cfg.task, "seed": cfg.seed, "neurotrain_config": json.dumps(shaping, sort_keys=True)}


def simulate_to_h5(task: Task, cfg: Config, output: Path, n: int, *, resume: bool = True) -> Path:
    """Simulate ``n`` samples in batches of ``data.batch_size`` on the inference device and
    append them to ``output``. An interrupted run resumes where it stopped: batch ``i``
    always comes from the same seed, so the finished file does not depend on interruptions."""
    device = pick_device(cfg.inference.device)
    bs = cfg.data.batch_size
    output = Path(output)
    with H5Writer(output, resume=resume, attrs=data_attrs(cfg)) as writer:
        start = writer.n_rows
        with Progress(
            TextColumn(f"simulate {cfg.task}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        ) as bar:
            job = bar.add_task("simulate", total=n, completed=start)
            done = start
            while done < n:
                size = min(bs, n - done)
                gen = torch.Generator(device=device)
                gen.manual_seed(cfg.seed * 1_000_003 + done)
                with torch.no_grad():
                    batch = task.simulate_batch(cfg, size, gen, device)
                writer.append(**{k: v.detach().cpu() for k, v in batch.items() if isinstance(v, torch.Tensor)})
                done += size
                bar.update(job, completed=done)
    return output
