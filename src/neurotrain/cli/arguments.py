"""Command-line arguments -> what the verbs work on: configs (file, task name or quickstart), ``--opt`` task
options, ``--elements`` name lists. Heavy modules (pydantic schemas, torch) are imported only when called."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurotrain.errors import ConfigError


def load(config: Path, overrides: list[str] | None) -> Any:
    """The validated config of file ``config`` with the ``a.b=c`` ``overrides`` applied."""
    from neurotrain.config import load_config

    return load_config(config, overrides or [])


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--opt key=value`` task options; values parsed as YAML."""
    import yaml

    opts: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"config error in --opt: {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"config error in --opt: {item!r} has an empty key")
        try:
            opts[k.strip()] = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            opts[k.strip()] = v  # a plain string such as a path with a colon
    return opts


def task_or_config(target: str, overrides: list[str] | None) -> Any:
    """A config file path, or a task name (its schema defaults, or its quickstart config)."""
    from neurotrain.config import apply_overrides, validate_config

    path = Path(target)
    if path.suffix.lower() in (".yaml", ".yml", ".toml") or path.is_file():
        return load(path, overrides)
    quick = find_quickstart(target)
    if quick is not None:
        return load(quick, overrides)
    return validate_config(apply_overrides({"task": target}, overrides or []), source=f"task {target}")


def repo_configs_dir() -> Path:
    """``configs/`` of the current directory, else of the source checkout neurotrain runs from."""
    here = Path.cwd() / "configs"
    if here.is_dir():
        return here
    # src/neurotrain/cli/arguments.py -> the checkout's root is three folders up from cli/
    return Path(__file__).resolve().parents[3] / "configs"


def find_quickstart(task: str) -> Path | None:
    """``configs/<task>/quickstart.yaml`` (see :func:`repo_configs_dir`), or ``None`` when the task has none."""
    p = repo_configs_dir() / task / "quickstart.yaml"
    return p if p.is_file() else None


def split_names(items: list[str] | None) -> list[str]:
    """``["C_FE,MG_FE", "CA_FE"]`` -> ``["C_FE", "MG_FE", "CA_FE"]`` (commas or spaces separate)."""
    names: list[str] = []
    for item in items or []:
        names += [n for n in item.replace(",", " ").split() if n]
    return names
