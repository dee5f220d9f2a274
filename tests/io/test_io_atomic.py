"""atomic_path: rename on success, nothing left on failure, the old file untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurotrain.io.atomic import atomic_path


def test_success_renames_onto_target_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.h5"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".h5"
        assert tmp.name.startswith(".out.tmp-")
        assert not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.h5"]


def test_failure_removes_temp_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_text("good")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_overwrites_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with atomic_path(str(target)) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_temp_names_are_unique(tmp_path: Path) -> None:
    names = set()
    for _ in range(20):
        with atomic_path(tmp_path / "f.bin") as tmp:
            names.add(tmp.name)
    assert len(names) == 20


def test_nothing_written_means_nothing_renamed(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with atomic_path(target):
        pass
    assert target.read_text() == "old"
