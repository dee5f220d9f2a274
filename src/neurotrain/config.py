"""Configuration: load YAML/TOML, apply ``a.b.c=value`` overrides, validate with pydantic.

The schema is one tree. :class:`Config` holds the part every task shares (``task``,
``seed``, ``run``, ``trainer``, ``optim``, ``sched``, ``data``, ``logging``,
``inference``, ``export``); each task subclasses it and adds its own sections (``model``,
``simulate``, ...). Every model forbids unknown keys, so a typo is an error, never a
silently ignored setting. Every default lives here or in a task's schema.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from neurotrain.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RunConfig(Section):
    name: str = "default"
    output_dir: Path = Path("runs")


class EarlyStoppingConfig(Section):
    enabled: bool = False
    monitor: str = "val/loss"
    patience: int = Field(5, ge=0)
    mode: Literal["min", "max"] = "min"
    min_delta: float = 0.0


class CheckpointConfig(Section):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    every_n_epochs: int = Field(1, ge=1)


class TrainerConfig(Section):
    max_epochs: int = Field(10, ge=1)
    max_steps: int = -1
    #: wall-clock limit "DD:HH:MM:SS" (Lightning's max_time): training stops there and saves last.ckpt, so a
    #: long run goes in pieces of a few minutes, each continued with --resume
    max_time: str | None = None
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str | list[int] = "auto"
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "deepspeed_stage_2"] = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    compile: bool = False
    deterministic: bool = False
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    val_check_interval: int | float = 1.0
    progress_bar: bool = True
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    nesterov: bool = False


class SchedConfig(Section):
    name: Literal["none", "cosine", "step", "plateau", "onecycle"] = "none"
    warmup_steps: int = Field(0, ge=0)
    min_lr: float = 0.0
    step_size: int = Field(10, ge=1)
    gamma: float = 0.1
    factor: float = 0.5
    patience: int = 3
    monitor: str = "val/loss"
    pct_start: float = 0.3


class DataConfig(Section):
    path: Path | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool = False
    persistent_workers: bool = False
    sim_train_size: int = Field(1024, ge=1)
    sim_val_size: int = Field(128, ge=1)
    sim_test_size: int = Field(128, ge=1)
    simulate_on_device: bool = True

    @field_validator("splits")
    @classmethod
    def _splits_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1 (got {list(v)})")
        return v


class LoggingConfig(Section):
    tensorboard: bool = True
    csv: bool = True
    log_every_n_steps: int = Field(10, ge=1)
    debug_steps: int = Field(2, ge=1)  # ``train --debug``: training steps that write debug figures


class InferenceConfig(Section):
    """Inference (predict / evaluate / test): memory cap, batch size, device and the
    arithmetic: ``bf16`` / ``fp16`` autocast on the device (``fp32`` keeps full precision;
    TF32 matmuls are allowed either way on CUDA)."""

    max_memory_gb: float = Field(4.0, gt=0)
    batch_size: int | None = None
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile the network for inference (fuses element-wise work; slow first batch)


class ExportConfig(Section):
    """``neurotrain export``: int8 quantisation, its calibration, quantisation-aware training and the
    before/after report (``quantize.py``, ``export_report.py``).

    ``quantize``: ``dynamic`` = weights int8, activations quantised on the fly (no data needed); ``static`` =
    weights and activations int8 with activation ranges calibrated on ``calibration_batches`` batches of the
    validation split (QDQ format, onnxruntime ``quantize_static``). ``qat: true`` fine-tunes the network with
    fake-quantised weights and activations for ``qat_epochs`` x ``qat_batches`` training batches before the
    int8 export (it implies int8 even with ``quantize: none``). The report scores fp32 and int8 on
    ``report_batches`` batches of ``report_split`` and times onnxruntime on the CPU.
    """

    quantize: Literal["none", "dynamic", "static"] = "none"
    calibration_batches: int = Field(8, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_percentile: float = Field(99.999, gt=50, le=100)  # ``percentile``: onnxruntime's default
    per_channel: bool = True  # one weight scale per output channel (usual for conv nets; opset >= 13)
    #: 7-bit weights: avoids the 16-bit saturation of onnxruntime's uint8 x int8 kernels on x86 CPUs without
    #: VNNI (AVX2 only); ``auto`` = on unless the exporting machine has VNNI
    reduce_range: bool | Literal["auto"] = "auto"
    preprocess: bool = True  # onnxruntime quant_pre_process (shape inference, graph clean-up) first
    qat: bool = False
    qat_epochs: int = Field(2, ge=1)
    qat_batches: int = Field(16, ge=1)  # training batches per QAT epoch
    qat_lr: float = Field(1e-4, gt=0)  # small: QAT only adapts trained weights to the int8 grid
    #: ``auto``: export the fake-quant graph as QDQ ONNX, else fine-tuned weights + static calibration;
    #: ``qdq`` / ``calibrate``: only that route
    qat_export: Literal["auto", "qdq", "calibrate"] = "auto"
    report_split: Literal["val", "test"] = "test"
    report_batches: int = Field(8, ge=1)
    latency_batch: int = Field(1, ge=1)
    latency_repeats: int = Field(20, ge=1)  # the report gives the median
    latency_warmup: int = Field(3, ge=0)
    latency_threads: int = Field(0, ge=0)  # onnxruntime intra-op threads; 0 = its default (all cores)
    sidecar: bool = True  # write <name>.json with the task's pre/post-processing next to each .onnx


class Config(Section):
    """The common part of every task's config."""

    task: str
    seed: int = 0
    run: RunConfig = RunConfig()
    trainer: TrainerConfig = TrainerConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    data: DataConfig = DataConfig()
    logging: LoggingConfig = LoggingConfig()
    inference: InferenceConfig = InferenceConfig()
    export: ExportConfig = ExportConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.task / self.run.name


# --------------------------------------------------------------------------- loading


MAX_CONFIG_BYTES = 16 * 2**20
"""A config is a few kB of text; a file past 16 MiB is a wrong path (a data file), refused before parsing."""
MAX_SHOWN_CHARS = 80
"""Longest quoted input in an error line (a pasted blob must not turn one line into a page)."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def _parse_problem(exc: Exception) -> str:
    """YAML's problem and where (line, column; 1-based), or TOML's own one-line message."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return (str(exc).strip().splitlines() or ["unknown error"])[0]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a plain dict.

    Every way a file can be unusable (missing, a folder, unreadable, not UTF-8 text, too big, not parseable,
    nested past Python's recursion limit, not a mapping) is one :class:`ConfigError` line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config error in {path}: is a folder, expected a .yaml, .yml or .toml file")
    if not path.is_file():
        raise ConfigError(f"config error in {path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config error in {path}: expected a .yaml, .yml or .toml file (got {suffix!r})")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config error in {path}: {size} bytes, expected a config of at most "
                              f"{MAX_CONFIG_BYTES} bytes (is this a data file?)")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config error in {path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config error in {path}: not UTF-8 text (byte {exc.start}: "
                          f"{raw[exc.start:exc.start + 1]!r}); is this a binary file?") from None
    if "\x00" in text:
        raise ConfigError(f"config error in {path}: contains NUL bytes; expected a text file")
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config error in {path}: cannot parse: {_parse_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"config error in {path}: cannot parse: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config error in {path}: top level must be a mapping (got {type(data).__name__})")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config error in {path}: {_short(bad[0])}: expected a text key (got {type(bad[0]).__name__})")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied; value is parsed as YAML."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error in {source}: override {item!r} is not of the form a.b.c=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"config error in {source}: override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"config error in {source}: {'.'.join(parts)}: {p} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
            lines.append(f"config error in {source}: {loc}: {msg}")
            continue
        got = err.get("input")
        if err["type"] != "missing" and not isinstance(got, dict) and "(got " not in msg:
            msg = f"{msg} (got {_short(got)})"
        lines.append(f"config error in {source}: {loc}: {msg}")
    return "\n".join(lines)


def config_class_for(task: str) -> type[Config]:
    """The schema class the named task registered."""
    from neurotrain.registry import TASKS
    import neurotrain.tasks  # noqa: F401  (tasks register on import)

    return TASKS.get(task).config_cls


def validate_config(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain dict against the schema of the task it names."""
    task = data.get("task")
    if task is None:
        raise ConfigError(f"config error in {source}: task: Field required (one of the registered task names)")
    if not isinstance(task, str):
        raise ConfigError(f"config error in {source}: task: expected a task name (got {_short(task)})")
    from neurotrain.errors import UnknownNameError

    try:
        cls = config_class_for(task)
    except UnknownNameError as exc:
        raise ConfigError(f"config error in {source}: task: {exc}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except RecursionError:
        raise ConfigError(f"config error in {source}: nested too deeply") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config file; raise :class:`ConfigError` with one line per problem."""
    data = read_config_file(path)
    data = apply_overrides(data, list(overrides or []), source=str(path))
    return validate_config(data, source=str(path))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-able data (str, int, float, bool, list, dict) — safe to embed in checkpoints."""
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
