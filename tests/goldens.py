"""Golden metrics: short CPU runs whose numbers must not change while code moves.

Goldens guard against change; they prove nothing about correctness (the tests against
hand-computed values and independent references do that). They are the one place where
expected numbers come from rlcli itself, and they are regenerated only on purpose, in the
commit that changes the numbers, with the reason in its message:

    python tests/goldens.py regenerate            # every case
    python tests/goldens.py regenerate a2c ppo    # some

`tests/test_goldens.py` and `tests/test_goldens_2.py` rerun every case (half each) and require
identical numbers. Each case runs
through the real command line (`rlcli.cli.main`, in one process per group of cases) with
`threads=1` on one CPU device, where rlcli's numbers are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN_DIR = HERE / "goldens"
VOLATILE = ("wall_time", "perf/steps_per_s")
COMMON = ["eval_episodes=2", "logger=quiet", "threads=1"]

# name -> list of commands, each an `rlcli` argument list; {run} is the case's run directory.
# The numbers kept are those of {run}/metrics.jsonl (timings left out) and, for eval, eval.json.
CASES: dict[str, list[list[str]]] = {
    "reinforce": [["train", "algo=reinforce", "env=CartPole-v1", "total_steps=8000", "num_envs=4",
                   "algo.num_steps=500", "log_interval=4000"]],
    "is_pg": [["train", "algo=is_pg", "env=CartPole-v1", "total_steps=8000", "num_envs=4", "algo.num_steps=500", "log_interval=4000"]],
    "batch_ac": [["train", "algo=batch_ac", "env=Acrobot-v1", "total_steps=2048", "num_envs=4",
                  "log_interval=512"]],
    "online_ac": [["train", "algo=online_ac", "env=CartPole-v1", "total_steps=1600", "num_envs=4",
                   "log_interval=400"]],
    "q_ac": [["train", "algo=q_ac", "env=CartPole-v1", "total_steps=1600", "num_envs=4", "log_interval=400"]],
    "a2c": [["train", "algo=a2c", "env=Pendulum-v1", "total_steps=2000", "num_envs=4", "log_interval=500"]],
    "a3c": [["train", "algo=a3c", "env=CartPole-v1", "total_steps=2000", "num_envs=4", "algo.num_workers=1",
             "log_interval=500"]],
    "ppo": [["train", "algo=ppo", "env=Pendulum-v1", "total_steps=2048", "num_envs=4", "algo.num_steps=64",
             "log_interval=512"]],
    "trpo": [["train", "algo=trpo", "env=CartPole-v1", "total_steps=2048", "num_envs=4", "algo.num_steps=64",
              "log_interval=512"]],
    "npg": [["train", "algo=npg", "env=MountainCar-v0", "total_steps=2048", "num_envs=4", "algo.num_steps=64",
             "log_interval=512"]],
    "sac": [["train", "algo=sac", "env=Pendulum-v1", "total_steps=600", "algo.learning_starts=200",
             "algo.batch_size=64", "log_interval=200"]],
    "offpolicy_ac": [["train", "algo=offpolicy_ac", "env=MountainCarContinuous-v0", "total_steps=600",
                      "algo.learning_starts=200", "algo.batch_size=64", "log_interval=200"]],
    "gymnasium": [["train", "algo=a2c", "env=CartPole-v1", "env.backend=gymnasium", "total_steps=1600",
                   "num_envs=4", "log_interval=400"]],
    "resumed": [["train", "algo=ppo", "env=CartPole-v1", "total_steps=1024", "num_envs=4", "algo.num_steps=64",
                 "log_interval=256", "checkpoint_interval=512"],
                ["resume", "run={run}", "total_steps=2048"]],
    "eval": [["train", "algo=a2c", "env=CartPole-v1", "num_seeds=3", "total_steps=1600", "num_envs=4",
              "log_interval=400"],
             ["eval", "run={run}", "episodes=3", "eval_seed=1"],
             ["eval", "run={run}", "episodes=2", "deterministic=false", "seed_index=1"]],
}


def _command(args: list[str], run: Path) -> list[str]:
    """The `rlcli` arguments of one command of a case. Every run of a golden process shares one
    compilation cache (`compile_cache=<root>/compile-cache`): a program loaded from it is the
    one compiled, so the numbers are those of a cold run (tests/test_compile_cache.py), and a
    resumed leg or an `rlcli eval` of a case does not compile its programs again."""
    args = [a.format(run=run) for a in args]
    if args[0] == "train":
        return [*args, *COMMON, f"compile_cache={run.parent / 'compile-cache'}", f"hydra.run.dir={run}"]
    return args


def result_of(run: Path) -> dict:
    """What a case keeps: its metrics without timings, and eval.json when there is one."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    out = {"metrics": [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]}
    if (run / "eval.json").is_file():
        out["eval"] = {k: v for k, v in json.loads((run / "eval.json").read_text()).items() if k != "run"}
    return out


def run_cases(names: list[str], root: Path) -> dict[str, dict]:
    """Run the named cases in this process (their directories under root); name -> result.
    An eval case keeps the eval.json of each eval command in turn."""
    from rlcli.cli import main

    results = {}
    for name in names:
        run = root / name
        evals = []
        for args in CASES[name]:
            code = main(_command(args, run))
            if code != 0:
                raise SystemExit(f"golden case {name}: rlcli {' '.join(args)} exited {code}")
            if args[0] == "eval":
                evals.append(result_of(run)["eval"])
        results[name] = {**result_of(run), **({"eval": evals} if evals else {})}
    return results


def clean_env() -> dict:
    """The environment of a golden process: one CPU device, none of the test session's flags or cache."""
    drop = ("XLA_FLAGS", "RLCLI_HOST_DEVICES", "JAX_COMPILATION_CACHE_DIR",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_in_subprocess(names: list[str], root: Path) -> dict[str, dict]:
    """`run_cases` in a fresh process with `clean_env()`; the results come back as JSON."""
    out = root / "results.json"
    done = subprocess.run([sys.executable, __file__, "run", str(root), str(out), *names], env=clean_env(),
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise AssertionError(f"golden cases {names} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def half(index: int) -> list[str]:
    """The cases of tests/test_goldens.py (index 0) or tests/test_goldens_2.py (1): two test files,
    so that pytest's two workers run them side by side."""
    return [name for i, name in enumerate(CASES) if i % 2 == index]


def first_difference(expected, got, where="") -> str | None:
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if key not in expected or key not in got:
                return f"{where}{key}: only in {'the golden' if key in expected else 'this run'}"
            found = first_difference(expected[key], got[key], f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{where}: {len(expected)} entries in the golden, {len(got)} in this run"
        for i, (a, b) in enumerate(zip(expected, got)):
            found = first_difference(a, b, f"{where}[{i}].")
            if found:
                return found
        return None
    return None if expected == got else f"{where.rstrip('.')}: golden {expected!r}, this run {got!r}"


def assert_unchanged(name: str, result: dict) -> None:
    expected = json.loads(golden_path(name).read_text())
    got = json.loads(json.dumps(result))  # through JSON, as the golden was written
    assert got["metrics"], name
    difference = first_difference(expected, got)
    assert difference is None, f"golden case {name} changed at {difference}"


def golden_half(index: int):
    """The fixture and the test of one golden test file: the half's cases run in one subprocess
    (module scope), then each case's numbers are compared with its golden."""
    import pytest

    names = half(index)

    @pytest.fixture(scope="module")
    def results(tmp_path_factory):
        return run_in_subprocess(names, tmp_path_factory.mktemp("goldens"))

    @pytest.mark.slow
    @pytest.mark.parametrize("name", names)
    def test_golden_numbers_unchanged(results, name):
        assert_unchanged(name, results[name])

    return results, test_golden_numbers_unchanged


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:  # internal: run_in_subprocess's child
        root, out, names = Path(argv[1]), Path(argv[2]), argv[3:]
        results = run_cases(names, root)
        out.write_text(json.dumps(results))
        return 0
    if argv[:1] != ["regenerate"]:
        print(__doc__)
        return 2
    names = argv[1:] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown golden case(s) {', '.join(unknown)} (allowed: {', '.join(CASES)})", file=sys.stderr)
        return 2
    GOLDEN_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rlcli-goldens-") as tmp:
        results = run_in_subprocess(names, Path(tmp))
    for name in names:
        golden_path(name).write_text(json.dumps(results[name], indent=1, sort_keys=True) + "\n")
        print(f"wrote {golden_path(name)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main(sys.argv[1:]))
