"""The contract between the core and a task.

A task (``neurotrain.tasks.<name>.task``) subclasses :class:`Task`, sets ``name`` and
``config_cls`` (a subclass of :class:`neurotrain.config.Config`) and registers an
instance with ``TASKS.register(name)``. The engine and the CLI only ever talk to a
task through the methods below; everything else stays inside the task's folder.

Batches are ``dict[str, Tensor]``. By convention the network input is
``batch["input"]`` and the training target ``batch["target"]``; a task that needs more
(conditioning, emitter lists, masks) adds keys and overrides :meth:`Task.forward` /
:meth:`Task.update_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from neurotrain.errors import ConfigError, DataError, NotAvailableError

if TYPE_CHECKING:
    import optuna
    from torch.utils.data import Dataset
    from torchmetrics import MetricCollection

    from neurotrain.config import Config


@dataclass
class EvalResult:
    """What ``evaluate`` hands back to the CLI and the demo summary.

    ``metrics`` is the full nested table written to ``metrics.json``; ``headline`` names
    the one number a person of the field looks at first, for the network and for the
    classical baseline (``None`` where a side was not run).
    """

    metrics: dict[str, Any]
    headline_name: str
    headline_network: float | None
    headline_baseline: float | None
    report_path: Path | None = None
    lower_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class TaskOptions(BaseModel):
    """Base of a command's ``--opt key=value`` schema (a task declares one per command it offers).

    Unknown keys are errors, as in the config: a typo such as ``crystl=CsI`` stops with the list of known
    keys instead of running with the default. A field left unset is not passed on, so the task falls back to
    its config (``predict.*``) exactly as without the option. A field's ``description`` is what
    ``neurotrain predict --help`` prints for it.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


OPTION_COMMANDS = ("predict", "evaluate", "simulate", "test", "analyze")
"""Commands that take ``--opt key=value`` task options; ``Task.<command>_options`` holds each schema."""


def check_options(task: Task, command: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``--opt`` values against ``task``'s schema for ``command``; returns the keys the user set
    (typed by the schema). A task that declares no schema for ``command`` gets ``options`` unchanged.

    Raises :class:`ConfigError` with one line per problem: unknown key (naming the known ones) or bad value.
    """
    schema = task.options_schema(command)
    if schema is None:
        return dict(options)
    source = f"--opt ({task.name} {command})"
    known = ", ".join(sorted(schema.model_fields)) or "none"
    try:
        parsed = schema.model_validate(options)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            if err["type"] == "extra_forbidden":
                lines.append(f"config error in {source}: {key}: unknown option (known: {known})")
            else:
                lines.append(f"config error in {source}: {key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None
    return parsed.model_dump(exclude_unset=True)


class Task:
    """Base class of a task. Override what the task offers; the rest says "not available"."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[Config]]
    #: ``--opt`` schemas per command (:class:`TaskOptions` subclasses); ``None`` = not declared, passed on as is
    predict_options: ClassVar[type[TaskOptions] | None] = None
    evaluate_options: ClassVar[type[TaskOptions] | None] = None
    simulate_options: ClassVar[type[TaskOptions] | None] = None
    #: ``test`` and ``analyze`` read no ``--opt`` unless a task declares them (``--baseline``/``--debug`` are flags)
    test_options: ClassVar[type[TaskOptions] | None] = TaskOptions
    analyze_options: ClassVar[type[TaskOptions] | None] = TaskOptions

    def options_schema(self, command: str) -> type[TaskOptions] | None:
        """The ``--opt`` schema of ``command`` (one of :data:`OPTION_COMMANDS`), or ``None``."""
        return getattr(self, f"{command}_options", None) if command in OPTION_COMMANDS else None

    # ------------------------------------------------------------------ building blocks
    def build_model(self, cfg: Config) -> nn.Module:
        raise NotAvailableError(f"task {self.name!r} defines no model")

    def build_loss(self, cfg: Config) -> nn.Module:
        """A module called as ``loss(pred, batch)``; returns a scalar or a dict with key ``"loss"``
        (other keys are logged as ``train/<key>``)."""
        raise NotAvailableError(f"task {self.name!r} defines no loss")

    def build_metrics(self, cfg: Config) -> MetricCollection | None:
        """Validation/test metrics (torchmetrics), updated by :meth:`update_metrics`."""
        return None

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return model(batch["input"])

    def update_metrics(self, metrics: MetricCollection, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        metrics.update(pred, batch["target"])

    def debug_outputs(
        self, cfg: Config, batch: dict[str, torch.Tensor], pred: Any, out_dir: Path, step: int, epoch: int = 0
    ) -> None:
        """Figures for ``train --debug``, called on the first training steps only (``step``: the
        global step; ``epoch``: passed by the engine only to overrides that declare it)."""

    # ------------------------------------------------------------------ data
    def simulate_batch(
        self, cfg: Config, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """One training batch from the physics simulator, on ``device``, reproducible from ``generator``
        (a generator on ``device``)."""
        raise NotAvailableError(f"task {self.name!r} has no simulator")

    def datasets(self, cfg: Config) -> dict[str, Dataset] | None:
        """Own train/val/test datasets, or ``None`` to let the engine choose: the HDF5 file at
        ``data.path`` split by ``data.splits``, or on-the-fly simulation."""
        return None

    def loader_options(self, cfg: Config, split: str, dataset: Dataset) -> dict[str, Any]:
        """Extra ``DataLoader`` arguments for the task's own datasets (``collate_fn``, ``sampler``); a
        ``sampler`` replaces the engine's shuffling, and ``num_workers`` / ``pin_memory`` /
        ``persistent_workers`` given here override the ``data`` section's (vision's device-resident cache
        loads with no workers)."""
        return {}

    def callbacks(self, cfg: Config) -> list[Any]:
        """Extra Lightning callbacks for the task's training run (e.g. stellar's sigma calibration)."""
        return []

    def on_batch(self, cfg: Config, batch: Any, training: bool) -> Any:
        """A batch just moved to the training device (after on-the-fly simulation): the place for on-device
        augmentation of the training batches. Returns the batch to use."""
        return batch

    def h5_keys(self, cfg: Config) -> dict[str, str]:
        """Map batch keys -> HDF5 dataset names when training from a file."""
        return {"input": "input", "target": "target"}

    # ------------------------------------------------------------------ commands
    def simulate(self, cfg: Config, output: Path, n: int, **options: Any) -> Path:
        """Write ``n`` simulated samples to ``output``. The default writes :meth:`simulate_batch`
        output into an HDF5 store; tasks with their own formats override."""
        from neurotrain.engine.simulate import simulate_to_h5

        return simulate_to_h5(self, cfg, output, n)

    def check_predict_inputs(self, cfg: Config, inputs: list[Path], output: Path | None, **options: Any) -> None:
        """Cheap checks of the user's files before the network is built (headers, sizes, output place), so a
        bad input fails in a second with one line. The default: every input exists. Raise :class:`DataError`."""
        for p in inputs:
            if not Path(p).exists():
                raise DataError(f"{p}: input file or folder not found")

    def predict(self, cfg: Config, model: nn.Module, inputs: list[Path], output: Path | None, **options: Any) -> list[Path]:
        raise NotAvailableError(f"predict is not available for task {self.name!r}")

    def test(self, cfg: Config, model: nn.Module | None, **options: Any) -> dict[str, Any] | None:
        """A task-specific ``neurotrain test``; ``None`` means use the engine's generic test loop."""
        return None

    def evaluate(self, cfg: Config, model: nn.Module | None, run_dir: Path, **options: Any) -> EvalResult:
        raise NotAvailableError(f"evaluate is not available for task {self.name!r}")

    def prepare(self, cfg: Config, **options: Any) -> dict[str, Any]:
        """Read the field's files named by the config and write them, preprocessed, where training reads
        them (``neurotrain prepare``); returns a summary (counts, skips and why)."""
        raise NotAvailableError(f"prepare is not available for task {self.name!r}")

    def analyze(self, cfg: Config, model: nn.Module, run_dir: Path, **options: Any) -> dict[str, Any]:
        """What the model looks at and where it errs (``neurotrain analyze``): figures and tables under
        ``run_dir``; returns a summary."""
        raise NotAvailableError(f"analyze is not available for task {self.name!r}")

    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        """Overrides (``"optim.lr": value``) for one Optuna trial."""
        raise NotAvailableError(f"tune is not available for task {self.name!r}")

    def example_input(self, cfg: Config) -> tuple[torch.Tensor, ...]:
        """Inputs for ONNX export (batch of 1, CPU)."""
        raise NotAvailableError(f"export is not available for task {self.name!r}")

    # ------------------------------------------------------------------ deploy (``neurotrain export``)
    def calibration_batches(self, cfg: Config, n: int, split: str = "val") -> list[dict[str, Any]]:
        """Up to ``n`` batches of ``split`` on the CPU, as the engine's loaders give them (simulated batches are
        made from their seeds on the CPU), for int8 calibration (``val``), QAT fine-tuning (``train``) and the
        export report (``export.report_split``)."""
        from neurotrain.engine.data import TaskDataModule
        from neurotrain.engine.module import SIM_SEED_KEY, SIM_SIZE_KEY

        dm = TaskDataModule(cfg, self)
        dm.setup("fit")
        loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
        out: list[dict[str, Any]] = []
        for batch in loader:
            if len(out) >= n:
                break
            if isinstance(batch, dict) and SIM_SEED_KEY in batch:
                gen = torch.Generator().manual_seed(int(batch[SIM_SEED_KEY]))
                with torch.no_grad():
                    batch = self.simulate_batch(cfg, int(batch[SIM_SIZE_KEY]), gen, torch.device("cpu"))
            out.append(batch)
        return out

    def export_inputs(self, cfg: Config, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The exported network's inputs in a batch (the same tensors :meth:`example_input` stands for)."""
        return (batch["input"],)

    def calibration_inputs(self, cfg: Config, n: int, split: str = "val") -> list[tuple[torch.Tensor, ...]]:
        """Network inputs of up to ``n`` batches of ``split``: what the int8 calibrator sees."""
        return [self.export_inputs(cfg, b) for b in self.calibration_batches(cfg, n, split)]

    def export_metadata(self, cfg: Config) -> dict[str, Any]:
        """Pre- and post-processing an ONNX user needs to reproduce ``neurotrain predict`` (written into the
        sidecar ``<name>.json`` next to the ``.onnx``): plain JSON data."""
        return {}

    def score_outputs(
        self, cfg: Config, outputs: list[list[Any]], batches: list[dict[str, Any]]
    ) -> dict[str, float] | None:
        """The task's metrics of exported-model outputs: ``outputs[i]`` are the ONNX outputs (NumPy arrays) of
        ``batches[i]``. The default feeds them to :meth:`build_metrics` / :meth:`update_metrics` as if they were
        the network's prediction and returns the scalar results; ``None`` when the task has no metrics."""
        metrics = self.build_metrics(cfg)
        if metrics is None:
            return None
        for outs, batch in zip(outputs, batches):
            preds = [torch.as_tensor(o) for o in outs]
            self.update_metrics(metrics, preds[0] if len(preds) == 1 else tuple(preds), batch)
        scores: dict[str, float] = {}
        for name, value in metrics.compute().items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                scores[str(name)] = float(value)
            elif isinstance(value, (int, float)):
                scores[str(name)] = float(value)
        return scores

    def export_model(self, cfg: Config, model: nn.Module, path: Path, *, opset: int, atol: float) -> Any | None:
        """``neurotrain export`` of a network that is not tensor in / tensors out (a detector takes a list of
        images and returns a box count per image): write the ONNX file, its sidecar and report the task's own
        way and return an ``export_report.DeployReport``. ``None`` (the default): the generic export from
        :meth:`example_input`."""
        return None

    def export_dynamic_spatial(self, cfg: Config) -> bool:
        """Export with every input axis after the channel axis dynamic (a fully convolutional network that
        ``predict`` runs on inputs of any size); the default keeps the example's size fixed."""
        return False
