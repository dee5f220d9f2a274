"""Smoke run of bench/deflare.py on a tiny file (the real numbers come from the GPU run)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_script_runs_and_reports_every_stage(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_deflare", REPO / "bench" / "deflare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "deflare.json"
    rc = mod.main(["--events", "20000", "--height", "24", "--width", "32", "--f-maps", "4,8", "--repeats", "1",
                   "--device", "cpu", "--no-train", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["end_to_end"]) == {"fp32 default", "fp32 serial", "fp32 streamed"}
    for e in res["end_to_end"].values():
        assert set(e["stage_seconds"]) == {"read", "encode", "network", "decode", "write"}
        assert abs(sum(e["stage_share"].values()) - 1) < 1e-6
        assert e["events_in"] == 20_000 and e["segments"] == 5
        assert e["events_per_second"] == 20_000 / e["seconds_per_file"]
    assert res["end_to_end"]["fp32 streamed"]["events_out"] > 0
    assert "| fp32 default |" in capsys.readouterr().out


def test_bench_times_the_training_step_of_a_config(tmp_path):
    """The real training step (simulated batch + forward + loss + backward) of a config, tiny here."""
    spec = importlib.util.spec_from_file_location("bench_deflare2", REPO / "bench" / "deflare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    r = mod.time_config_training(REPO / "configs" / "deflare" / "quickstart.yaml", torch.device("cpu"), 1, [
        "voxel.sensor_size=[16, 16]", "model.f_maps=[4, 8]", "model.num_levels=2", "model.num_groups=2", "data.batch_size=1"])
    assert r["batch_size"] == 1 and r["sensor_size"] == [16, 16]
    assert r["steps_per_second"] == 1 / r["step_seconds"] and 0 < r["simulate_share"] < 1
