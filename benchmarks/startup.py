"""Whole-process wall time of `rlcli train`, cold and warm, for one or more rlcli source trees.

Cold: a fresh, empty compilation cache (nothing compiled, nothing kept). Warm: the same command
again with the cache the cold run filled (JAX's persistent compilation cache and, beside it,
the kept traced programs). Each measurement is the wall time of the whole `python -m rlcli
train ...` process: interpreter start, imports, tracing, compiling, training, evaluation and
writing the run directory. Trees run alternately within each repetition, so that a change of
machine load hits them alike; the table gives medians and each tree's ratio to the first.

    python benchmarks/startup.py                                 # this checkout, 3 repetitions
    python benchmarks/startup.py --tree /tmp/base --tree .       # before / after, one invocation
    python benchmarks/startup.py --configs a2c_default --reps 5

A tree is a directory holding `rlcli/` and `conf/` (a git worktree of another commit, say); it
is put first on PYTHONPATH of the measured process, whose interpreter is this one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from common import train_process

# PPO on CartPole-v1 with rejax's configuration (benchmarks/peers.py), and the README's main job
CONFIGS = {
    "ppo_rejax": ["algo=ppo", "env=CartPole-v1", "num_envs=5", "algo.num_steps=100", "algo.update_epochs=5",
                  "algo.num_minibatches=5", "algo.learning_rate=7.5e-4", "algo.anneal_lr=false",
                  "algo.max_grad_norm=0.5", "algo.gamma=0.99", "estimator.lambda=0.95", "algo.clip_coef=0.2",
                  "algo.ent_coef=0.01", "algo.vf_coef=0.5", "network.hidden_sizes=[64,64]",
                  "network.activation=tanh", "total_steps=100000"],
    "a2c_default": ["algo=a2c", "env=CartPole-v1"],
}


def run_once(tree: Path, args: list[str], cache: Path, out: Path) -> float:
    return train_process([*args, f"compile_cache={cache}"], out, tree)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, help="rlcli source tree (repeatable)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args(argv)
    trees = [t.resolve() for t in (opts.tree or [Path(__file__).resolve().parents[1]])]
    configs = opts.configs.split(",")
    times: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="rlcli-startup-") as tmp:
        for rep in range(opts.reps):
            for config in configs:
                for t, tree in enumerate(trees):
                    cache = Path(tmp) / f"cache-{rep}-{config}-{t}"
                    for phase in ("cold", "warm"):
                        wall = run_once(tree, CONFIGS[config], cache, Path(tmp) / f"run-{rep}-{config}-{t}-{phase}")
                        times.setdefault((config, t, phase), []).append(wall)
                        print(f"rep {rep + 1}/{opts.reps} {config} tree {t} {phase}: {wall:.2f} s", file=sys.stderr)
    print(f"whole-process wall of rlcli train (s), medians of {opts.reps}; {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    for t, tree in enumerate(trees):
        print(f"tree {t}: {tree}")
    header = f"{'config':<12} {'tree':>4} {'cold':>7} {'warm':>7} {'cold/tree0':>10} {'warm/tree0':>10}"
    print(header)
    for config in configs:
        base = {phase: statistics.median(times[(config, 0, phase)]) for phase in ("cold", "warm")}
        for t in range(len(trees)):
            cold, warm = (statistics.median(times[(config, t, phase)]) for phase in ("cold", "warm"))
            print(f"{config:<12} {t:>4} {cold:>7.2f} {warm:>7.2f} {cold / base['cold']:>10.2f} "
                  f"{warm / base['warm']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
