"""The seed's figures: voxel time bins, red/blue event frames, 3D space-time scatter,
``debug_summary.txt``, and the loss curve read back from TensorBoard / CSV logs.

Colour convention of the seed: red = positive (ON) events, blue = negative (OFF) events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _np(a: Any) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def plot_voxel_bins(voxel: Any, path: Path, title: str = "") -> Path:
    """All time bins of a (B, H, W) voxel side by side, symmetric red/blue colour scale."""
    v = _np(voxel)
    b = v.shape[0]
    cols = min(b, 4)
    rows = int(np.ceil(b / cols))
    lim = max(float(np.abs(v).max()), 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < b:
            im = ax.imshow(v[k], cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"bin {k}  sum|v|={np.abs(v[k]).sum():.0f}", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def event_frame(x: np.ndarray, y: np.ndarray, p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) RGB frame: red where ON events dominate, blue where OFF, white background."""
    h, w = size
    pos = np.zeros(h * w)
    neg = np.zeros(h * w)
    idx = y.astype(np.int64) * w + x.astype(np.int64)
    np.add.at(pos, idx[p > 0], 1)
    np.add.at(neg, idx[p <= 0], 1)
    scale = max(np.percentile(np.maximum(pos, neg)[np.maximum(pos, neg) > 0], 99) if (pos + neg).any() else 1.0, 1.0)
    img = np.ones((h * w, 3))
    img[:, 1] -= np.clip((pos + neg) / scale, 0, 1)
    img[:, 2] -= np.clip(pos / scale, 0, 1)
    img[:, 0] -= np.clip(neg / scale, 0, 1)
    return img.reshape(h, w, 3)


def plot_event_frames(events: dict[str, np.ndarray], size: tuple[int, int], path: Path, n_windows: int = 4, title: str = "") -> Path:
    """Red/blue 2D frames of ``n_windows`` equal time windows."""
    t, x, y, p = (np.asarray(events[k]) for k in ("t", "x", "y", "p"))
    fig, axes = plt.subplots(1, n_windows, figsize=(3.2 * n_windows, 3), squeeze=False)
    lo, hi = (int(t.min()), int(t.max()) + 1) if t.size else (0, 1)
    edges = np.linspace(lo, hi, n_windows + 1)
    for k, ax in enumerate(axes[0]):
        m = (t >= edges[k]) & (t < edges[k + 1])
        ax.imshow(event_frame(x[m], y[m], p[m], size), interpolation="nearest")
        ax.set_title(f"{edges[k] / 1000:.1f}-{edges[k + 1] / 1000:.1f} ms, {int(m.sum())} ev", fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_event_scatter3d(events: dict[str, np.ndarray], size: tuple[int, int], path: Path, max_points: int = 20000, seed: int = 0, title: str = "") -> Path:
    """3D space-time scatter (x, t, y) of at most ``max_points`` events, red ON / blue OFF."""
    t, x, y, p = (np.asarray(events[k]) for k in ("t", "x", "y", "p"))
    if t.size > max_points:
        sel = np.random.default_rng(seed).choice(t.size, max_points, replace=False)
        t, x, y, p = t[sel], x[sel], y[sel], p[sel]
    fig = plt.figure(figsize=(7, 5))
    ax = fig.add_subplot(projection="3d")
    ax.scatter(x, (t - (t.min() if t.size else 0)) / 1000.0, y, c=np.where(p > 0, "red", "blue"), s=0.5, alpha=0.5)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("t (ms)")
    ax.set_zlabel("y (px)")
    ax.set_xlim(0, size[1])
    ax.set_zlim(size[0], 0)
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _events_of(voxel: torch.Tensor, duration_us: int) -> dict[str, np.ndarray]:
    from neurotrain.tasks.deflare.voxel import voxel_to_events

    g = torch.Generator(device=voxel.device).manual_seed(0)
    ev = voxel_to_events(voxel.detach().float(), duration_us=duration_us, generator=g, max_events=50_000_000)
    return {k: v.cpu().numpy() for k, v in ev.items()}


def write_debug_folder(
    out_dir: Path,
    *,
    input_voxel: torch.Tensor,
    output_voxel: torch.Tensor,
    duration_us: int,
    target_voxel: torch.Tensor | None = None,
    input_events: dict[str, np.ndarray] | None = None,
    output_events: dict[str, np.ndarray] | None = None,
    note: str = "",
) -> Path:
    """The seed's debug folder for one segment (voxels (B, H, W)).

    Folders: ``1_input_events/``, ``3_input_voxel/``, ``4_target_events/`` and
    ``6_target_voxel/`` (with a target), ``7_output_events/``, ``8_residual_voxel/``,
    ``8_residual_events/`` (only when the residual is non-zero: its signed counts decoded as
    events, red = added ON / removed OFF, blue = the opposite), ``9_output_voxel/`` and
    ``debug_summary.txt`` (``note``, mean/std per voxel, the identity check ``output ==
    input + residual`` and event counts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(input_voxel.shape[-2:])
    residual = output_voxel.float() - input_voxel.float()
    in_ev = input_events if input_events is not None else _events_of(input_voxel, duration_us)
    out_ev = output_events if output_events is not None else _events_of(output_voxel, duration_us)
    for folder, ev, name in (("1_input_events", in_ev, "input"), ("7_output_events", out_ev, "output")):
        plot_event_frames(ev, size, out_dir / folder / f"{name}_2d_red_blue.png", title=f"{name} events")
        plot_event_scatter3d(ev, size, out_dir / folder / f"{name}_3d_spatiotemporal.png", title=f"{name} events")
    plot_voxel_bins(input_voxel, out_dir / "3_input_voxel" / "input_voxel_temporal_bins.png", "input voxel")
    plot_voxel_bins(output_voxel, out_dir / "9_output_voxel" / "output_voxel_temporal_bins.png", "output voxel")
    plot_voxel_bins(residual, out_dir / "8_residual_voxel" / "residual_voxel_temporal_bins.png", "residual = output - input")
    residual_events = None
    if torch.round(residual).any():
        residual_events = _events_of(residual, duration_us)
        folder = out_dir / "8_residual_events"
        plot_event_frames(residual_events, size, folder / "residual_2d_red_blue.png", title="residual events")
        plot_event_scatter3d(residual_events, size, folder / "residual_3d_spatiotemporal.png", title="residual events")
    lines = [note] if note else []
    if target_voxel is not None:
        tg_ev = _events_of(target_voxel, duration_us)
        plot_event_frames(tg_ev, size, out_dir / "4_target_events" / "target_2d_red_blue.png", title="target events")
        plot_event_scatter3d(tg_ev, size, out_dir / "4_target_events" / "target_3d_spatiotemporal.png", title="target events")
        plot_voxel_bins(target_voxel, out_dir / "6_target_voxel" / "target_voxel_temporal_bins.png", "target voxel")
    identity = bool(torch.allclose(input_voxel.float() + residual, output_voxel.float()))
    for name, v in (("input", input_voxel), ("residual", residual), ("output", output_voxel)) + (
        (("target", target_voxel),) if target_voxel is not None else ()
    ):
        vf = v.detach().float()
        lines.append(f"{name:8s} mean {vf.mean().item():+.4f}  std {vf.std().item():.4f}  sum|v| {vf.abs().sum().item():.0f}")
    lines.append(f"identity check: output == input + residual: {identity}")
    lines.append(f"residual is zero (network still the identity): {bool((residual == 0).all())}")
    lines.append(f"events: input {len(in_ev['t'])}, output {len(out_ev['t'])}, ratio {len(out_ev['t']) / max(len(in_ev['t']), 1):.3f}")
    if target_voxel is not None:
        lines.append(f"events: target {int(torch.round(target_voxel.float()).abs().sum())}")
    if residual_events is not None:
        lines.append(f"events: residual {len(residual_events['t'])}")
    (out_dir / "debug_summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir


# --------------------------------------------------------------------------- loss curves


def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tag: (steps, values)}`` from TensorBoard event files under ``log_dir`` (or, without
    TensorBoard files, from Lightning CSV ``metrics.csv`` files)."""
    log_dir = Path(log_dir)
    out: dict[str, list[tuple[int, float]]] = {}
    tb_files = sorted(log_dir.rglob("events.out.tfevents.*"))
    if tb_files:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for f in tb_files:
            acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    else:
        import pandas as pd

        for f in sorted(log_dir.rglob("metrics.csv")):
            df = pd.read_csv(f)
            for col in df.columns:
                if col in ("step", "epoch"):
                    continue
                sub = df[["step", col]].dropna()
                out.setdefault(col, []).extend(zip(sub["step"].astype(int), sub[col].astype(float)))
    res = {}
    for tag, pts in out.items():
        pts.sort()
        a = np.asarray(pts, dtype=float)
        res[tag] = (a[:, 0], a[:, 1])
    return res


def moving_average(v: np.ndarray, window: int) -> np.ndarray:
    if v.size < 2 or window <= 1:
        return v
    window = min(window, v.size)
    c = np.cumsum(np.insert(v, 0, 0.0))
    return (c[window:] - c[:-window]) / window


def plot_loss_curves(log_dir: Path, out_png: Path, window: int = 20) -> Path:
    """The seed's ``training_loss_curves.png``: batch loss (log scale) with a red moving
    average, epoch losses, and the best epoch in a light-green box."""
    sc = read_scalars(log_dir)
    step_tag = next((t for t in ("train/loss_step", "train/loss", "train/loss_epoch") if t in sc), None)
    if step_tag is None:
        raise FileNotFoundError(f"{log_dir}: no train/loss scalars in TensorBoard or CSV logs")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    s, v = sc[step_tag]
    a1.plot(s, v, "b-", lw=0.6, alpha=0.6, label="batch loss")
    ma = moving_average(v, window)
    if ma.size != v.size:
        a1.plot(s[window - 1 :] if window <= v.size else s[-1:], ma, "r-", lw=1.5, label=f"moving average ({window})")
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a1.legend()
    a1.set_title("training loss")
    for tag, style in (("train/loss_epoch", "b-o"), ("val/loss", "g-s")):
        if tag in sc:
            es, ev = sc[tag]
            a2.plot(np.arange(len(ev)), ev, style, label=tag)
    if "val/loss" in sc or "train/loss_epoch" in sc:
        tag = "val/loss" if "val/loss" in sc else "train/loss_epoch"
        ev = sc[tag][1]
        best = int(np.argmin(ev))
        a2.text(0.98, 0.95, f"best {tag}: {ev[best]:.4g} (epoch {best})", transform=a2.transAxes, ha="right", va="top",
                bbox=dict(facecolor="lightgreen", alpha=0.5))
    a2.set_yscale("log")
    a2.set_xlabel("epoch")
    a2.legend()
    a2.set_title("epoch loss")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_comparison_bars(table: dict[str, dict[str, float]], keys: list[str], out_png: Path) -> Path:
    """Grouped bars of ``keys`` for each method in ``table`` (evaluate report)."""
    methods = list(table)
    x = np.arange(len(keys))
    wdt = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.8 * len(keys) + 2, 4))
    for i, m in enumerate(methods):
        ax.bar(x + i * wdt, [table[m].get(k, np.nan) for k in keys], wdt, label=m)
    ax.set_xticks(x + wdt * (len(methods) - 1) / 2, keys, rotation=15)
    ax.legend()
    ax.set_ylim(0, None)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    """The seed's ``visualize_training_logs.py``:
    ``python -m neurotrain.tasks.deflare.plots --log_dir runs/deflare/train --output_dir debug_output``."""
    import argparse

    ap = argparse.ArgumentParser(description="Loss curves (log scale, moving average) from TensorBoard/CSV logs.")
    ap.add_argument("--log_dir", type=Path, required=True, help="a run directory (its tb/ or csv/ logs are found)")
    ap.add_argument("--output_dir", type=Path, default=Path("debug_output"))
    ap.add_argument("--window", type=int, default=20, help="moving-average window (steps)")
    a = ap.parse_args(argv)
    png = plot_loss_curves(a.log_dir, a.output_dir / "training_loss_curves.png", a.window)
    print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
