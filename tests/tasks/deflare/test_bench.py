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
    assert res["end_to_end"]["fp32 streamed"]["events_out"] > 0
    assert "| fp32 default |" in capsys.readouterr().out
