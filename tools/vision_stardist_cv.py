"""4-fold spatial cross-validation of the stardist real-image check (docs/results/vision.md, "Real image: stardist
nuclei"): the U-Net of ``configs/vision/stardist.yaml`` against Otsu + watershed tuned on the training quadrants.

    OMP_NUM_THREADS=1 python tools/vision_stardist_cv.py [--folds 0 1 2 3] [--reuse] [--json cv.json] [KEY=VALUE ...]

Fold k (``data_source.fold=k``) trains on 128 px tiles of the other three 256x256 quadrants of stardist's
``img2d.tif`` (validation tiles from those too) and tests on quadrant k as one whole 256x256 image (0 top-left,
1 top-right, 2 bottom-left, 3 bottom-right). Nuclei cut by the quadrant border are scored as they are: the cut
part is one true instance of the test image. The baseline's smoothing sigma, ``peak_local_max`` min_distance and
minimum object size are swept on the three training quadrants by instance F1@0.5 (``baseline.tune=true``) and
applied to quadrant k. Each fold is one ``neurotrain train`` + ``neurotrain evaluate`` of the config with
``data_source.fold=k run.name=<name>_fold<k> baseline.tune=true``: the run folders keep the reports. Prints the
per-fold table and mean +- sample standard deviation (ddof 1) over the folds; ``KEY=VALUE`` overrides go to every
fold (``trainer.max_epochs=2`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: (column, side in metrics.json, key) of the table
COLUMNS = [("U-Net Dice", "network", "dice"), ("U-Net F1@0.5", "network", "instance_f1@0.50"),
           ("U-Net mF1", "network", "instance_mf1"), ("baseline Dice", "baseline", "dice"),
           ("baseline F1@0.5", "baseline", "instance_f1@0.50"), ("baseline mF1", "baseline", "instance_mf1")]


def run_fold(config: Path, fold: int, overrides: list[str], reuse: bool, baseline_only: bool) -> dict[str, Any]:
    """Train (unless ``reuse`` finds the fold's checkpoint, or ``baseline_only``) and evaluate one fold; returns
    the evaluate metrics plus timings (s) and the nuclei counted in the test quadrant."""
    import numpy as np

    from neurotrain.config import load_config
    from neurotrain.engine import api
    from neurotrain.errors import CheckpointError
    from neurotrain.tasks.vision.synthetic import quadrant, stardist_nuclei

    base = load_config(config, overrides)
    cfg = load_config(config, [f"data_source.fold={fold}", f"run.name={base.run.name}_fold{fold}",
                               "baseline.tune=true", *overrides])
    t0 = time.perf_counter()
    trained = False
    if not baseline_only:
        try:
            if not reuse:
                raise CheckpointError("retrain")
            api.default_checkpoint(cfg)
        except CheckpointError:
            api.train(cfg, overwrite=True)
            trained = True
    t1 = time.perf_counter()
    res = api.evaluate(cfg, baseline_only=baseline_only)
    t2 = time.perf_counter()
    _, inst = stardist_nuclei()
    y0, x0, h, w = quadrant(fold, *inst.shape)
    ids = np.unique(inst[y0:y0 + h, x0:x0 + w])
    return {"fold": fold, "quadrant_yxhw": [y0, x0, h, w], "true_instances": int((ids > 0).sum()),
            "trained_now": trained, "train_s": round(t1 - t0, 1), "evaluate_s": round(t2 - t1, 1),
            "run_dir": str(cfg.run_dir), "metrics": res.metrics}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per fold, then mean +- sample std over the folds."""
    head = ["fold (test quadrant)", "nuclei", *[c[0] for c in COLUMNS], "tuned (sigma, min_distance, min_size)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]

    def value(r: dict[str, Any], side: str, key: str) -> float | None:
        return r["metrics"].get(side, {}).get(key)

    for r in rows:
        best = r["metrics"].get("baseline_tuning", {}).get("best", {})
        tuned = f"{best.get('smooth_sigma')}, {best.get('min_distance')}, {best.get('min_size')}" if best else "-"
        cells = [f"{v:.3f}" if (v := value(r, s, k)) is not None else "-" for _, s, k in COLUMNS]
        y0, x0, h, w = r["quadrant_yxhw"]
        lines.append(f"| {r['fold']} (y {y0}:{y0 + h}, x {x0}:{x0 + w}) | {r['true_instances']} | "
                     + " | ".join(cells) + f" | {tuned} |")
    stats = []
    for _, s, k in COLUMNS:
        vals = [v for r in rows if (v := value(r, s, k)) is not None]
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        stats.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}" if vals else "-")
    lines.append(f"| mean ± std ({len(rows)} folds) | {sum(r['true_instances'] for r in rows)} | "
                 + " | ".join(stats) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE applied to every fold")
    p.add_argument("--config", type=Path, default=REPO / "configs/vision/stardist.yaml")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3], choices=range(4))
    p.add_argument("--reuse", action="store_true", help="evaluate a fold's existing checkpoint instead of retraining")
    p.add_argument("--baseline-only", action="store_true", help="no network: the tuned baseline only")
    p.add_argument("--json", type=Path, default=None, help="write the raw per-fold results here")
    a = p.parse_args(argv)
    rows = []
    for k in a.folds:
        r = run_fold(a.config, k, a.overrides, a.reuse, a.baseline_only)
        rows.append(r)
        print(f"fold {k}: trained {r['trained_now']} in {r['train_s']} s, evaluated in {r['evaluate_s']} s; "
              f"tuning {json.dumps(r['metrics'].get('baseline_tuning', {}).get('best'))}", file=sys.stderr)
    print(table(rows))
    if a.json is not None:
        from neurotrain.io.atomic import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(rows, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
