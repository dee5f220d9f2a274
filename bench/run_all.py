"""Run every bench/<task>.py (or the ones named) and collect their JSON in bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in ("run_all.py",) and not p.name.startswith("_"))
    if argv:
        scripts = [p for p in scripts if p.stem in argv]
        missing = set(argv) - {p.stem for p in scripts}
        if missing:
            print(f"no benchmark for: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    if not scripts:
        print("no benchmarks yet in bench/", file=sys.stderr)
        return 2
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        rc = subprocess.call([sys.executable, str(script), "--out", str(out / f"{script.stem}.json")])
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
