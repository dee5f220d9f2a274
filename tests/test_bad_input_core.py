"""Bad input at the core: the CLI boundary, task option schemas, output places, resumed CSV logs."""

from __future__ import annotations

import csv
import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurotrain.cli import app
from neurotrain.errors import ConfigError, DataError

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("neurotrain ")


def test_predict_help_lists_every_task_option() -> None:
    result = runner.invoke(app, ["predict", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = result.output
    for key in ("crystal", "fwhm_662", "calibration", "mc_samples", "threshold", "format", "method"):
        assert key in text, key
    for task in ("gamma", "smlm", "deflare", "stellar", "vision"):
        assert task in text


def test_unknown_option_names_the_known_keys() -> None:
    import neurotrain.tasks  # noqa: F401
    from neurotrain.registry import TASKS
    from neurotrain.task import check_options

    with pytest.raises(ConfigError) as info:
        check_options(TASKS.get("gamma"), "predict", {"crystl": "CsI"})
    msg = str(info.value)
    assert "crystl: unknown option" in msg and "crystal" in msg and "\n" not in msg
    assert check_options(TASKS.get("gamma"), "predict", {"crystal": "CsI", "fwhm_662": "0.07"}) == \
        {"crystal": "CsI", "fwhm_662": 0.07}
    with pytest.raises(ConfigError, match="fwhm_662"):
        check_options(TASKS.get("gamma"), "predict", {"fwhm_662": -1})


def _fail_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def boom(*a, **k):
        raise exc

    import neurotrain.config

    monkeypatch.setattr(neurotrain.config, "load_config", boom)  # what every verb reads its config with


@pytest.mark.parametrize("exc,code,expect", [
    (DataError("locs.csv: ThunderSTORM CSV lacks column 'x [nm]' (got ['x [px]'])"), 1, "'x [nm]'"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), 1, "/data/out: permission denied"),
    (FileExistsError(errno.EEXIST, "File exists", "/data/out.h5"), 1, "/data/out.h5: exists already"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/movie.tif"), 1, "/data/movie.tif: is a folder"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x"), 1, "/data/x: no space left"),
    (MemoryError(), 1, "out of memory"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 1, "cannot decode text"),
])
def test_expected_failures_are_one_line(monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int,
                                        expect: str) -> None:
    _fail_with(monkeypatch, exc)
    result = runner.invoke(app, ["config", "show", "x.yaml"])
    assert result.exit_code == code and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines


def test_debug_reraises_and_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_with(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert isinstance(runner.invoke(app, ["config", "show", "x.yaml", "--debug"]).exception, PermissionError)
    assert isinstance(runner.invoke(app, ["--debug", "config", "show", "x.yaml"]).exception, PermissionError)
    _fail_with(monkeypatch, ZeroDivisionError("a bug"))
    assert isinstance(runner.invoke(app, ["config", "show", "x.yaml"]).exception, ZeroDivisionError)


def test_output_place_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neurotrain.engine.api import check_output_dir

    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="names an existing file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(DataError, match="is a file"):
        check_output_dir(tmp_path / "f" / "sub")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created by the check
    monkeypatch.setattr("os.access", lambda p, mode: False)
    with pytest.raises(DataError, match="permission denied") as info:
        check_output_dir(tmp_path / "new")
    assert "\n" not in str(info.value)


def test_read_only_folder_is_one_line(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    from neurotrain.engine.api import check_output_dir

    with pytest.raises(DataError, match="permission denied"):
        check_output_dir(ro / "out")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_continues_one_metrics_csv(toy_cfg_file: Path) -> None:
    from neurotrain.config import load_config
    from neurotrain.engine import api

    run = api.train(load_config(toy_cfg_file, ["trainer.max_epochs=1"]))
    log = run / "csv" / "metrics.csv"
    first = _rows(log)
    assert first and not list((run / "csv").glob("version_*"))
    # a row the interrupted part logged after its last checkpoint: the resumed part must not keep it
    with open(log, "a", newline="") as fh:
        fh.write(",".join(["999999"] * len(first[0])) + "\n")
    api.train(load_config(toy_cfg_file, ["trainer.max_epochs=2"]), resume=True)
    rows = _rows(log)
    assert not list((run / "csv").glob("version_*"))
    steps = [float(r["step"]) for r in rows if r.get("train/loss_step")]
    assert len(rows) > len(first) and max(float(r["step"]) for r in rows) < 999999
    assert steps and steps == sorted(steps) and len(steps) == len(set(steps))
    assert steps == [float(s) for s in range(len(steps))]  # every optimiser step once, across both parts
    assert {r["epoch"] for r in rows if r["epoch"]} == {"0", "1"}


def test_evaluate_output_folder(toy_cfg_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(toy_cfg_file), "--baseline-only", "-o", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert not (tmp_path / "runs" / "toy" / "t" / "metrics.json").exists()


def test_wrong_checkpoint_or_config_answers_before_torch_is_imported(tmp_path: Path) -> None:
    """The cheap checks run before ``import torch`` (seconds on a busy machine): a text file as checkpoint,
    a missing input, a binary config."""
    import subprocess
    import sys

    (tmp_path / "text.ckpt").write_text("hello\n")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    code = ("import sys; from neurotrain import cli\n"
            "try:\n    cli.main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)")
    for argv in (["predict", "text.ckpt", "movie.tif"], ["predict", "missing.ckpt", "m.tif"], ["train", "bin.yaml"]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert proc.stdout.split() in (["exit", "1", "False"], ["exit", "2", "False"]), (argv, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
