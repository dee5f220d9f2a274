from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import toy_task  # noqa: E402,F401  (registers the "toy" task)

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real data folder {REALDATA} is absent (only present in the project workspace)")
    return REALDATA


@pytest.fixture
def toy_cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(
        f"""
task: toy
seed: 3
run: {{name: t, output_dir: {tmp_path / 'runs'}}}
trainer: {{max_epochs: 3, accelerator: cpu, devices: 1, progress_bar: false}}
optim: {{name: adam, lr: 0.02}}
data: {{batch_size: 32, sim_train_size: 256, sim_val_size: 64, sim_test_size: 64}}
logging: {{log_every_n_steps: 1}}
"""
    )
    return p
