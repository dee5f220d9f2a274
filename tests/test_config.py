from __future__ import annotations

from pathlib import Path

import pytest

from neurotrain.config import apply_overrides, load_config, validate_config
from neurotrain.errors import ConfigError

YAML = """
task: toy
seed: 5
trainer:
  max_epochs: 4
  precision: bf16-mixed
optim:
  name: sgd
  lr: 0.1
model:
  width: 7
"""

TOML = """
task = "toy"
seed = 5
[trainer]
max_epochs = 4
precision = "bf16-mixed"
[optim]
name = "sgd"
lr = 0.1
[model]
width = 7
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path, "c.yaml", YAML))
    b = load_config(_write(tmp_path, "c.toml", TOML))
    assert a == b
    assert a.model.width == 7 and a.trainer.max_epochs == 4 and a.optim.name == "sgd"
    assert a.data.batch_size == 32  # schema default filled in


def test_overrides_apply_and_are_typed(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "c.yaml", YAML), ["trainer.max_epochs=12", "optim.lr=3e-4", "data.splits=[0.5,0.25,0.25]", "run.name=abc"])
    assert cfg.trainer.max_epochs == 12
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.splits == (0.5, 0.25, 0.25)
    assert cfg.run_dir == Path("runs/toy/abc")


def test_override_with_wrong_type_is_one_line(tmp_path: Path) -> None:
    f = _write(tmp_path, "c.yaml", YAML)
    with pytest.raises(ConfigError) as e:
        load_config(f, ["trainer.max_epochs=ten"])
    assert str(e.value) == f"config error in {f}: trainer.max_epochs: Input should be a valid integer, unable to parse string as an integer (got 'ten')"


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    f = _write(tmp_path, "c.yaml", YAML + "\ntrainr: {max_epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"trainr: unknown key"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"optim.lrr: unknown key"):
        load_config(_write(tmp_path, "d.yaml", YAML), ["optim.lrr=1"])


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    f = _write(tmp_path, "c.yaml", YAML)
    with pytest.raises(ConfigError) as e:
        load_config(f, ["trainer.max_epochs=ten", "optim.lr=-1", "data.splits=[0.5,0.5,0.5]"])
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"config error in {f}: ") for line in lines)


def test_missing_file_and_bad_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        validate_config({"task": "nope"}, "x")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(_write(tmp_path, "bad.yaml", "task: [toy\n"))


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


READY_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", READY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_ready_config_validates(path: Path) -> None:
    import neurotrain.tasks  # noqa: F401  (registers the tasks whose schemas validate these files)

    cfg = load_config(path)
    assert cfg.task == path.parent.name
