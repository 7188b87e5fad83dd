"""The learning curve of one run (curve.png, written by `train`), and the per-seed curves
that `rlcli plot` aligns across runs."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

WALL_TIME_POINTS = 100  # x=wall_time: at least this many grid points
MAX_SEED_LINES = 10  # the run's curve.png: one line per seed up to this many, else mean and range


def seed_curves(records: list[dict], metric: str, x: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per seed index: (x, metric) sorted by x, from the records that have the metric (the
    last record wins where an x repeats)."""
    points: dict[int, dict[float, float]] = {}
    for r in records:
        if r.get(metric) is not None and r.get(x) is not None:
            points.setdefault(int(r["seed_index"]), {})[float(r[x])] = float(r[metric])
    return {i: (np.array(sorted(p)), np.array([p[k] for k in sorted(p)])) for i, p in points.items()}


def grid(curves: list[tuple[np.ndarray, np.ndarray]], x: str) -> np.ndarray:
    """The common x grid: the union of the logged x (env_steps), or evenly spaced points
    over the logged range (wall_time)."""
    if x == "env_steps":
        return np.unique(np.concatenate([c[0] for c in curves]))
    lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    return np.linspace(lo, hi, max(WALL_TIME_POINTS, *(len(c[0]) for c in curves)))


def save_figure(fig, path: Path) -> None:
    """Save a figure as PNG via a temporary file and a rename, then close it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def learning_curve(records: list[dict], path: Path, title: str) -> None:
    """The run's curve.png: `curve_figure`, saved."""
    save_figure(curve_figure(records, title), Path(path))


def curve_figure(records: list[dict], title: str):
    """Training episode return (finished episodes, mean per record) as lines, evaluation
    returns as markers: one colour per seed, or, beyond MAX_SEED_LINES seeds, the mean over
    the seeds with their range shaded (a line and a legend entry per seed would be unreadable,
    and took seconds to draw at 256 seeds)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    by_seed: dict[int, list[dict]] = {}
    for r in records:
        by_seed.setdefault(int(r["seed_index"]), []).append(r)
    if len(by_seed) <= MAX_SEED_LINES:
        for i, mine in sorted(by_seed.items()):
            colour = f"C{i % 10}"
            train = [(r["env_steps"], r["episode/return"]) for r in mine if r.get("episode/return") is not None]
            evals = [(r["env_steps"], r["eval/return_mean"]) for r in mine if r.get("eval/return_mean") is not None]
            label = f"seed {mine[0]['seed']}"
            if train:
                ax.plot(*zip(*train), color=colour, lw=1.2, label=label)
            if evals:
                ax.plot(*zip(*evals), color=colour, ls="none", marker="o", ms=4,
                        label=f"{label} (eval)" if len(by_seed) <= 4 else None)
    else:
        for metric, colour, what in (("episode/return", "C0", "training"), ("eval/return_mean", "C1", "evaluation")):
            xs, mean, low, high = seed_mean(records, metric)
            if xs.size == 0:
                continue
            ax.fill_between(xs, low, high, color=colour, alpha=0.2, lw=0, label=f"{what}: range of the seeds")
            ax.plot(xs, mean, color=colour, lw=1.5, marker="o" if what == "evaluation" else None, ms=4,
                    label=f"{what}: mean of {len(by_seed)} seeds")
    ax.set_xlabel("env steps (per seed)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if by_seed:
        ax.legend(fontsize=7, ncol=2 if 4 < len(by_seed) <= MAX_SEED_LINES else 1)
    fig.tight_layout()
    return fig


def seed_mean(records: list[dict], metric: str) -> tuple[np.ndarray, ...]:
    """(env steps, mean, min, max) of `metric` across the seeds at each logged env step,
    over the seeds that logged it there (records without it, e.g. no finished episode, skip)."""
    curves = list(seed_curves(records, metric, "env_steps").values())
    if not curves:
        return (np.array([]),) * 4
    xs = grid(curves, "env_steps")
    points = {x: [] for x in xs}
    for cx, cy in curves:
        for x, y in zip(cx, cy):
            points[x].append(y)
    values = [np.array(points[x]) for x in xs]
    return (xs, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
            np.array([v.max() for v in values]))
