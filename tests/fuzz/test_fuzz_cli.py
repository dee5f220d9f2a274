"""The bad-input corpus through the CLI in-process: every command ends with one ``error:`` line per problem
on stderr and exit code 1 (2 for usage/config errors), never a traceback; ``--debug`` shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neurotrain.cli import app

from ._util import minimal_tiff, save_ckpt

runner = CliRunner()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smlm_cfg) -> Path:
    """Files of every kind of mistake, in one folder (the commands run with it as working directory)."""
    import tifffile
    import torch

    from neurotrain.registry import TASKS

    d = tmp_path_factory.mktemp("corpus")
    save_ckpt(d / "m.ckpt", smlm_cfg)
    state = {f"model.{k}": v for k, v in TASKS.get("smlm").build_model(smlm_cfg).state_dict().items()}
    state[next(iter(state))] = torch.zeros(3)
    save_ckpt(d / "shape.ckpt", smlm_cfg, state=state)
    (d / "text.ckpt").write_text("hello\n")
    torch.save({"state_dict": {}, "x": _Evil(str(d / "PWNED"))}, d / "evil.ckpt")
    TASKS.get("smlm").simulate(smlm_cfg, d / "movie.tif", 6, device="cpu")
    data = (d / "movie.tif").read_bytes()
    (d / "trunc.tif").write_bytes(data[: len(data) // 2])
    (d / "huge.tif").write_bytes(minimal_tiff(200000, 200000))
    tifffile.imwrite(d / "rgb.tif", np.zeros((3, 16, 16, 3), np.uint8), photometric="rgb")
    nan = np.ones((8, 16, 16), np.float32)
    nan[5, 1, 1] = np.nan
    tifffile.imwrite(d / "nan.tif", nan, photometric="minisblack")
    tifffile.imwrite(d / "tiny.tif", np.ones((8, 2, 2), np.uint16), photometric="minisblack")
    truth = (d / "movie_truth.csv").read_text().splitlines()
    (d / "head.csv").write_text(truth[0] + "\n")
    (d / "text.csv").write_text("\n".join(truth[:2] + ["0,abc,1,0,1000,0"]) + "\n")
    (d / "nanc.csv").write_text("\n".join(truth[:2] + ["0,nan,1,0,1000,0"]) + "\n")
    (d / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage\x89PNG")
    (d / "typo.yaml").write_text("task: toy\ntrainr: {max_epochs: 1}\n")
    (d / "bad.toml").write_text("task = toy\n")
    (d / "folder.yaml").mkdir()
    (d / "afile").write_text("x")
    (d / "adir.h5").mkdir()
    (d / "toy.yaml").write_text(f"task: toy\nrun: {{name: t, output_dir: {d / 'runs'}}}\n"
                                "trainer: {max_epochs: 1, accelerator: cpu, devices: 1, progress_bar: false}\n")
    (d / "evilrun.yaml").write_text(f"task: toy\nrun: {{name: evil, output_dir: {d / 'runs'}}}\n")
    ck = d / "runs" / "toy" / "evil" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save({"state_dict": {}, "x": _Evil(str(d / "PWNED"))}, ck / "last.ckpt")
    return d


BAD_COMMANDS = [
    "train missing.yaml", "train bin.yaml", "train folder.yaml", "train typo.yaml", "config show bad.toml",
    "config show toy.yaml trainer.max_epochs=ten", "config show toy.yaml optim", "train toy.yaml --resume",
    "train evilrun.yaml --resume",
    "predict text.ckpt movie.tif", "predict evil.ckpt movie.tif", "predict missing.ckpt movie.tif",
    "predict afile movie.tif", "predict m.ckpt missing.tif", "predict m.ckpt trunc.tif", "predict m.ckpt huge.tif",
    "predict m.ckpt rgb.tif", "predict m.ckpt nan.tif -o out_nan/", "predict m.ckpt tiny.tif",
    "predict m.ckpt movie.tif --opt formt=csv", "predict m.ckpt movie.tif --opt threshold=abc",
    "predict m.ckpt movie.tif --opt noequals", "predict m.ckpt movie.tif -o afile/x.h5",
    "predict m.ckpt movie.tif -o adir.h5", "predict m.ckpt movie.tif -o out.txt", "predict shape.ckpt movie.tif",
    "predict m.ckpt", "predict m.ckpt movie.tif --set model.initial_features=16",
    "predict m.ckpt movie.tif --set nosuch.key=1", "predict m.ckpt text.csv",
    "evaluate smlm --pred text.csv --truth movie_truth.csv", "evaluate smlm --pred head.csv --truth movie_truth.csv",
    "evaluate smlm --pred nanc.csv --truth movie_truth.csv", "evaluate smlm --pred movie_truth.csv",
    "evaluate smlm --pred missing.csv --truth movie_truth.csv",
    "evaluate smlm --pred movie_truth.csv --truth movie_truth.csv -o afile",
    "evaluate smlm --opt baselin=true", "simulate smlm -o sim.tif -n 0", "simulate smlm -o sim.tif --opt sed=1",
    "test toy.yaml --ckpt text.ckpt", "export text.ckpt -o x.onnx", "analyze toy.yaml --ckpt evil.ckpt",
]


@pytest.mark.parametrize("command", BAD_COMMANDS)
def test_bad_command_is_one_line(corpus: Path, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(corpus)
    before = set(p.name for p in corpus.iterdir())
    result = runner.invoke(app, command.split())
    assert result.exc_info is not None and result.exc_info[0] is SystemExit, result.exc_info
    assert result.exit_code in (1, 2, 3), (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines, result.output
    if result.exit_code != 2 or lines[0].startswith("error:"):  # click's own usage box for a missing argument
        assert all(ln.startswith("error: ") for ln in lines), lines
    assert not (corpus / "PWNED").exists(), "pickled code ran"
    new = set(p.name for p in corpus.iterdir()) - before
    assert not new, f"left behind: {sorted(new)}"


def test_debug_shows_the_traceback(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neurotrain.errors import CheckpointError, ConfigError

    monkeypatch.chdir(corpus)
    result = runner.invoke(app, ["--debug", "train", "bin.yaml"])
    assert isinstance(result.exception, ConfigError)
    result = runner.invoke(app, ["predict", "text.ckpt", "movie.tif", "--debug"])
    assert isinstance(result.exception, CheckpointError)
    monkeypatch.setenv("NEUROTRAIN_DEBUG", "1")
    assert isinstance(runner.invoke(app, ["train", "bin.yaml"]).exception, ConfigError)
