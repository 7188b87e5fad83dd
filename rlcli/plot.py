"""Learning-curve plot of one run: episode return against env steps, one line per seed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curve(records: list[dict], path: Path, title: str) -> None:
    """Training episode return (finished episodes, mean per record) as lines, evaluation
    returns as markers, one colour per seed."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    seeds = sorted({r["seed_index"] for r in records})
    for i in seeds:
        colour = f"C{i % 10}"
        mine = [r for r in records if r["seed_index"] == i]
        train = [(r["env_steps"], r["episode_return"]) for r in mine if r.get("episode_return") is not None]
        evals = [(r["env_steps"], r["eval/return_mean"]) for r in mine if r.get("eval/return_mean") is not None]
        label = f"seed {mine[0]['seed']}" if mine else f"seed index {i}"
        if train:
            ax.plot(*zip(*train), color=colour, lw=1.2, label=label)
        if evals:
            ax.plot(*zip(*evals), color=colour, ls="none", marker="o", ms=4,
                    label=f"{label} (eval)" if len(seeds) <= 4 else None)
    ax.set_xlabel("env steps (per seed)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if seeds:
        ax.legend(fontsize=7, ncol=2 if len(seeds) > 4 else 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
