"""Fuzz: malformed YAML/TOML configs -> one ConfigError line per problem, naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurotrain.config import load_config
from neurotrain.errors import ConfigError

from ._util import assert_one_line, raises_one_line, seeded_bytes

GOOD_YAML = """task: toy
seed: 3
run: {name: t}
trainer: {max_epochs: 3, accelerator: cpu, devices: 1}
optim: {name: adam, lr: 0.02}
data: {batch_size: 32, splits: [0.8, 0.1, 0.1]}
"""
GOOD_TOML = """task = "toy"
seed = 3
[run]
name = "t"
[trainer]
max_epochs = 3
[optim]
lr = 0.02
"""

YAML_CASES = {
    "tabs_and_colons": "task: toy\n\tseed: : 3\n",
    "unclosed_flow": "task: toy\ntrainer: {max_epochs: 3\n",
    "unclosed_quote": "task: 'toy\n",
    "bad_indent": "task: toy\ntrainer:\n  max_epochs: 3\n bad: 1\n",
    "list_top": "- task\n- toy\n",
    "scalar_top": "toy\n",
    "int_key": "task: toy\n1: 2\n",
    "no_task": "seed: 3\n",
    "unknown_task": "task: tyo\n",
    "task_number": "task: 7\n",
    "typo_key": "task: toy\ntrainr: {max_epochs: 3}\n",
    "typo_nested": "task: toy\ntrainer: {max_epoch: 3}\n",
    "text_int": "task: toy\ntrainer: {max_epochs: ten}\n",
    "negative_epochs": "task: toy\ntrainer: {max_epochs: -1}\n",
    "zero_lr": "task: toy\noptim: {lr: 0}\n",
    "nan_lr": "task: toy\noptim: {lr: .nan}\n",
    "bad_literal": "task: toy\noptim: {name: rmsprop}\n",
    "splits_sum": "task: toy\ndata: {splits: [0.5, 0.1, 0.1]}\n",
    "splits_len": "task: toy\ndata: {splits: [0.5, 0.5]}\n",
    "section_scalar": "task: toy\ntrainer: 3\n",
    "list_for_section": "task: toy\noptim: [1, 2]\n",
    "python_tag": "task: toy\nseed: !!python/object/apply:os.system ['echo hi']\n",
    "deep": "task: toy\nx: " + "[" * 5000 + "]" * 5000 + "\n",
    "long_value": "task: toy\nrun: {name: " + "[" + "1," * 50000 + "1]}\n",
}
TOML_CASES = {
    "toml_syntax": "task = toy\n",
    "toml_dup": "task = 'toy'\ntask = 'toy'\n",
    "toml_unclosed": "task = 'toy'\n[trainer\nmax_epochs = 3\n",
    "toml_type": "task = 'toy'\n[trainer]\nmax_epochs = 'ten'\n",
    "toml_unknown": "task = 'toy'\n[trainr]\nmax_epochs = 3\n",
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_yaml(tmp_path: Path, case: str) -> None:
    p = tmp_path / f"{case}.yaml"
    p.write_text(YAML_CASES[case], encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    for line in str(info.value).splitlines():  # one line per problem, each naming the file
        assert p.name in line and len(line) < 400, line


@pytest.mark.parametrize("case", sorted(TOML_CASES))
def test_bad_toml(tmp_path: Path, case: str) -> None:
    p = tmp_path / f"{case}.toml"
    p.write_text(TOML_CASES[case], encoding="utf-8")
    raises_one_line(lambda: load_config(p), p, ConfigError)


@pytest.mark.parametrize("case", ["binary", "utf16", "nul", "empty_dir", "wrong_suffix", "missing", "latin1"])
def test_unreadable_config_file(tmp_path: Path, case: str) -> None:
    p = tmp_path / "c.yaml"
    if case == "binary":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + seeded_bytes(0, 200))
    elif case == "utf16":
        p.write_bytes(GOOD_YAML.encode("utf-16"))
    elif case == "nul":
        p.write_bytes(b"task: toy\x00\nseed: 1\n")
    elif case == "empty_dir":
        p.mkdir()
    elif case == "wrong_suffix":
        p = tmp_path / "c.json"
        p.write_text("{}")
    elif case == "latin1":
        p.write_bytes("task: toy\nrun: {name: caf\xe9}\n".encode("latin-1"))
    raises_one_line(lambda: load_config(p), p, ConfigError)


def test_empty_file_names_the_missing_task(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert "task" in raises_one_line(lambda: load_config(p), p, ConfigError)


@pytest.mark.parametrize("suffix,text", [(".yaml", GOOD_YAML), (".toml", GOOD_TOML)])
def test_truncation_at_every_offset(tmp_path: Path, suffix: str, text: str) -> None:
    """A config cut anywhere is either still a valid config or one ConfigError line per problem."""
    for cut in range(0, len(text), 3):
        p = tmp_path / f"cut{cut}{suffix}"
        p.write_text(text[:cut], encoding="utf-8")
        try:
            load_config(p)
        except ConfigError as exc:
            assert all(p.name in line for line in str(exc).splitlines()), str(exc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "rand.yaml"
    p.write_bytes(b"task: toy\n" + data)
    try:
        load_config(p)
    except ConfigError as exc:
        assert all(p.name in line for line in str(exc).splitlines()), str(exc)
        assert str(exc).count("\n") < 20


def test_override_errors_name_the_key(tmp_path: Path) -> None:
    p = tmp_path / "ok.yaml"
    p.write_text(GOOD_YAML)
    msg = raises_one_line(lambda: load_config(p, ["optim.lr.x=1"]), p, ConfigError)
    assert "optim.lr.x" in msg
    assert_one_line(pytest.raises(ConfigError, load_config, p, ["noequals"]).value, p, ConfigError)
