"""Throughput and time-to-solve benchmark: A2C on CartPole-v1, jax vs gymnasium backend.

Run from the repository root:

    python benchmarks/throughput.py            # full: 3 repetitions (about 10 minutes on 2 cores)
    python benchmarks/throughput.py --reps 5   # more repetitions
    python benchmarks/throughput.py --quick    # smoke test: 1 repetition, small budgets (~1 min)
    python benchmarks/throughput.py --rows 1,4 # only some rows (default: 1-4, the table's order)
    python benchmarks/throughput.py --scale 0.5  # every run's env-step budget x 0.5
    python benchmarks/throughput.py --algos    # every algorithm with its shipped settings instead

Every row trains `algo=a2c env=CartPole-v1` in-process with the shipped defaults (seed 0,
5-step rollouts, tuned learning rate) except for the backend and `num_envs`. Each repetition
of a row is two runs:

* a throughput run without periodic evaluation, long enough that the run phase lasts a few
  seconds; it gives env steps/s (run phase only) and the compile time;
* a time-to-475 run with an evaluation every 10k (jax) / 20k (gymnasium) env steps; it gives
  the wall time and env steps at the first deterministic evaluation return >= 475, and the
  final evaluation return.

`--algos` measures every `algo=` choice instead: one seed of its shipped settings on its
benchmark env (CartPole-v1 for the on-policy algorithms, Pendulum-v1 for sac and offpolicy_ac,
jax backend, no periodic evaluation), giving run-phase env steps/s, gradient updates/s and the
compile time.

All figures are medians over the repetitions (repetitions of all rows are interleaved, so a
change in background load hits every row alike). Timings depend on the machine and on what
else runs on it; compare rows of one invocation rather than figures across machines.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

TARGET_RETURN = 475.0
ROWS = [("jax", 8), ("jax", 64), ("jax", 512), ("gymnasium", 8)]

# env steps per run: throughput runs (no periodic evaluation) and time-to-475 runs
THROUGHPUT_STEPS = {
    "full": {("jax", 8): 500_000, ("jax", 64): 2_000_000, ("jax", 512): 2_000_000,
             ("gymnasium", 8): 100_000},
    "quick": {("jax", 8): 100_000, ("jax", 64): 200_000, ("jax", 512): 200_000,
              ("gymnasium", 8): 20_000},
}
SOLVE_STEPS = {"full": {"jax": 500_000, "gymnasium": 500_000},
               "quick": {"jax": 200_000, "gymnasium": 40_000}}
EVAL_INTERVAL = {"jax": 10_000, "gymnasium": 20_000}
LOG_INTERVAL = 10_000  # rlcli.schema default of log_interval: env steps per compiled chunk / metrics record
NUM_STEPS = 5  # rlcli.algos.a2c default of algo.num_steps: rollout length


def compose(overrides: list[str]):
    """The train config as `rlcli train <overrides>` composes it."""
    from rlcli.config import compose as compose_train

    return compose_train(overrides)


def train(backend: str, num_envs: int, total_steps: int, eval_interval: int | None):
    """Train in-process into a temporary directory; returns (summary, metric records)."""
    from rlcli import train as training
    from rlcli.logger import read_metrics

    overrides = [
        "algo=a2c", "env=CartPole-v1", "logger=quiet", f"env.backend={backend}",
        f"num_envs={num_envs}", f"total_steps={total_steps}",
        f"eval_interval={'null' if eval_interval is None else eval_interval}",
        "checkpoint_interval=10000000",  # only the final checkpoint
    ]
    with tempfile.TemporaryDirectory(prefix="rlcli-bench-") as run_dir:
        summary = training.train(compose(overrides), Path(run_dir))
        return summary, read_metrics(Path(run_dir))


def whole_chunks(total_steps: int, num_envs: int) -> int:
    """total_steps rounded up to whole compiled chunks, so that a throughput run never
    compiles a shorter last chunk inside its timed run phase."""
    per_update = num_envs * NUM_STEPS
    per_chunk = math.ceil(LOG_INTERVAL / per_update) * per_update
    return math.ceil(total_steps / per_chunk) * per_chunk


def first_reaching(records: list[dict], target: float) -> tuple[float, int] | None:
    """(wall_time, env_steps) of the first evaluation record with return >= target."""
    for record in records:
        value = record.get("eval/return_mean")
        if value is not None and value >= target:
            return record["wall_time"], record["env_steps"]
    return None


def measure_throughput(backend: str, num_envs: int, total_steps: int) -> dict:
    summary, _ = train(backend, num_envs, whole_chunks(total_steps, num_envs), None)
    return {"steps_per_s": summary["steps_per_second"], "compile_s": summary["compile_time_s"]}


def measure_solve(backend: str, num_envs: int, total_steps: int) -> dict:
    summary, records = train(backend, num_envs, total_steps, EVAL_INTERVAL[backend])
    hit = first_reaching(records, TARGET_RETURN)
    return {"solve_s": hit[0] if hit else math.inf,
            "solve_steps": hit[1] if hit else math.inf,
            "final_return": summary["final_eval_return_mean"]}


def warm_up(backends=("jax", "gymnasium")) -> None:
    """One tiny run per backend, so imports and first-use costs don't land in row 1."""
    for backend in backends:
        train(backend, 8, 40, None)


def budgets(mode: str, scale: float = 1.0) -> tuple[dict, dict]:
    """The mode's env steps per (throughput run, time-to-475 run), times `scale` (at least 1)."""
    return ({row: max(int(steps * scale), 1) for row, steps in THROUGHPUT_STEPS[mode].items()},
            {backend: max(int(steps * scale), 1) for backend, steps in SOLVE_STEPS[mode].items()})


def median(values: list[float]) -> float:
    """Median; a run that never reached the target counts as infinitely slow."""
    return statistics.median(values)


def fmt(value: float, digits: int) -> str:
    if math.isinf(value):
        return "-"
    return f"{value:,.{digits}f}"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(mode: str, reps: int, rows=ROWS, scale: float = 1.0) -> str:
    import jax

    throughput_steps, solve_steps = budgets(mode, scale)
    backends = sorted({backend for backend, _ in rows}, key=["jax", "gymnasium"].index)

    cpu = platform.processor() or platform.machine()
    lines = [
        f"machine:  {platform.platform()} ({cpu}), {os.cpu_count()} CPUs, "
        f"jax devices: {', '.join(str(d) for d in jax.devices())}",
        f"versions: python {platform.python_version()}, jax {version('jax')}, "
        f"jaxlib {version('jaxlib')}, gymnasium {version('gymnasium')}",
        f"run:      A2C on CartPole-v1, shipped defaults (seed 0); {mode} mode"
        f"{'' if scale == 1 else f', budgets x{scale:g}'}, medians over {reps} repetition(s)",
        "columns:",
        "  steps/s        env steps per second in the run phase (compile excluded), from a run "
        "without periodic evaluation",
        "                 (env steps: " + ", ".join(
            f"{b} {n}: {whole_chunks(throughput_steps[b, n], n):,}" for b, n in rows) + ")",
        "  compile s      seconds compiling the training and evaluation programs (same run)",
        "  t->475 s       wall seconds from the start of training (compile included) to the first "
        "deterministic evaluation",
        f"                 return >= {TARGET_RETURN:g} (10 episodes), evaluating every "
        f"{EVAL_INTERVAL['jax']:,} (jax) / {EVAL_INTERVAL['gymnasium']:,} (gymnasium) env steps;",
        "                 budget " + " / ".join(f"{solve_steps[b]:,} ({b})" for b in backends)
        + " env steps; '-': not reached in most repetitions",
        "  steps@475      env steps at that evaluation",
        "  final return   deterministic evaluation return at the end of that run",
    ]
    return "\n".join(lines)


def table(results: dict) -> str:
    """One line per row of `results` ({(backend, num_envs): [run, ...]}), in its order."""
    columns = ["backend", "num_envs", "steps/s", "compile s", "t->475 s", "steps@475",
               "final return"]
    rows = []
    for backend, num_envs in results:
        runs = results[backend, num_envs]
        pick = lambda key: median([run[key] for run in runs])  # noqa: E731
        rows.append([backend, str(num_envs), fmt(pick("steps_per_s"), 0),
                     fmt(pick("compile_s"), 2), fmt(pick("solve_s"), 1),
                     fmt(pick("solve_steps"), 0), fmt(pick("final_return"), 1)])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


# --algos: the env of each algorithm's row and its env steps per throughput run (full, quick)
ALGO_ENVS = {"sac": "Pendulum-v1", "offpolicy_ac": "Pendulum-v1"}
ALGO_STEPS = {"sac": (10_000, 2_000), "offpolicy_ac": (10_000, 2_000), "reinforce": (400_000, 40_000),
              "is_pg": (400_000, 40_000)}
DEFAULT_STEPS = (200_000, 20_000)


def measure_algo(name: str, quick: bool) -> dict:
    """One seed of `algo=name` with its shipped settings, no periodic evaluation."""
    from rlcli import train as training

    env = ALGO_ENVS.get(name, "CartPole-v1")
    steps = ALGO_STEPS.get(name, DEFAULT_STEPS)[1 if quick else 0]
    overrides = [f"algo={name}", f"env={env}", "env.backend=jax", "logger=quiet", f"total_steps={steps}",
                 "eval_interval=null", "eval_episodes=1", "checkpoint_interval=100000000"]
    with tempfile.TemporaryDirectory(prefix="rlcli-bench-") as run_dir:
        summary = training.train(compose(overrides), Path(run_dir))
    return {"env": env, "steps": summary["total_steps"], "steps_per_s": summary["steps_per_second"],
            "updates_per_s": summary["num_updates"] / max(summary["run_time_s"], 1e-9),
            "compile_s": summary["compile_time_s"]}


def algo_table(results: dict) -> str:
    from rlcli.commands.common import aligned

    rows = []
    for name, runs in results.items():
        pick = lambda key: median([run[key] for run in runs])  # noqa: E731
        rows.append([name, runs[0]["env"], f"{runs[0]['steps']:,}", fmt(pick("steps_per_s"), 0),
                     fmt(pick("updates_per_s"), 1), fmt(pick("compile_s"), 2)])
    return aligned(["algo", "env", "env steps", "steps/s", "updates/s", "compile s"], rows)


def main_algos(quick: bool, reps: int) -> None:
    from rlcli import algos

    start = time.perf_counter()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; jax {version('jax')}; every algorithm, "
          f"shipped settings, one seed, jax backend; {'quick' if quick else 'full'} mode, medians over "
          f"{reps} repetition(s)", flush=True)
    warm_up()
    results: dict = {name: [] for name in algos.names()}
    for rep in range(reps):
        for name in results:
            run = measure_algo(name, quick)
            results[name].append(run)
            print(f"  rep {rep + 1}/{reps} {name}: {run['steps_per_s']:,.0f} steps/s, "
                  f"compile {run['compile_s']:.2f} s", file=sys.stderr, flush=True)
    print()
    print(algo_table(results))
    print(f"\ntotal benchmark time: {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per row (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 repetition and small step budgets")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(1, len(ROWS) + 1)),
                        help="comma-separated rows of the A2C table to run (default: all, "
                             f"1-{len(ROWS)}: " + ", ".join(f"{b} {n}" for b, n in ROWS) + ")")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the env-step budget of every A2C run by this (default 1)")
    parser.add_argument("--algos", action="store_true",
                        help="every algorithm with its shipped settings instead of the A2C rows")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps={args.reps}: at least 1")
    picked = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not picked or not all(r.isdigit() and 1 <= int(r) <= len(ROWS) for r in picked):
        parser.error(f"--rows={args.rows}: rows are " + ", ".join(str(i) for i in range(1, len(ROWS) + 1)))
    if not (args.scale > 0 and math.isfinite(args.scale)):
        parser.error(f"--scale={args.scale}: a number > 0")
    rows = [ROWS[i - 1] for i in sorted({int(r) for r in picked})]
    mode = "quick" if args.quick else "full"
    reps = 1 if args.quick else args.reps
    if args.algos:
        return main_algos(args.quick, reps)

    start = time.perf_counter()
    throughput_steps, solve_steps = budgets(mode, args.scale)
    print(header(mode, reps, rows, args.scale), flush=True)
    warm_up(sorted({backend for backend, _ in rows}, key=["jax", "gymnasium"].index))
    results: dict = {row: [] for row in rows}
    for rep in range(reps):
        for backend, num_envs in rows:
            run = measure_throughput(backend, num_envs, throughput_steps[backend, num_envs])
            run |= measure_solve(backend, num_envs, solve_steps[backend])
            results[backend, num_envs].append(run)
            print(f"  rep {rep + 1}/{reps} {backend:9s} {num_envs:4d} envs: "
                  f"{run['steps_per_s']:,.0f} steps/s, compile {run['compile_s']:.2f} s, "
                  f"t->475 {fmt(run['solve_s'], 1)} s, final return {run['final_return']:.1f}",
                  file=sys.stderr, flush=True)
    print()
    print(table(results))
    print(f"\ntotal benchmark time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
