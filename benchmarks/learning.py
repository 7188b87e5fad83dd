"""The learning benchmark: does each shipped (algorithm, environment) setting learn, on every seed?

    python benchmarks/learning.py                       # every cell, 5 seeds each
    python benchmarks/learning.py --only ppo,sac        # cells whose name contains ppo or sac
    python benchmarks/learning.py --seeds 3 --budget-scale 0.5
    python benchmarks/learning.py --list                # the cells, their budgets and goals

Each cell is one `python -m rlcli train algo=<a> env=<e> num_seeds=N` process of this checkout
(its seeds vmapped together; logger=quiet, compile_cache=null) with the shipped settings
(conf/tuned/ where a file exists, else the defaults) and the cell's budget. The policy each seed
ends with is evaluated deterministically over `eval_episodes` (50) episodes; the table shows, per
cell: the seeds' final returns, their mean with the 95% percentile-bootstrap interval that
`rlcli plot` draws, the goal, pass (the mean reaches the goal; for a control cell, "< goal", stays
below it) or FAIL, the RL Baselines3 Zoo's
published return where it has the pair, and the wall time. Every finished cell is appended as one
row to the CSV (`--csv`, default benchmarks/learning.csv); a cell already in the CSV with the
same seeds and budget is not run again, so an interrupted benchmark resumes where it stopped
(`--fresh` reruns everything). These goals were learning tests once; the per-push test suite
keeps one short canary (tests/test_training.py::test_a2c_canary).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from common import ROOT, train_process

sys.path.insert(0, str(ROOT))


class Cell(NamedTuple):
    name: str
    overrides: tuple[str, ...]
    steps: int  # env steps of the cell (scaled by --budget-scale)
    goal: float  # the seeds' mean final deterministic return must reach it
    zoo: str  # the RL Baselines3 Zoo's published return and budget, where it has the pair
    below: bool = False  # a control cell: its mean must stay below `goal`


CELLS = [
    Cell("a2c CartPole-v1", ("algo=a2c", "env=CartPole-v1"), 500_000, 475, "500 at 500k"),
    Cell("a2c CartPole-v1 (gymnasium backend)", ("algo=a2c", "env=CartPole-v1", "env.backend=gymnasium"),
         500_000, 475, "500 at 500k"),
    Cell("a3c CartPole-v1", ("algo=a3c", "env=CartPole-v1"), 500_000, 400, ""),
    Cell("ppo CartPole-v1", ("algo=ppo", "env=CartPole-v1"), 100_000, 475, "500 at 100k"),
    Cell("ppo Pendulum-v1", ("algo=ppo", "env=Pendulum-v1"), 200_000, -250, "-172 at 100k (gSDE)"),
    Cell("trpo CartPole-v1", ("algo=trpo", "env=CartPole-v1"), 200_000, 475, "500 at 100k"),
    Cell("reinforce CartPole-v1", ("algo=reinforce", "env=CartPole-v1"), 1_000_000, 400, ""),
    Cell("is_pg CartPole-v1", ("algo=is_pg", "env=CartPole-v1"), 250_000, 400, ""),
    Cell("batch_ac CartPole-v1", ("algo=batch_ac", "env=CartPole-v1"), 2_000_000, 400, ""),
    Cell("online_ac CartPole-v1", ("algo=online_ac", "env=CartPole-v1"), 2_000_000, 400, ""),
    Cell("q_ac CartPole-v1", ("algo=q_ac", "env=CartPole-v1"), 2_000_000, 400, ""),
    Cell("sac Pendulum-v1", ("algo=sac", "env=Pendulum-v1"), 15_000, -200, "-157 at 20k"),
    Cell("sac MountainCarContinuous-v0 (gSDE)", ("algo=sac", "env=MountainCarContinuous-v0"), 50_016, 90,
         "94.7 at 50k"),
    Cell("offpolicy_ac Pendulum-v1", ("algo=offpolicy_ac", "env=Pendulum-v1"), 10_000, -400, ""),
    *[Cell(f"{algo} CartPole-v1 (discrete, exact expectation over actions)",
           (f"algo={algo}", "env=CartPole-v1", "num_envs=4", "algo.learning_rate=1e-3", "algo.batch_size=128",
            "algo.learning_starts=1000", "network.hidden_sizes=[64,64]", "network.activation=relu"),
           12_000, 150, "") for algo in ("sac", "offpolicy_ac")],
    # CartPole with the velocities hidden (a POMDP): a GRU policy learns it, an MLP cannot
    *[Cell(f"ppo CartPole-v1 velocities hidden (network={net})",
           ("algo=ppo", "env=CartPole-v1", "env.mask_velocity=true", f"network={net}", "num_envs=64",
            "algo.num_steps=32"), steps, goal, "", below) for net, steps, goal, below in
      (("gru", 300_000, 400, False), ("mlp", 1_000_000, 200, True))],
]
FIELDS = ["cell", "seeds", "steps", "goal", "mean", "ci_low", "ci_high", "per_seed", "pass", "zoo", "wall_s"]


def run_cell(cell: Cell, seeds: int, steps: int, eval_episodes: int, out: Path) -> tuple[list[float], float]:
    """The seeds' final deterministic evaluation returns and the wall time of one `rlcli train`."""
    wall = train_process([*cell.overrides, f"num_seeds={seeds}", f"total_steps={steps}",
                          f"eval_episodes={eval_episodes}", "compile_cache=null"], out)
    summary = json.loads((out / "summary.json").read_text())
    return [float(r) for r in summary["final_eval"]["return_mean"]], wall


def done_rows(path: Path) -> dict[tuple[str, str, str], dict]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {(r["cell"], r["seeds"], r["steps"]): r for r in csv.DictReader(f)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated parts of cell names to run (default: all)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every cell's env steps")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "learning.csv")
    parser.add_argument("--fresh", action="store_true", help="rerun cells already in the CSV")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    opts = parser.parse_args(argv)
    wanted = [part.strip() for part in opts.only.split(",") if part.strip()]
    cells = [c for c in CELLS if not wanted or any(w in c.name for w in wanted)]
    if not cells:
        parser.error(f"--only={opts.only!r} matches no cell (cells: {', '.join(c.name for c in CELLS)})")
    if opts.seeds < 1 or opts.budget_scale <= 0 or opts.eval_episodes < 1:
        parser.error("--seeds and --eval-episodes must be >= 1 and --budget-scale > 0")
    if opts.list:
        for c in cells:
            print(f"{c.name:58s} {c.steps:>9,d} steps  goal {'<' if c.below else ' '}{c.goal:>6g}  "
                  f"{' '.join(c.overrides)}")
        return 0

    from rlcli.commands.scores import bootstrap_ci

    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; {opts.seeds} seeds, "
          f"final deterministic evaluation over {opts.eval_episodes} episodes per seed", flush=True)
    print("| cell | env steps | mean [95% CI] | per seed | goal | result | RL Zoo | wall s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    previous = {} if opts.fresh else done_rows(opts.csv)
    failed = 0
    for cell in cells:
        steps = max(1, round(cell.steps * opts.budget_scale))
        row = previous.get((cell.name, str(opts.seeds), str(steps)))
        if row is None:
            with tempfile.TemporaryDirectory(prefix="rlcli-learning-") as tmp:
                try:
                    returns, wall = run_cell(cell, opts.seeds, steps, opts.eval_episodes, Path(tmp) / "run")
                except SystemExit as err:  # the cell's process failed: report it, go on
                    print(f"| {cell.name} | {steps:,} | error | | {cell.goal:g} | ERROR | {cell.zoo} | |", flush=True)
                    print(err, file=sys.stderr)
                    failed += 1
                    continue
            mean = sum(returns) / len(returns)
            low, high = bootstrap_ci(returns)
            row = {"cell": cell.name, "seeds": opts.seeds, "steps": steps, "goal": cell.goal, "mean": f"{mean:.1f}",
                   "ci_low": f"{low:.1f}", "ci_high": f"{high:.1f}", "per_seed": " ".join(f"{r:.1f}" for r in returns),
                   "pass": mean < cell.goal if cell.below else mean >= cell.goal, "zoo": cell.zoo, "wall_s": f"{wall:.0f}"}
            opts.csv.parent.mkdir(parents=True, exist_ok=True)
            new = not opts.csv.exists()
            with open(opts.csv, "a", newline="") as f:
                writer = csv.DictWriter(f, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
        passed = str(row["pass"]) == "True"
        failed += not passed
        print(f"| {cell.name} | {int(row['steps']):,} | {row['mean']} [{row['ci_low']}, {row['ci_high']}] | "
              f"{row['per_seed']} | {'< ' if cell.below else ''}{float(row['goal']):g} | {'pass' if passed else 'FAIL'} | {cell.zoo} | "
              f"{row['wall_s']} |", flush=True)
    print(f"# {len(cells) - failed} of {len(cells)} cells reach their goal; rows in {opts.csv}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
