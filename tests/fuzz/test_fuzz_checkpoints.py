"""Fuzz: malformed and malicious checkpoints -> one CheckpointError line naming the file; no pickled code
ever runs; wrong weights name the tensor."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from neurotrain.engine.checkpoint import load_model
from neurotrain.errors import CheckpointError

from ._util import raises_one_line, save_ckpt, seeded_bytes

MARKER = "neurotrain_fuzz_pwned"


class _Evil:
    """Unpickling this would create the marker file: the test fails if it ever exists."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def toy_cfg():
    import toy_task

    return toy_task.ToyConfig(task="toy")


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory, toy_cfg) -> bytes:
    return save_ckpt(tmp_path_factory.mktemp("ck") / "good.ckpt", toy_cfg).read_bytes()


def test_good_checkpoint_loads(tmp_path: Path, good_bytes: bytes) -> None:
    p = tmp_path / "good.ckpt"
    p.write_bytes(good_bytes)
    cfg, model = load_model(p)
    assert cfg.task == "toy" and not model.training


@pytest.mark.parametrize("frac", [0.0, 0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97, 0.995])
def test_truncated(tmp_path: Path, good_bytes: bytes, frac: float) -> None:
    p = tmp_path / "cut.ckpt"
    p.write_bytes(good_bytes[: int(len(good_bytes) * frac)])
    assert "holds code" not in raises_one_line(lambda: load_model(p), p, CheckpointError)


@pytest.mark.parametrize("content", [b"hello\n", b"PK", b"\x80", seeded_bytes(1, 500), seeded_bytes(2, 5000),
                                     b"PK\x03\x04" + seeded_bytes(3, 400), b"\x80\x02" + seeded_bytes(4, 300),
                                     b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_garbage(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "junk.ckpt"
    p.write_bytes(content)
    assert "holds code" not in raises_one_line(lambda: load_model(p), p, CheckpointError)


def _zip_with(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("how", ["torch_save", "legacy_pickle", "in_state_dict", "in_config", "zip_data_pkl",
                                 "eval_global"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, how: str, toy_cfg) -> None:
    marker = tmp_path / MARKER
    p = tmp_path / "last.ckpt"
    evil = _Evil(marker)
    if how == "torch_save":
        torch.save({"state_dict": {}, "payload": evil}, p)
    elif how == "legacy_pickle":
        torch.save({"state_dict": {}, "payload": evil}, p, _use_new_zipfile_serialization=False)
    elif how == "in_state_dict":
        save_ckpt(p, toy_cfg, state={"model.0.weight": evil})
    elif how == "in_config":
        torch.save({"state_dict": {}, "hyper_parameters": {"config": evil}}, p)
    elif how == "zip_data_pkl":
        _zip_with(p, {"archive/data.pkl": pickle.dumps({"state_dict": evil}, protocol=2), "archive/version": b"3\n"})
    else:
        buf = io.BytesIO()
        pickle.dump({"state_dict": {}, "x": _EvalCall()}, buf, protocol=2)
        p.write_bytes(buf.getvalue())
    msg = raises_one_line(lambda: load_model(p), p, CheckpointError)
    assert not marker.exists(), "pickled code ran"
    assert "holds code (pickled objects) and was refused; only weights are loaded" in msg


class _EvalCall:
    def __reduce__(self):
        return (eval, ("1+1",))


@pytest.mark.parametrize("case", ["no_state_dict", "state_not_dict", "no_config", "config_not_dict", "bad_config",
                                  "unknown_task", "list_top", "tensor_top", "zip_no_pickle", "empty_file"])
def test_wrong_structure(tmp_path: Path, case: str, toy_cfg) -> None:
    from neurotrain.config import config_to_dict

    p = tmp_path / f"{case}.ckpt"
    good_cfg = config_to_dict(toy_cfg)
    if case == "no_state_dict":
        torch.save({"hyper_parameters": {"config": good_cfg}}, p)
    elif case == "state_not_dict":
        torch.save({"state_dict": [1, 2], "hyper_parameters": {"config": good_cfg}}, p)
    elif case == "no_config":
        torch.save({"state_dict": {}}, p)
    elif case == "config_not_dict":
        torch.save({"state_dict": {}, "hyper_parameters": {"config": "toy"}}, p)
    elif case == "bad_config":
        torch.save({"state_dict": {}, "hyper_parameters": {"config": {**good_cfg, "optim": {"lr": -1}}}}, p)
    elif case == "unknown_task":
        torch.save({"state_dict": {}, "hyper_parameters": {"config": {**good_cfg, "task": "nope"}}}, p)
    elif case == "list_top":
        torch.save([1, 2, 3], p)
    elif case == "tensor_top":
        torch.save(torch.zeros(3), p)
    elif case == "zip_no_pickle":
        _zip_with(p, {"hello.txt": b"hi"})
    else:
        p.write_bytes(b"")
    raises_one_line(lambda: load_model(p), p, CheckpointError)


@pytest.mark.parametrize("case", ["wrong_shape", "missing_tensor", "extra_tensor", "not_tensor", "dtype_int"])
def test_wrong_weights_name_the_tensor(tmp_path: Path, case: str, toy_cfg) -> None:
    import toy_task

    state = {f"model.{k}": v for k, v in toy_task.ToyTask().build_model(toy_cfg).state_dict().items()}
    if case == "wrong_shape":
        state["model.0.weight"] = torch.zeros(3, 3)
    elif case == "missing_tensor":
        del state["model.2.bias"]
    elif case == "extra_tensor":
        state["model.9.weight"] = torch.zeros(1)
    elif case == "not_tensor":
        state["model.0.bias"] = [0.0] * 16
    else:
        state["model.0.weight"] = torch.zeros(16, 8, dtype=torch.int64)
    p = save_ckpt(tmp_path / f"{case}.ckpt", toy_cfg, state=state)
    if case == "dtype_int":  # a dtype load_state_dict can copy: accepted, the shape is what matters
        load_model(p)
        return
    msg = raises_one_line(lambda: load_model(p), p, CheckpointError)
    name = {"wrong_shape": "0.weight", "missing_tensor": "2.bias", "extra_tensor": "9.weight", "not_tensor": "0.bias"}
    assert f"'{name[case]}'" in msg
    if case == "wrong_shape":
        assert "expected shape [16, 8]" in msg and "(got [3, 3])" in msg


def test_folder_and_missing(tmp_path: Path) -> None:
    raises_one_line(lambda: load_model(tmp_path), tmp_path, CheckpointError)
    raises_one_line(lambda: load_model(tmp_path / "none.ckpt"), tmp_path / "none.ckpt", CheckpointError)
